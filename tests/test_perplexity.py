"""analysis.perplexity: hand-computed values, the pretraining script's numbers, 1 vs 2 processes."""

import json
import math
import subprocess
import sys

import pytest
import torch

from analysis.perplexity import compute_perplexity
from tests.conftest import REPO, free_port, launch_env, pretrain_args, reset_accelerate_state, run_pretrain
from train.common.masking import IGNORE_INDEX, IndexedDataset, PretrainingCollator


@pytest.fixture(scope="module")
def tiny_model_dir(corpus_dir, tmp_path_factory):
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining
    tokenizer = AutoTokenizer.from_pretrained(corpus_dir / "tokenizer")
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    folder = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def ppl(model_dir, corpus_dir, **kw):
    reset_accelerate_state()
    return compute_perplexity(model_dir, file=str(corpus_dir / "test.raw"), max_seq_length=64, **kw)


def test_matches_a_hand_computation(tiny_model_dir, corpus_dir):
    from datasets import load_dataset
    from transformers import AutoTokenizer, BertForPreTraining
    from train.common.pretraining_data import InstanceSettings, build_instances, ranges_dataset
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
    from train.common.pretraining_data import InstanceSettings, build_instances, ranges_dataset
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
