"""Shared fixtures: a small WikiText-style corpus and in-process runs of the training scripts.

Everything is offline: the hub is switched off and the datasets cache lives in a temporary
folder, so tests never depend on what an earlier run left behind.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="hf-datasets-tests-"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_SUBJECTS = ["the river", "the city council", "a small band", "the old bridge", "the railway company",
             "the young poet", "a local newspaper", "the football club", "the northern army", "the museum"]
_VERBS = ["built", "described", "opened", "visited", "defeated", "praised", "rebuilt", "studied", "sold", "named"]
_OBJECTS = ["a new station", "the harbour", "several songs", "the eastern road", "a large church",
            "the royal palace", "two albums", "the stone tower", "a public park", "the winter festival"]
_TAILS = ["in 1892", "during the war", "after a long debate", "with great success", "for the first time",
          "near the coast", "in the following year", "despite heavy rain"]


def write_wikitext_corpus(path: Path, articles: int, seed: int, paragraphs: int = 4, sentences: int = 5) -> Path:
    """Deterministic WikiText-raw-style text: ' = Title = ' articles, sections, @-@ markers."""
    rng = random.Random(seed)
    lines = [" "]
    for a in range(articles):
        lines += [f" = Article {a} of the corpus = ", " "]
        for p in range(paragraphs):
            if p == 2:
                lines += [f" = = Section {p} = = ", " "]
            text = []
            for _ in range(sentences):
                s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}"
                if rng.random() < 0.2:
                    s += f" , a {rng.randint(2, 9)} @-@ year project"
                text.append(s[0].upper() + s[1:] + " .")
            lines += [" " + " ".join(text) + " ", " "]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    write_wikitext_corpus(folder / "train.raw", articles=24, seed=1)
    write_wikitext_corpus(folder / "valid.raw", articles=4, seed=2)
    write_wikitext_corpus(folder / "test.raw", articles=4, seed=3)
    # One vocabulary shared by every test run, trained once (train_wordpiece is reproducible, so this is
    # only to save time). (--train_tokenizer itself is exercised by the smoke run.)
    from train.common.data.pretraining import document_sentences
    from train.common.tokenizer import train_wordpiece
    lines = (folder / "train.raw").read_text().split("\n")
    train_wordpiece(document_sentences(lines, wikitext=True), 400, folder / "tokenizer")
    return folder


# A model small enough that a few dozen steps take seconds on one core.
TINY_MODEL = ["--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
              "--intermediate_size", "64", "--max_position_embeddings", "64", "--max_seq_length", "64",
              "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
              "--learning_rate", "2e-3", "--warmup_ratio", "0.1", "--logging_steps", "2", "--seed", "7"]


def pretrain_args(corpus: Path, output_dir: Path, *extra: str) -> list[str]:
    return [*TINY_MODEL, "--tokenizer_name", str(corpus / "tokenizer"), "--train_file", str(corpus / "train.raw"),
            "--validation_file", str(corpus / "valid.raw"), "--test_file", str(corpus / "test.raw"),
            "--output_dir", str(output_dir), *extra]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def final_tensors(run: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(run / "final" / "model.safetensors"))


def assert_same_tensors(a: dict, b: dict, exact=True, atol=0.0):
    import torch
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), f"{key} differs"
        else:
            torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


def reset_accelerate_state() -> None:
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_pretrain(argv: list[str]) -> int:
    """The script's main() in this process (what `python train/pretrain.py` runs)."""
    reset_accelerate_state()
    from train.pretrain import main
    return main(argv)


def launch_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fp32_deepspeed_config(name: str) -> str:
    """A copy of accelerate_configs/NAME whose DeepSpeed json has bf16 off, for comparisons with fp32 DDP.

    Precision under DeepSpeed lives in the json (accelerate refuses `mixed_precision` next to a
    deepspeed_config_file, and `--mixed_precision no` does not turn off a bf16 the json enables)."""
    import yaml
    folder = Path(tempfile.mkdtemp(prefix="ds-fp32-"))
    config = yaml.safe_load((REPO / "accelerate_configs" / name).read_text())
    ds_file = REPO / config["deepspeed_config"]["deepspeed_config_file"]
    ds = json.loads(ds_file.read_text())
    ds["bf16"] = {"enabled": False}
    (folder / ds_file.name).write_text(json.dumps(ds))
    config["deepspeed_config"]["deepspeed_config_file"] = str(folder / ds_file.name)
    (folder / name).write_text(yaml.safe_dump(config))
    return str(folder / name)
