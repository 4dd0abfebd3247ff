"""analysis.perplexity: hand-computed values, the pretraining script's numbers, 1 vs 2 processes."""

import json
import math
import random
import subprocess
import sys

import pytest
import torch

from analysis.perplexity import compute_perplexity
from tests.conftest import REPO, free_port, launch_env, pretrain_args, reset_accelerate_state, run_pretrain
from train.common.data.masking import IGNORE_INDEX, IndexedDataset, PretrainingCollator


def save_tiny(model_class, corpus_dir, folder):
    """A tiny `model_class` (BertForPreTraining, a classifier, a bare BertModel, ...) and the corpus tokenizer."""
    from transformers import AutoTokenizer, BertConfig
    tokenizer = AutoTokenizer.from_pretrained(corpus_dir / "tokenizer")
    torch.manual_seed(0)
    model = model_class(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model_dir(corpus_dir, tmp_path_factory):
    from transformers import BertForPreTraining
    return save_tiny(BertForPreTraining, corpus_dir, tmp_path_factory.mktemp("tiny_model"))


def ppl(model_dir, corpus_dir, **kw):
    reset_accelerate_state()
    return compute_perplexity(model_dir, file=str(corpus_dir / "test.raw"), max_seq_length=64, **kw)


def test_matches_a_hand_computation(tiny_model_dir, corpus_dir):
    from datasets import load_dataset
    from transformers import AutoTokenizer, BertForPreTraining

    from train.common.data.pretraining import InstanceSettings, build_instances, ranges_dataset
    result = ppl(tiny_model_dir, corpus_dir)
    # By hand: the same instances and fixed masks, the stock HF forward, a plain token-weighted mean.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = BertForPreTraining.from_pretrained(tiny_model_dir).eval()
    lines = load_dataset("text", data_files={"eval": str(corpus_dir / "test.raw")})["eval"]
    ranges, _ = ranges_dataset(lines, "wikitext")
    instances = build_instances(lines, ranges, tokenizer, InstanceSettings(64, 0.1, True, 0, True), "test")
    collator = PretrainingCollator(tokenizer, seed=0)
    nll, count = 0.0, 0
    for i in range(len(instances)):
        batch = collator([IndexedDataset(instances)[i]])
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                           attention_mask=batch["attention_mask"]).prediction_logits[0]
        labels = batch["labels"][0]
        picked = labels != IGNORE_INDEX
        nll -= torch.log_softmax(logits[picked].double(), -1).gather(1, labels[picked, None]).sum().item()
        count += int(picked.sum())
    assert result["masked_tokens"] == count and result["num_examples"] == len(instances)
    assert result["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-6)
    # A random 400-word model is close to uniform: perplexity near the vocabulary size.
    assert 200 < result["perplexity"] < 1000


def test_pseudo_perplexity_by_hand(tiny_model_dir, corpus_dir):
    from transformers import AutoTokenizer, BertForPreTraining
    result = ppl(tiny_model_dir, corpus_dir, mode="pseudo", max_tokens=40)
    assert result["tokens_scored"] == 40
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = BertForPreTraining.from_pretrained(tiny_model_dir).eval()
    from datasets import load_dataset

    from train.common.data.pretraining import InstanceSettings, build_instances, ranges_dataset
    lines = load_dataset("text", data_files={"eval": str(corpus_dir / "test.raw")})["eval"]
    ranges, _ = ranges_dataset(lines, "wikitext")
    instances = build_instances(lines, ranges, tokenizer, InstanceSettings(64, 0.1, True, 0, True), "test")
    total, scored = 0.0, 0
    for row in instances:
        ids = torch.tensor(row["input_ids"])
        for p in range(len(ids)):
            if scored == 40:
                break
            if ids[p].item() in tokenizer.all_special_ids:
                continue
            masked = ids.clone()
            masked[p] = tokenizer.mask_token_id
            with torch.no_grad():
                logits = model(input_ids=masked[None], token_type_ids=torch.tensor(row["token_type_ids"])[None]
                               ).prediction_logits[0, p]
            total -= torch.log_softmax(logits.double(), -1)[ids[p]].item()
            scored += 1
        if scored == 40:
            break
    assert result["pseudo_perplexity"] == pytest.approx(math.exp(total / 40), rel=1e-5)


def test_deterministic_and_equal_to_the_pretraining_script(corpus_dir, tmp_path):
    run = tmp_path / "run"
    assert run_pretrain(pretrain_args(corpus_dir, run, "--max_train_steps", "3", "--checkpointing_steps", "none")) == 0
    first = ppl(run / "final", corpus_dir, batch_size=16)
    second = ppl(run / "final", corpus_dir, batch_size=16)
    assert first["perplexity"] == second["perplexity"]  # fixed masks: bit-identical
    script = json.loads((run / "eval_results.json").read_text())["test"]
    assert first["masked_tokens"] == script["masked_tokens"]
    assert first["perplexity"] == pytest.approx(script["perplexity"], rel=1e-9)
    assert first["settings"]["max_seq_length"] == 64  # read from the run's config.yaml


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_give_the_same_perplexity(tiny_model_dir, corpus_dir, tmp_path):
    single = ppl(tiny_model_dir, corpus_dir)
    out = tmp_path / "ppl.json"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "accelerate_configs" / "cpu_ddp.yaml"), "--main_process_port", str(free_port()),
           "-m", "analysis.perplexity", "--model", str(tiny_model_dir), "--file", str(corpus_dir / "test.raw"),
           "--max_seq_length", "64", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    double = json.loads(out.read_text())
    assert double["num_processes"] == 2
    assert double["masked_tokens"] == single["masked_tokens"] and double["num_examples"] == single["num_examples"]
    assert double["perplexity"] == pytest.approx(single["perplexity"], rel=1e-6)


