"""The run folder contract in one place: `RunFolder` names every file and folder a training run writes (its
class attributes list them), and reads and writes them.

Everything here writes from the main process only, and writes whole files atomically (temporary
file + rename) so a crash never leaves a half-written JSON or model folder behind. What a failed write was
(a full disk, a read-only filesystem) is worked out in safe_write.py.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .safe_write import WRITE_FIXES, naming, write_failure

# Options that change how a run is operated, not what it computes: they may differ on resume.
OPERATIONAL_KEYS = frozenset({
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "logging_steps", "eval_steps",
    "checkpointing_steps", "keep_last_n", "report_to", "dataloader_num_workers", "nan_policy",
    "process_group_timeout", "push_to_hub", "hub_model_id", "hub_private", "peak_tflops",
    "preprocessing_num_workers", "overwrite_cache", "log_level", "disable_progress_bar", "max_train_steps",
    "num_train_epochs", "per_device_eval_batch_size", "torch_compile", "torch_compile_mode", "fused_encoder",
    "pack_sequences",  # the same instances per batch and the same per-instance losses, packed or not
    "early_stopping_patience",
    # checked where it matters: the resumed data position must be a whole number of new batches
    "per_device_train_batch_size",
})
_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")


class RunFolderError(RuntimeError):
    pass


class RunFileError(RunFolderError):
    """A file that is there but cannot be parsed (malformed JSON or YAML, another top-level type); names it."""


class OutputPathError(RunFolderError):
    """--output_dir cannot hold a run: it is a file, lies under a file, or cannot be written."""


def _part(name: str) -> property:
    """A RunFolder property: the path of `name` in the folder."""
    return property(lambda self: self.root / name)


@dataclass(frozen=True)
class RunFolder:
    """A run folder: the path of each part of the contract (module docstring), and its readers and writers.

    Readers return None for a file that is not there and raise RunFileError naming the file (and the line, for
    metrics.jsonl) for one that cannot be parsed. `RunFolder.of(x)` takes a RunFolder, a Path or a str: the
    functions that took `output_dir: Path` take either.
    """

    root: Path

    CONFIG = "config.yaml"  # task, world_size, the flat options ("config"), distributed, git_sha, versions, command
    METRICS = "metrics.jsonl"  # one JSON object per line; records with a "split" key are evaluations
    EVAL_RESULTS = "eval_results.json"  # pretraining: epochs + test; fine-tuning: splits, params, ...; --seeds: seeds
    PREDICTIONS = "predictions.jsonl"  # classification: one JSON row per evaluated example
    QA_PREDICTIONS = "predictions.json"  # QA: question id -> answer text (the official SQuAD format)
    NBEST = "nbest.json"  # QA
    NULL_ODDS = "null_odds.json"  # QA, SQuAD v2.0
    EVAL_DATA = "eval_data.json"  # QA: gold SQuAD JSON of the evaluation articles split off the training file
    TENSORBOARD = "tensorboard"  # event files: the TensorBoard project under accelerate's logging_dir
    CHECKPOINTS = "checkpoints"  # step_NNNNNN/ (checkpoint.py); best/step_NNNNNN/ with early stopping
    BEST = "best"
    STEP_PREFIX = "step_"
    FINAL = "final"  # save_pretrained export + tokenizer + README.md (model card)
    TOKENIZER = "tokenizer"  # a WordPiece trained by the pretraining run
    PREEMPTED = "PREEMPTED"  # marker for the SLURM job to requeue (preemption.py)
    REPLICA_CHECK = "replica_check.json"  # data-parallel runs: replica parameter fingerprints
    SEED_PREFIX = "seed_"  # --seeds: one run folder per seed, seed_N/ (seeds.py)
    PIPELINE_RECORD = "pipeline_commands.json"  # launch/pipeline.py: the commands that made a stage's folder
    LOGS = "logs"  # launch/submit.py: the SLURM job's JOBNAME-JOBID.out, appended across requeues
    PARAMS_DIFF = "params_diff.json"  # placed by hand for analysis.report: `python -m analysis.params A B --json`
    # What a run writes: --overwrite_output_dir removes these, and nothing else, before it starts.
    RUN_FILES = (CONFIG, METRICS, EVAL_RESULTS, TENSORBOARD, CHECKPOINTS, FINAL, TOKENIZER, PREEMPTED, REPLICA_CHECK,
                 QA_PREDICTIONS, PREDICTIONS, NBEST, NULL_ODDS)

    @classmethod
    def of(cls, where: RunFolder | Path | str) -> RunFolder:
        return where if isinstance(where, RunFolder) else cls(Path(where))

    def __str__(self) -> str:
        return str(self.root)

    config_file = _part(CONFIG)
    metrics_file = _part(METRICS)
    eval_results_file = _part(EVAL_RESULTS)
    predictions_file = _part(PREDICTIONS)
    qa_predictions_file = _part(QA_PREDICTIONS)
    nbest_file = _part(NBEST)
    null_odds_file = _part(NULL_ODDS)
    eval_data_file = _part(EVAL_DATA)
    tensorboard_dir = _part(TENSORBOARD)
    checkpoints_dir = _part(CHECKPOINTS)
    best_checkpoints_dir = _part(f"{CHECKPOINTS}/{BEST}")
    final_dir = _part(FINAL)
    tokenizer_dir = _part(TOKENIZER)
    preempted_marker = _part(PREEMPTED)
    replica_check_file = _part(REPLICA_CHECK)
    pipeline_record = _part(PIPELINE_RECORD)
    logs_dir = _part(LOGS)
    params_diff_file = _part(PARAMS_DIFF)

    @staticmethod
    def checkpoint_name(step: int) -> str:
        return f"{RunFolder.STEP_PREFIX}{step:06d}"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints_dir / self.checkpoint_name(step)

    @staticmethod
    def seed_folder_name(seed: int) -> str:
        return f"{RunFolder.SEED_PREFIX}{seed}"

    def seed_run(self, seed: int) -> RunFolder:
        """The run folder of one seed of a --seeds run."""
        return RunFolder(self.root / self.seed_folder_name(seed))

    def run_files(self) -> list[Path]:
        return [self.root / name for name in self.RUN_FILES]

    def read_config(self) -> dict[str, Any] | None:
        """config.yaml as a mapping ({} for an empty file)."""
        path = self.config_file
        if not path.is_file():
            return None
        try:
            config = yaml.safe_load(_read_text(path))
        except yaml.YAMLError as exc:
            raise RunFileError(f"{path}: malformed YAML: {exc}") from exc
        if config is not None and not isinstance(config, dict):
            raise RunFileError(f"{path}: expected a mapping at the top level")
        return config or {}

    def read_metrics(self) -> list[dict[str, Any]] | None:
        """The records of metrics.jsonl in file order (blank lines skipped)."""
        return read_jsonl(self.metrics_file) if self.metrics_file.is_file() else None

    def read_eval_results(self) -> dict[str, Any] | None:
        path = self.eval_results_file
        if not path.is_file():
            return None
        results = read_json(path)
        if not isinstance(results, dict):
            raise RunFileError(f"{path}: expected a JSON object")
        return results

    def write_eval_results(self, results: dict[str, Any]) -> None:
        write_json_atomic(self.eval_results_file, results)


RUN_FILES = RunFolder.RUN_FILES


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{path}: cannot read: {exc}") from exc


def read_json(path: Path) -> Any:
    """A JSON file; RunFileError naming it (line, column) when malformed, RunFolderError when unreadable."""
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise RunFileError(f"{path}: malformed JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from exc


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per line; blank lines are skipped. RunFileError names the file and the line."""
    records = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunFileError(f"{path}:{lineno}: malformed JSON line: {exc.msg}") from exc
        if not isinstance(record, dict):
            raise RunFileError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


