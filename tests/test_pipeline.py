"""launch/pipeline.py: the whole study (pretrain -> SST -> SQuAD -> parameter diffs -> report) in smoke mode on tiny
fixtures, stage skipping on a rerun, and the resume of an interrupted stage."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, launch_env, write_wikitext_corpus
from tests.test_finetune_classification import write_sst_trees

SQUAD_FIXTURE = REPO / "tests" / "fixtures" / "squad" / "tiny-v1.1.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Tiny sizes for every stage (the smoke presets are sized for real data and minutes, not seconds).
PRETRAIN = ("--hidden_size 32 --num_hidden_layers 2 --num_attention_heads 2 --intermediate_size 64 "
            "--max_seq_length 64 --max_position_embeddings 64 --train_tokenizer 300 --max_train_steps 6 "
            "--per_device_train_batch_size 8 --logging_steps 2 --validation_split_percentage 20")
SST = "--max_train_steps 6 --max_seq_length 64 --per_device_train_batch_size 8 --logging_steps 2"
SQUAD = ("--train_articles 2 --max_train_steps 6 --max_seq_length 64 --doc_stride 16 --max_query_length 16 "
         "--per_device_train_batch_size 4 --logging_steps 2 --aux_metrics false")


def pipeline(runs: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "launch/pipeline.py", "--smoke", "--runs-dir", str(runs),
           "--wikitext-file", str(data / "wiki.raw"), "--sst-trees-dir", str(data / "trees"),
           "--squad-file", str(SQUAD_FIXTURE), "--pretrain-args", PRETRAIN, "--sst-args", SST, "--squad-args", SQUAD,
           *extra]
    return subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipeline_data")
    write_wikitext_corpus(folder / "wiki.raw", articles=20, seed=5)
    write_sst_trees(folder / "trees")
    return folder


@pytest.fixture(scope="module")
def smoke(data, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    runs = tmp_path_factory.mktemp("pipeline") / "runs"
    proc = pipeline(runs, data)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return runs, proc


@pytest.mark.slow
def test_smoke_pipeline_runs_every_stage_into_one_report(smoke):
    runs, proc = smoke
    for stage in ("pretrain", "sst", "squad"):
        assert json.loads((runs / stage / "eval_results.json").read_text()), stage
        assert (runs / stage / "final" / "model.safetensors").stat().st_size > 0
    # The fine-tuning stages start from the pretraining stage's final/.
    for stage in ("sst", "squad"):
        params = json.loads((runs / stage / "eval_results.json").read_text())["params"]
        assert params["before"]["source"] == str(runs / "pretrain" / "final")
    for task in ("sst", "squad"):
        diff = json.loads((runs / "params" / f"{task}_diff.json").read_text())
        assert diff, task
    report = (runs / "report" / "report.md").read_text()
    plots = sorted((runs / "report").rglob("*.png"))
    assert len(plots) >= 4
    for png in plots:
        assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 1000, png
        assert png.name in report, f"{png.name} is not shown in report.md"
    timings = json.loads((runs / "pipeline_timings.json").read_text())
    assert set(timings) == {"pretrain", "sst", "squad", "params", "report"}


@pytest.mark.slow
def test_rerun_skips_complete_stages_and_rebuilds_the_report(smoke, data):
    runs, _ = smoke
    before = (runs / "sst" / "final" / "model.safetensors").stat().st_mtime_ns
    proc = pipeline(runs, data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("pretrain", "sst", "squad", "params"):
        assert f"[pipeline] {stage}: complete, skipped" in proc.stdout
    assert (runs / "sst" / "final" / "model.safetensors").stat().st_mtime_ns == before
    assert "[pipeline] report: " in proc.stdout


@pytest.mark.slow
def test_an_interrupted_stage_is_resumed_and_a_failure_names_the_stage(data, tmp_path):
    runs = tmp_path / "runs"
    # A pretraining stage that stopped before finishing: its folder has config.yaml but no final/.
    proc = pipeline(runs, data, "--stages", "pretrain", "--dry-run")
    assert proc.returncode == 0 and "--resume_from_checkpoint" not in proc.stdout
    (runs / "pretrain").mkdir(parents=True)
    (runs / "pretrain" / "config.yaml").write_text("task: pretraining\n")
    proc = pipeline(runs, data, "--stages", "pretrain", "--dry-run")
    assert "--resume_from_checkpoint latest" in proc.stdout
    # A stage that fails stops the pipeline with its exit code and says how to continue.
    proc = pipeline(runs, data, "--stages", "sst", "--sst-args", "--learning_rate not-a-number")
    assert proc.returncode != 0
    assert "[pipeline] sst failed" in proc.stderr and "rerun the same command" in proc.stderr


def test_missing_smoke_data_is_named(tmp_path):
    proc = subprocess.run([sys.executable, "launch/pipeline.py", "--smoke", "--runs-dir", str(tmp_path),
                           "--wikitext-file", str(tmp_path / "nope.raw")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "nope.raw is missing" in proc.stderr and "--wikitext-file" in proc.stderr


@pytest.mark.slow
def test_a_complete_stage_of_other_commands_is_neither_reused_nor_overwritten(smoke, data):
    """E.g. `--smoke` then `--smoke --data-dir DIR` into the same runs folder: the finished stages were made from
    other data; skipping them would report the old numbers as the new ones."""
    runs, _ = smoke
    before = (runs / "pretrain" / "final" / "model.safetensors").stat().st_mtime_ns
    proc = pipeline(runs, data, "--pretrain-args", PRETRAIN + " --seed 3")
    assert proc.returncode == 2
    assert "holds a stage made by other commands" in proc.stderr and "--runs-dir" in proc.stderr
    assert "complete, skipped" not in proc.stdout
    assert (runs / "pretrain" / "final" / "model.safetensors").stat().st_mtime_ns == before


def planned(proc: subprocess.CompletedProcess) -> dict[str, list[list[str]]]:
    """{stage: [command, ...]} from a --dry-run's output."""
    plan: dict[str, list[list[str]]] = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"\[pipeline\] (\w+): (.*)", line)  # the data lines are "data: FOLDER (why)"
        if match and match.group(1) != "data":
            plan.setdefault(match.group(1), []).append(shlex.split(match.group(2)))
    return plan


