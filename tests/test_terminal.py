"""What the user sees and what a run records: fast --help and offline failures, checks before any work, quiet logs,
progress bars, the end-of-run summary, and config.yaml saying what the run really used."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port, launch_env, pretrain_args
from tests.test_finetune_qa import FIX, TINY_V1, qa_args, tiny_bert  # noqa: F401 (tiny_bert is a fixture)

SCRIPTS = ("pretrain.py", "finetune_classification.py", "finetune_qa.py")


def run(cmd: list[str], env=None, cwd=REPO, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env or launch_env(), capture_output=True, text=True, timeout=timeout)


def offline_env(**extra) -> dict:
    env = launch_env()
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(name, None)
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"  # nothing listens: an unreachable Hub, on any machine
    env["HF_HOME"] = str(Path(os.environ.get("TMPDIR", "/tmp")) / "empty-hf-home-for-tests")  # an empty cache
    env.update(extra)
    return env


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_before_the_slow_imports_and_keeps_example_lines(script):
    proc = run([sys.executable, "-X", "importtime", f"train/{script}", "--help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "torch" not in imported and "accelerate" not in imported, "--help imported torch/accelerate"
    # The docstring's example commands stay one per line (argparse would reflow them into a paragraph).
    doc_lines = [line.strip() for line in proc.stdout.splitlines()]
    assert any(line.startswith(("accelerate launch train/", "python train/")) for line in doc_lines), proc.stdout[:800]
    assert "--log_level" in proc.stdout and "--disable_progress_bar" in proc.stdout


@pytest.mark.slow
def test_offline_main_job_fails_at_once_with_the_smoke_command(tmp_path):
    """The documented main job with no network: one line naming the offline smoke preset and HF_HUB_OFFLINE, no
    retries of the libraries, no output folder left behind."""
    started = time.monotonic()
    proc = run([sys.executable, "-m", "accelerate.commands.launch", str(REPO / "train" / "pretrain.py")],
               env=offline_env(), cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1, proc.stderr[-3000:]
    assert "train/configs/smoke.yaml" in ours[0] and "HF_HUB_OFFLINE=1" in ours[0] and "'wikitext'" in ours[0]
    assert "Retrying" not in proc.stderr and "Couldn't reach" not in proc.stderr  # the libraries never asked
    assert not (tmp_path / "runs").exists(), "a failed start left an output folder"
    print(f"offline failure through accelerate launch: {elapsed:.1f} s")


def test_hub_offline_set_and_nothing_cached_is_one_line():
    proc = run([sys.executable, "train/pretrain.py", "--output_dir", "/nonexistent/never-created"],
               env=offline_env(HF_HUB_OFFLINE="1"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: HF_HUB_OFFLINE is set and the local cache has no")
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sequence_longer_than_the_position_table_is_refused_before_any_work(tmp_path):
    out = tmp_path / "run"
    proc = run([sys.executable, "train/pretrain.py", "--config", "train/configs/smoke.yaml", "--max_seq_length",
                "512", "--train_file", str(TINY_V1), "--output_dir", str(out)])
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "--max_seq_length 512" in last and "max_position_embeddings 128" in last and "Traceback" not in proc.stderr
    assert not out.exists()  # nothing was preprocessed or written


@pytest.mark.slow
def test_smoke_run_prints_our_lines_a_summary_and_records_what_it_used(corpus_dir, tmp_path):
    """Through `accelerate launch --config_file`: config.yaml names that file, and the options the local text and
    the given tokenizer folder made unused are None; the terminal has no per-checkpoint library lines."""
    out = tmp_path / "run"
    config_file = REPO / "accelerate_configs" / "cpu.yaml"
    args = pretrain_args(corpus_dir, out, "--max_train_steps", "4", "--checkpointing_steps", "2",
                         "--eval_steps", "2", "--train_tokenizer", "300")
    args[args.index("--tokenizer_name"):args.index("--tokenizer_name") + 2] = []
    proc = run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
                str(REPO / "train" / "pretrain.py"), *args])
    assert proc.returncode == 0, proc.stderr[-3000:]
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["distributed"]["accelerate_config_file"] == str(config_file)
    assert recorded["config"]["tokenizer_name"] is None and recorded["config"]["dataset_name"] is None
    assert recorded["config"]["train_tokenizer"] == 300
    err = proc.stderr
    for noise in ("Saving current state", "Random states saved", "Removed shared tensor", "Setting accelerator to",
                  "Writing model shards"):
        assert noise not in err, noise
    assert "== pretraining: done in" in err and "final model" in err and f"tensorboard --logdir {out}" in err
    assert "step 4/4 loss" in err and "validation step 4: perplexity" in err  # no terminal: plain lines
    assert "unigram baseline" in err and "majority baseline" in err  # no figure without its baseline
    import json
    last = json.loads((out / "eval_results.json").read_text())["epochs"][-1]
    assert last["unigram_perplexity"] > 1 and 0.5 <= last["nsp_majority_accuracy"] <= 1
    # --log_level debug brings the libraries back
    shutil.rmtree(out)
    debug = run([sys.executable, "train/pretrain.py", *args, "--log_level", "debug"])
    assert debug.returncode == 0 and "Saving current state" in debug.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("script") is None, reason="util-linux `script` (a pseudo-terminal) is absent")
def test_progress_bar_on_a_terminal(corpus_dir, tmp_path):
    out = tmp_path / "run"
    inner = " ".join([sys.executable, str(REPO / "train" / "pretrain.py"),
                      *pretrain_args(corpus_dir, out, "--max_train_steps", "6", "--checkpointing_steps", "none")])
    log = tmp_path / "tty.log"
    proc = subprocess.run(["script", "-q", "-e", "-c", f"stty cols 160 rows 40; {inner}", str(log)], cwd=REPO,
                          env=launch_env(), capture_output=True, text=True, timeout=600)
    screen = log.read_text(errors="replace")
    assert proc.returncode == 0, screen[-3000:]
    assert "train: 100%" in screen and "6/6" in screen and "step/s" in screen and "loss=" in screen
    assert "tokens/s=" in screen and "== pretraining: done in" in screen


@pytest.mark.slow
def test_evaluation_only_run_prints_its_scores_and_the_answer_repairs(tiny_bert, tmp_path):  # noqa: F811
    trained = tmp_path / "trained"
    proc = run([sys.executable, "train/finetune_qa.py", *qa_args(tiny_bert, trained, "--train_file", str(TINY_V1),
                                                                 "--train_articles", "2", "--max_train_steps", "2")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "== SQuAD v1.1 fine-tuning: done in" in proc.stderr
    # transformers' load report (a table of every new and unused key) gives way to one line of ours.
    assert "LOAD REPORT" not in proc.stderr and "UNEXPECTED" not in proc.stderr, proc.stderr[:3000]
    assert "loaded as BertForQuestionAnswering: newly initialised qa_outputs; not used 9 tensors " \
           "(bert.pooler, cls.predictions, cls.seq_relationship)" in proc.stderr, proc.stderr[:3000]
    evaluated = tmp_path / "eval"
    proc = run([sys.executable, "train/finetune_qa.py",
                *qa_args(trained / "final", evaluated, "--do_train", "false",
                         "--validation_file", str(FIX / "bad-answers-v1.1.json"))])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = proc.stderr[proc.stderr.index("== SQuAD v1.1 evaluation: done in"):]
    assert "exact_match" in summary and "f1" in summary and str(evaluated / "predictions.json") in summary
    assert "answer(s) moved" in summary and "dropped" in summary  # the repairs, not only in eval_results.json
    assert "final model" not in summary