# The output folders this process checked, with the nearest folder that existed then (None: it existed itself).
# run_main removes those it made, while still empty, when a run fails: a failed start leaves nothing behind.
_checked_output_dirs: dict[Path, Path | None] = {}


def check_output_path(output_dir: Path) -> None:
    """Refuse an --output_dir that cannot hold a run before any expensive work, without creating it: a file, a
    path under a file, a folder this process cannot write into (probed with a temporary file, removed at once)."""
    # os.path: False, not an exception, also under a file (ENOTDIR) or a folder this user may not enter (EACCES)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise OutputPathError(f"--output_dir {output_dir} is a file, not a folder; choose another --output_dir")
    existing = output_dir
    while not os.path.exists(existing) and existing != existing.parent:
        existing = existing.parent
    if not os.path.isdir(existing):
        raise OutputPathError(f"--output_dir {output_dir}: {existing} is a file, so no folder can be made under "
                              "it; choose another --output_dir")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        fix = WRITE_FIXES.get(err.errno, "choose another --output_dir")
        raise OutputPathError(f"--output_dir {output_dir}: cannot write in {existing}: {err.strerror}; "
                              f"{fix}") from None
    _checked_output_dirs.setdefault(output_dir, None if existing == output_dir else existing)


def checked_output_dirs() -> list[Path]:
    return list(_checked_output_dirs)