def test_control_and_seeds_plan(data, tmp_path):
    """--control --seeds 2 --seed 5: pretraining once; each fine-tuning stage and its control one run per seed in
    <stage>/seed_<k>/, the control's commands equal to ours but for --random_init true and the folder."""
    runs = tmp_path / "runs"
    proc = pipeline(runs, data, "--control", "--seeds", "2", "--seed", "5", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    plan = planned(proc)
    assert list(plan) == ["pretrain", "sst", "squad", "sst_control", "squad_control", "params", "report"]
    assert len(plan["pretrain"]) == 1
    for task in ("sst", "squad"):
        ours, control = plan[task], plan[f"{task}_control"]
        assert [c[c.index("--output_dir") + 1] for c in ours] == [str(runs / task / f"seed_{s}") for s in (5, 6)]
        assert [c[c.index("--seed") + 1] for c in ours] == ["5", "6"]
        for mine, theirs in zip(ours, control, strict=True):
            assert theirs[theirs.index("--model_name_or_path") + 1] == str(runs / "pretrain" / "final")
            assert [a for a in theirs if a not in ("--random_init", "true")] == \
                [a.replace(str(runs / task), str(runs / f"{task}_control")) for a in mine]
    assert plan["params"][0][4] == str(runs / "sst" / "seed_5" / "final")
    assert plan["report"][0][-2:] == ["--arms", str(runs)]
    # The smoke default: no control (it doubles the fine-tuning time), one seed in the stage folder itself.
    plan = planned(pipeline(runs, data, "--dry-run"))
    assert "sst_control" not in plan and plan["sst"][0][plan["sst"][0].index("--output_dir") + 1] == str(runs / "sst")
    proc = pipeline(runs, data, "--stages", "sst_control", "--dry-run")
    assert proc.returncode == 2 and "--stages sst_control: not a stage of this run" in proc.stderr
    proc = pipeline(runs, data, "--pretrain-config", "train/configs/nope.yaml", "--dry-run")
    assert proc.returncode == 2 and "--pretrain-config train/configs/nope.yaml: no such file" in proc.stderr


@pytest.mark.slow
def test_a_real_control_stage_beside_ours_in_the_report(smoke, data):
    """The control stage fine-tunes a random init of the pretrained model's shape; the report sets it beside ours."""
    runs, _ = smoke
    proc = pipeline(runs, data, "--control", "--stages", "sst_control,report")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config = (runs / "sst_control" / "config.yaml").read_text()
    assert "random_init: true" in config and f"random init (config and tokenizer of {runs / 'pretrain' / 'final'}" \
        in config
    arms = json.loads((runs / "report" / "arms.json").read_text())
    accuracy = arms["rows"][0]
    assert accuracy["ours"]["n"] == accuracy["control"]["n"] == 1 and accuracy["majority"] is not None
    assert f"{runs / 'squad_control'}: stage not run (launch/pipeline.py --control runs it)" in arms["missing"]
    assert "| SST-5 test accuracy |" in (runs / "report" / "report.md").read_text()