def test_cli_errors(tmp_path):
    from analysis.perplexity import main
    assert main(["--model", str(tmp_path), "--file", str(tmp_path / "none.txt")]) == 2


def one_error_line(argv, capsys) -> str:
    """main(argv) must refuse with rc 2 and print exactly one line (no traceback, no load report; progress bars of
    the text loader aside): return it."""
    from analysis.perplexity import main
    reset_accelerate_state()
    capsys.readouterr()
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "/s]" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("model_class", ["BertForSequenceClassification", "BertModel"])
def test_refuses_a_model_without_mlm_head(model_class, corpus_dir, tmp_path, capsys):
    # transformers would build BertForPreTraining from these with a random MLM head and only log it.
    import transformers
    folder = save_tiny(getattr(transformers, model_class), corpus_dir, tmp_path / "final")
    line = one_error_line(["--model", str(folder), "--file", str(corpus_dir / "test.raw")], capsys)
    assert str(folder) in line and f"{model_class} checkpoint has no MLM head" in line
    assert "BertForPreTraining or BertForMaskedLM" in line and "pretraining run's final/" in line


def test_refuses_a_checkpoint_whose_mlm_head_weights_are_missing(tiny_model_dir, corpus_dir, tmp_path, capsys):
    # config.json still says BertForPreTraining: the weights decide, not the architecture name.
    import shutil

    from safetensors.torch import load_file, save_file
    folder = shutil.copytree(tiny_model_dir, tmp_path / "final")
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("cls.predictions.transform.")},
              folder / "model.safetensors", metadata={"format": "pt"})
    line = one_error_line(["--model", str(folder), "--file", str(corpus_dir / "test.raw")], capsys)
    assert "BertForPreTraining checkpoint has no MLM head" in line


def test_masked_lm_checkpoint_is_scored_without_a_random_nsp_head(corpus_dir, tmp_path):
    from transformers import BertForMaskedLM
    folder = save_tiny(BertForMaskedLM, corpus_dir, tmp_path / "mlm")
    result = ppl(folder, corpus_dir)
    assert 200 < result["perplexity"] < 1000
    assert result["nsp_loss"] is None and result["nsp_accuracy"] is None and "no NSP head" in result["nsp_note"]


def write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, expected", [
    (lambda d: write_bytes(d / "empty.txt", b""), "is empty"),
    (lambda d: write_bytes(d / "blank.txt", b"  \n\n\t \n \n"), "contains only whitespace"),
    (lambda d: write_bytes(d / "random.bin", random.Random(0).randbytes(4096)),
     "looks binary (byte 0x"),
    (lambda d: write_bytes(d / "latin1.txt", "caf\u00e9 cr\u00e8me\n\nanother document\n".encode("latin-1")),
     "not UTF-8 (invalid byte at offset 3)"),
    (lambda d: d, "is a directory"),
    (lambda d: d / "missing.txt", "no such file"),
], ids=["empty", "whitespace", "random-bytes", "latin-1", "directory", "missing"])
def test_refuses_bad_text_files(make, expected, tiny_model_dir, tmp_path, capsys):
    path = make(tmp_path)
    line = one_error_line(["--model", str(tiny_model_dir), "--file", str(path)], capsys)
    assert line.startswith(f"error: --file {path}: {expected}")
    assert "give a" in line  # the fix


def test_refuses_a_safetensors_file_as_text(tiny_model_dir, capsys):
    path = tiny_model_dir / "model.safetensors"
    line = one_error_line(["--model", str(tiny_model_dir), "--file", str(path)], capsys)
    assert line.startswith(f"error: --file {path}: looks binary") and "UTF-8 text file" in line


def test_refuses_a_single_document_with_nsp(tiny_model_dir, tmp_path, capsys):
    text = write_bytes(tmp_path / "one.txt", b"just one short document without any blank line\n")
    line = one_error_line(["--model", str(tiny_model_dir), "--file", str(text)], capsys)
    assert f"{text}: one document" in line and "--no-nsp" in line
