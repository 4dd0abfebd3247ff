"""The quickstart runs anywhere: on a fresh copy of the repository, with no ../shared/data and no network, the
smoke preset and the smoke pipeline run on the embedded sample (data/sample/), and the default (hub) job fails with
a message naming the offline smoke command.

The fresh copy is the working tree (tracked + untracked, not ignored files: what the next commit holds) copied into
a temporary folder whose parent has no `shared` folder, run with a fresh, empty Hugging Face home (no cached hub
data, no accelerate default config) and HF_HUB_OFFLINE=1."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SHARED_DATA
from train.common.config import OptimizationArguments, RunArguments, parse_config
from train.common.task_config import PretrainingDataArguments, PretrainingModelArguments

SAMPLE = REPO / "data" / "sample"
SAMPLE_TRAIN = "data/sample/wikitext-2-raw/sample-train.raw"
SMOKE_COMMAND = "accelerate launch train/pretrain.py --config train/configs/smoke.yaml"
PRETRAIN = (PretrainingModelArguments, PretrainingDataArguments, OptimizationArguments, RunArguments)


# ---- the sample itself -----------------------------------------------------------------------------------------

def sample_files() -> list[Path]:
    return sorted(p for p in SAMPLE.rglob("*") if p.is_file() and p.name not in ("SOURCES.md", "build_sample.py")
                  and "__pycache__" not in p.parts)


def test_sample_is_small_and_every_file_is_in_its_note_with_its_sha256():
    files = sample_files()
    assert files, f"{SAMPLE} holds no data files"
    assert sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < 2_000_000
    note = (SAMPLE / "SOURCES.md").read_text()
    table = dict(re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{64})` \|$", note, flags=re.MULTILINE))
    assert sorted(table) == sorted(str(p.relative_to(SAMPLE)) for p in files)
    for path in files:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == table[str(path.relative_to(SAMPLE))], path
    for words in ("CC BY-SA 3.0", "CC BY-SA 4.0", "Merity", "Wikipedia authors", "Share-alike", "Socher",
                  "Rajpurkar", "no licence file"):
        assert words in note, words


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data, the full files the sample comes from")
def test_sample_rebuilds_byte_for_byte_from_shared_data():
    proc = subprocess.run([sys.executable, str(SAMPLE / "build_sample.py"), "--check", "--source", str(SHARED_DATA)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sample_records_are_whole_and_load_with_the_project_loaders():
    from train.common.data.pretraining import document_ranges
    from train.common.data.sst import load_sst_ptb_trees
    documents = {}
    for name in ("sample-train.raw", "sample-test.raw"):
        lines = (SAMPLE / "wikitext-2-raw" / name).read_text().split("\n")
        assert lines[0] == " " and lines[1].startswith(" = ") and lines[-2:] == [" ", ""], name  # the raw format
        documents[name] = [lines[start] for start, _ in document_ranges(lines[:-1], "wikitext")]
    assert len(documents["sample-train.raw"]) == 27 and len(documents["sample-test.raw"]) == 4
    assert not set(documents["sample-train.raw"]) & set(documents["sample-test.raw"])
    splits = load_sst_ptb_trees(str(SAMPLE / "sst" / "trees"))
    assert [len(splits.split(name).sentences) for name in ("train", "dev", "test")] == [855, 221, 221]
    assert {e.label for e in splits.dev.sentences} == {0, 1, 2, 3, 4}
    for name, version, articles in (("sample-v1.1.json", "1.1", 4), ("sample-v2.0.json", "v2.0", 1)):
        data = json.loads((SAMPLE / "squad" / name).read_text())
        assert data["version"] == version and len(data["data"]) == articles, name


# ---- the preset: its sample path, the command line, the working directory ---------------------------------------

def test_smoke_preset_trains_on_the_sample_and_the_command_line_replaces_it(tmp_path, monkeypatch):
    preset = yaml.safe_load((REPO / "train" / "configs" / "smoke.yaml").read_text())
    assert preset["train_file"] == SAMPLE_TRAIN and (REPO / SAMPLE_TRAIN).is_file()
    assert "test_file" not in preset and "validation_file" not in preset  # nothing of the sample leaks into your run
    monkeypatch.chdir(REPO)
    _, data, _, run = parse_config(PRETRAIN, ["--config", "train/configs/smoke.yaml"])
    assert data.train_file == SAMPLE_TRAIN and data.test_file is None and data.train_tokenizer == 8000
    _, data, _, _ = parse_config(PRETRAIN, ["--config", "train/configs/smoke.yaml", "--train_file", "mine.raw"])
    assert (data.train_file, data.validation_file, data.test_file) == ("mine.raw", None, None)
    _, data, _, _ = parse_config(PRETRAIN, ["--config", "train/configs/smoke.yaml", "--train_file", "none"])
    assert data.train_file is None and data.dataset_name == "wikitext"  # the hub dataset with the smoke sizes
    # From another working directory, the preset's INPUT path is found from the repository root; output_dir stays
    # relative to where you are.
    monkeypatch.chdir(tmp_path)
    _, data, _, run = parse_config(PRETRAIN, ["--config", str(REPO / "train" / "configs" / "smoke.yaml")])
    assert data.train_file == str(REPO / SAMPLE_TRAIN) and run.output_dir == "runs/smoke"
    # A relative path that exists in neither place is kept as written, so the error names it as written.
    other = tmp_path / "other.yaml"
    other.write_text("train_file: nowhere/text.raw\n")
    assert parse_config(PRETRAIN, ["--config", str(other)])[1].train_file == "nowhere/text.raw"
    # A path that exists from the working directory wins over the repository's.
    (tmp_path / "data" / "sample" / "wikitext-2-raw").mkdir(parents=True)
    (tmp_path / SAMPLE_TRAIN).write_text(" \n = Local = \n \n Text . \n")
    assert parse_config(PRETRAIN, ["--config", str(REPO / "train" / "configs" / "smoke.yaml")])[1].train_file \
        == SAMPLE_TRAIN


# ---- a fresh copy of the repository, no ../shared, no network ---------------------------------------------------

@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("quickstart_anywhere")
    copy = root / "repo"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is not part of the next commit
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    assert not (root / "shared").exists() and (copy / SAMPLE_TRAIN).is_file()
    return copy


def offline_env(copy: Path) -> dict[str, str]:
    home = copy.parent / "hf_home"  # empty: no cached hub data, no accelerate default config
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "ACCELERATE_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(home), HF_DATASETS_CACHE=str(home / "datasets"),
               TOKENIZERS_PARALLELISM="false", PATH=str(Path(sys.executable).parent) + os.pathsep + env["PATH"])
    env.pop("PYTHONPATH", None)  # the copy's own code, as a user's shell would run it
    return env


def run_in(copy: Path, command: list[str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=copy, env=offline_env(copy), capture_output=True, text=True, timeout=timeout)


def test_pipeline_on_a_fresh_clone_chooses_the_sample(fresh_copy):
    proc = run_in(fresh_copy, [sys.executable, "launch/pipeline.py", "--smoke", "--dry-run"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    sample = fresh_copy / "data" / "sample"
    assert f"[pipeline] data: {sample} (embedded sample; ../shared/data not found)" in proc.stdout
    assert f"--train_file {sample}/wikitext-2-raw/sample-train.raw --test_file " in proc.stdout
    assert f"--sst_trees_dir {sample}/sst/trees" in proc.stdout and "--train_articles 3" in proc.stdout
    # Your own WikiText file is not evaluated on the sample's test articles.
    proc = run_in(fresh_copy, [sys.executable, "launch/pipeline.py", "--smoke", "--dry-run", "--wikitext-file",
                               str(sample / "wikitext-2-raw" / "sample-test.raw")], timeout=120)
    assert proc.returncode == 0 and "--test_file" not in proc.stdout, proc.stderr
    # --data-dir: a folder laid out like ../shared/data; a missing file is named with the option that fixes it.
    proc = run_in(fresh_copy, [sys.executable, "launch/pipeline.py", "--smoke", "--dry-run", "--data-dir",
                               str(fresh_copy / "elsewhere")], timeout=120)
    assert proc.returncode == 2 and "--data-dir" in proc.stderr and "no such folder" in proc.stderr


def test_default_job_offline_names_the_offline_smoke_command(fresh_copy):
    proc = run_in(fresh_copy, ["accelerate", "launch", "train/pretrain.py"], timeout=300)
    # The wording is the offline check's (train/common); what matters here: it stops, names what is missing and
    # the command that works offline.
    assert proc.returncode != 0
    assert "wikitext" in proc.stderr and SMOKE_COMMAND in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_smoke_preset_alone_runs_offline_on_the_sample(fresh_copy):
    proc = run_in(fresh_copy, SMOKE_COMMAND.split(), timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    run = fresh_copy / "runs" / "smoke"
    assert (run / "final" / "model.safetensors").stat().st_size > 0 and (run / "final" / "config.json").is_file()
    config = yaml.safe_load((run / "config.yaml").read_text())["config"]
    assert config["train_file"] == SAMPLE_TRAIN and config["test_file"] is None
    vocab = json.loads((run / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert 7000 < len(vocab) <= 8000  # trained on the sample, not loaded from the hub
    results = json.loads((run / "eval_results.json").read_text())
    assert len(results["epochs"]) == 3 and all(e["masked_tokens"] > 0 for e in results["epochs"])  # held-out docs


@pytest.mark.slow
def test_smoke_pipeline_runs_offline_on_the_sample_into_a_report(fresh_copy):
    # Step caps keep the test in minutes; the data choice and every stage are what a plain --smoke runs.
    proc = run_in(fresh_copy, [sys.executable, "launch/pipeline.py", "--smoke",
                               "--pretrain-args", "--max_train_steps 20", "--sst-args", "--max_train_steps 20",
                               "--squad-args", "--max_train_steps 10"], timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "(embedded sample; ../shared/data not found)" in proc.stdout
    runs = fresh_copy / "runs" / "pipeline_smoke"
    sample = fresh_copy / "data" / "sample"
    for stage in ("pretrain", "sst", "squad"):
        assert (runs / stage / "final" / "model.safetensors").is_file(), stage
    config = yaml.safe_load((runs / "pretrain" / "config.yaml").read_text())["config"]
    assert config["train_file"] == str(sample / "wikitext-2-raw" / "sample-train.raw")
    assert config["test_file"] == str(sample / "wikitext-2-raw" / "sample-test.raw")
    assert "test" in json.loads((runs / "pretrain" / "eval_results.json").read_text())
    assert json.loads((runs / "squad" / "eval_results.json").read_text())["total"] == 124  # Victoria_(Australia)
    assert (runs / "report" / "report.md").read_text().startswith("# Training report")