def forget_output_dirs() -> None:
    _checked_output_dirs.clear()


def discard_failed_writes() -> None:
    """After a run failed: remove the temporary folders of a checkpoint or final/ export that did not finish (they
    are never taken as complete, but fill the disk), then the output folders this run made and left empty."""
    for output_dir, existed_above in _checked_output_dirs.items():
        checkpoints = RunFolder(output_dir).checkpoints_dir
        for tmp in [*checkpoints.glob(".tmp-*"), *output_dir.glob(".tmp-*"), *output_dir.glob(".*.tmp")]:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        if existed_above is None:
            continue
        folder = output_dir
        while folder != existed_above:
            try:
                folder.rmdir()  # only while empty
            except OSError:
                break
            folder = folder.parent


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)  # the previous file is untouched; a half-written copy would only fill the disk
        raise naming(err, path) from None


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def redact(text: str) -> str:
    """Hub tokens never reach config.yaml, logs or model cards, even if typed on a command line."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        text = text.replace(token, "<redacted>")
    return _TOKEN_PATTERN.sub("<redacted>", text)


def git_sha() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if sha.returncode != 0:
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def package_versions() -> dict[str, str]:
    from importlib import metadata
    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "accelerate", "datasets", "tokenizers", "deepspeed", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def check_output_dir(output_dir: Path | RunFolder, flat_config: dict[str, Any], resume: str | None,
                     overwrite: bool) -> None:
    """Refuse to mix two different runs in one folder; runs on every rank before anything is written."""
    folder = RunFolder.of(output_dir)
    output_dir = folder.root
    check_output_path(output_dir)
    if not folder.config_file.is_file() or overwrite:
        return
    if resume is None:
        raise RunFolderError(f"{output_dir} already holds a run ({folder.CONFIG}). Continue it with "
                             "--resume_from_checkpoint latest, choose another --output_dir, or pass "
                             "--overwrite_output_dir to replace it")
    try:
        previous = (folder.read_config() or {}).get("config", {})
    except RunFileError as err:
        raise RunFolderError(f"{err}; pass --overwrite_output_dir to replace the run") from None
    diffs = {k: (previous.get(k), v) for k, v in flat_config.items()
             if k not in OPERATIONAL_KEYS and k in previous and previous.get(k) != v}
    diffs.update({k: (previous[k], None) for k in previous if k not in flat_config and k not in OPERATIONAL_KEYS})
    if diffs:
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(diffs.items()))
        raise RunFolderError(f"{output_dir} belongs to a run with a different configuration ({listed}); resume "
                             "with the same options, choose another --output_dir, or pass --overwrite_output_dir")


def clear_run_files(output_dir: Path | RunFolder) -> None:
    for path in RunFolder.of(output_dir).run_files():
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def write_run_config(output_dir: Path | RunFolder, task: str, flat_config: dict[str, Any], distributed: dict[str, Any],
                     extra: dict[str, Any] | None = None) -> None:
    record = {
        "task": task,
        "world_size": distributed.get("num_processes", 1),
        "config": flat_config,
        "distributed": distributed,
        "git_sha": git_sha(),
        "versions": package_versions(),
        "command": redact(" ".join(sys.argv)),
        "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    write_text_atomic(RunFolder.of(output_dir).config_file, redact(yaml.safe_dump(record, sort_keys=False)))


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


class MetricsLogger:
    """metrics.jsonl (one JSON object per line) + TensorBoard scalars, main process only.

    On resume the lines written after the resumed step are dropped, and TensorBoard is told to
    purge them, so a run that was interrupted reads like one that was not.
    """

    def __init__(self, accelerator, output_dir: Path | RunFolder, resume_step: int | None):
        self.accelerator = accelerator
        self.path = RunFolder.of(output_dir).metrics_file
        if accelerator.is_main_process:
            kept = []
            if resume_step is not None and self.path.is_file():
                for line in self.path.read_text().splitlines():
                    try:
                        if json.loads(line).get("step", 0) <= resume_step:
                            kept.append(line)
                    except json.JSONDecodeError:
                        break  # a line torn by a crash: everything after it is suspect
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any], prefix: str) -> None:
        if not self.accelerator.is_main_process:
            return
        clean = {k: _finite_or_none(v) for k, v in record.items()}
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(clean) + "\n")
        except OSError as err:
            try:
                os.truncate(self.path, size)  # no torn last line: the earlier lines stay as they were
            except OSError:
                pass
            raise naming(err, self.path) from None
        scalars = {f"{prefix}/{k}": v for k, v in record.items()
                   if k not in ("step", "epoch", "split") and isinstance(v, (int, float)) and v is not None}
        if scalars:
            self.accelerator.log(scalars, step=record["step"])


def load_eval_results(output_dir: Path | RunFolder, resume_step: int | None, task: str) -> dict[str, Any]:
    """A fresh eval_results record; on resume with the epochs evaluated up to the resumed step."""
    results: dict[str, Any] = {"task": task, "epochs": [], "test": None}
    if resume_step is not None:
        try:
            previous = RunFolder.of(output_dir).read_eval_results() or {}
        except RunFileError:
            previous = {}  # rebuilt from the evaluations still to come
        results["epochs"] = [e for e in previous.get("epochs", []) if e.get("step", 0) <= resume_step]
    return results


def strip_wrapper_prefix(state_dict: dict[str, Any], prefix: str = "model.") -> dict[str, Any]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def current_key_names() -> dict[str, bool]:
    """transformers >= 5 may "revert" to legacy key names on save (LayerNorm.gamma/beta, seen after a ZeRO-3 load):
    every reader then needs the renaming table. Save the names the model has now. (Imported here: reading a run
    folder needs no transformers.)"""
    from transformers import PreTrainedModel
    return {"save_original_format": False} if "save_original_format" in inspect.signature(
        PreTrainedModel.save_pretrained).parameters else {}


def export_final_model(accelerator, model, hf_model, tokenizer, final_dir: Path, model_card: str,
                       extra_files: dict[str, str] | None = None) -> None:
    """save_pretrained (safetensors) + tokenizer + model card into final/, atomically.

    `accelerator.get_state_dict` runs on every rank: under ZeRO-3 it gathers the partitions.
    """
    state_dict = strip_wrapper_prefix(accelerator.get_state_dict(model))
    if accelerator.is_main_process:
        tmp = final_dir.with_name(f".tmp-{final_dir.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            hf_model.save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True,
                                **current_key_names())
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
            write_text_atomic(tmp / "README.md", redact(model_card))
            for name, text in (extra_files or {}).items():
                write_text_atomic(tmp / name, redact(text))
        except Exception as err:
            failure = write_failure(err, tmp)  # before the clean-up: it may look at the free space
            shutil.rmtree(tmp, ignore_errors=True)  # a half export is never final/; the previous final/ stays
            if failure is None:
                raise
            raise (failure if failure.filename else naming(failure, final_dir)) from err
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(tmp, final_dir)
    accelerator.wait_for_everyone()


class HubUploadError(RuntimeError):
    pass


def push_folder_to_hub(folder: Path, repo_id: str, private: bool, commit_message: str) -> str:
    """Upload with huggingface_hub; the token comes from HF_TOKEN or the saved login, never from us."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message)
    except Exception as err:  # network, auth, permissions: all end the same way for the user
        raise HubUploadError(redact(f"could not push {folder} to the hub as {repo_id}: {type(err).__name__}: {err}. "
                                    f"The model is saved in {folder}; push it later with "
                                    f"`hf upload {repo_id} {folder}` once online and logged in "
                                    "(HF_TOKEN or `hf auth login`).")) from None
    return str(getattr(info, "commit_url", info))


def numeric_summary(values: Iterable[float]) -> dict[str, float]:
    values = list(values)
    if not values:
        return {}
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var), "n": len(values)}
