"""The run folder contract: config.yaml, metrics.jsonl, eval_results.json, tensorboard/, final/.

Everything here writes from the main process only, and writes whole files atomically (temporary
file + rename) so a crash never leaves a half-written JSON or model folder behind.
"""

from __future__ import annotations

import datetime as _dt
import errno
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
from pathlib import Path
from typing import Any

import yaml
from transformers import PreTrainedModel

# Options that change how a run is operated, not what it computes: they may differ on resume.
OPERATIONAL_KEYS = frozenset({
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "logging_steps", "eval_steps",
    "checkpointing_steps", "keep_last_n", "report_to", "dataloader_num_workers", "nan_policy",
    "process_group_timeout", "push_to_hub", "hub_model_id", "hub_private", "peak_tflops",
    "preprocessing_num_workers", "overwrite_cache", "log_level", "disable_progress_bar", "max_train_steps", "num_train_epochs",
    "per_device_eval_batch_size", "torch_compile", "early_stopping_patience",
    # checked where it matters: the resumed data position must be a whole number of new batches
    "per_device_train_batch_size",
})
RUN_FILES = ("config.yaml", "metrics.jsonl", "eval_results.json", "tensorboard", "checkpoints", "final",
             "tokenizer", "PREEMPTED", "replica_check.json", "predictions.json", "predictions.jsonl", "nbest.json", "null_odds.json")
_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")


class RunFolderError(RuntimeError):
    pass


class OutputPathError(RunFolderError):
    """--output_dir cannot hold a run: it is a file, lies under a file, or cannot be written."""


# What the user can do about a failed write into the run folder, by errno.
_WRITE_FIXES = {
    errno.ENOSPC: "free space or choose another --output_dir",
    errno.EDQUOT: "free space (disk quota) or choose another --output_dir",
    errno.EROFS: "choose an --output_dir on a writable filesystem",
    errno.EACCES: "choose another --output_dir or make that one writable",
    errno.EPERM: "choose another --output_dir or make that one writable",
    errno.ENOTDIR: "a part of that path is a file, not a folder; choose another --output_dir",
    errno.EEXIST: "something else is in the way there; remove it or choose another --output_dir",
    errno.EISDIR: "a folder is in the way there; remove it or choose another --output_dir",
}
WRITE_ERRNOS = frozenset(_WRITE_FIXES)
# The same outside the run folder (a cache, /tmp): only errors that nothing but a write raises get a line there.
_ELSEWHERE_FIXES = {errno.ENOSPC: "free space there", errno.EDQUOT: "free space there (disk quota)",
                    errno.EROFS: "that location must be writable"}
# The output folders this process checked, with the nearest folder that existed then (None: it existed itself).
# run_main removes those it made, while still empty, when a run fails: a failed start leaves nothing behind.
_checked_output_dirs: dict[Path, Path | None] = {}


def write_error_line(err: OSError, fallback: Path | None = None, in_run_folder: bool = True) -> str:
    """"cannot write PATH: REASON; FIX" for an OSError of WRITE_ERRNOS."""
    where = err.filename or (f"under {fallback}" if fallback else "a file")
    fix = _WRITE_FIXES[err.errno] if in_run_folder else _ELSEWHERE_FIXES[err.errno]
    return f"cannot write {where}: {err.strerror or os.strerror(err.errno)}; {fix}"


def _named(err: OSError, path: Path) -> OSError:
    """The same error naming `path`: a failed f.write() does not say which file it was writing."""
    if err.filename is not None and not str(err.filename).endswith(".tmp"):
        return err
    named = OSError(err.errno, err.strerror, str(path))  # OSError(errno, ...) picks the subclass (PermissionError...)
    named.__cause__ = err
    return named


# Writers that fail without an OSError: safetensors ("... No space left on device (os error 28)") and torch.save,
# whose RuntimeError ("[enforce fail at inline_container.cc:672] . unexpected pos ...") does not say why.
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")
_TORCH_WRITER = ("inline_container.cc", "PytorchStreamWriter failed", "iostream error")
_NEARLY_FULL_BYTES = 64 << 20


def _free_bytes(path: Path) -> int | None:
    while not os.path.exists(path) and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def write_failure(err: BaseException, where: Path | None) -> OSError | None:
    """The OSError (of WRITE_ERRNOS) behind a failed write under `where` (the run folder, if known), also when the
    writer raised something else (then without a file name); None when it is not one."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            return err
        text = str(err)
        code = _OS_ERROR_CODE.search(text)
        if code and int(code.group(1)) in WRITE_ERRNOS:
            return OSError(int(code.group(1)), os.strerror(int(code.group(1))))
        if where is not None and any(mark in text for mark in _TORCH_WRITER):
            free = _free_bytes(where)
            if free is not None and free < _NEARLY_FULL_BYTES:  # torch.save does not say why; a full disk does
                return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        err = err.__cause__ or err.__context__
    return None


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
        fix = _WRITE_FIXES.get(err.errno, "choose another --output_dir")
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
        for tmp in [*output_dir.glob("checkpoints/.tmp-*"), *output_dir.glob(".tmp-*"), *output_dir.glob(".*.tmp")]:
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
        raise _named(err, path) from None


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


def check_output_dir(output_dir: Path, flat_config: dict[str, Any], resume: str | None, overwrite: bool) -> None:
    """Refuse to mix two different runs in one folder; runs on every rank before anything is written."""
    check_output_path(output_dir)
    config_file = output_dir / "config.yaml"
    if not config_file.is_file() or overwrite:
        return
    if resume is None:
        raise RunFolderError(f"{output_dir} already holds a run (config.yaml). Continue it with "
                             "--resume_from_checkpoint latest, choose another --output_dir, or pass "
                             "--overwrite_output_dir to replace it")
    try:
        previous = (yaml.safe_load(config_file.read_text()) or {}).get("config", {})
    except yaml.YAMLError as err:
        raise RunFolderError(f"{config_file}: unreadable ({err}); pass --overwrite_output_dir to replace the run")
    diffs = {k: (previous.get(k), v) for k, v in flat_config.items()
             if k not in OPERATIONAL_KEYS and k in previous and previous.get(k) != v}
    diffs.update({k: (previous[k], None) for k in previous if k not in flat_config and k not in OPERATIONAL_KEYS})
    if diffs:
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(diffs.items()))
        raise RunFolderError(f"{output_dir} belongs to a run with a different configuration ({listed}); resume "
                             "with the same options, choose another --output_dir, or pass --overwrite_output_dir")


def clear_run_files(output_dir: Path) -> None:
    for name in RUN_FILES:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def write_run_config(output_dir: Path, task: str, flat_config: dict[str, Any], distributed: dict[str, Any],
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
    write_text_atomic(output_dir / "config.yaml", redact(yaml.safe_dump(record, sort_keys=False)))


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


class MetricsLogger:
    """metrics.jsonl (one JSON object per line) + TensorBoard scalars, main process only.

    On resume the lines written after the resumed step are dropped, and TensorBoard is told to
    purge them, so a run that was interrupted reads like one that was not.
    """

    def __init__(self, accelerator, output_dir: Path, resume_step: int | None):
        self.accelerator = accelerator
        self.path = output_dir / "metrics.jsonl"
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
            raise _named(err, self.path) from None
        scalars = {f"{prefix}/{k}": v for k, v in record.items()
                   if k not in ("step", "epoch", "split") and isinstance(v, (int, float)) and v is not None}
        if scalars:
            self.accelerator.log(scalars, step=record["step"])


def load_eval_results(output_dir: Path, resume_step: int | None, task: str) -> dict[str, Any]:
    path = output_dir / "eval_results.json"
    results: dict[str, Any] = {"task": task, "epochs": [], "test": None}
    if resume_step is not None and path.is_file():
        try:
            previous = json.loads(path.read_text())
            results["epochs"] = [e for e in previous.get("epochs", []) if e.get("step", 0) <= resume_step]
        except json.JSONDecodeError:
            pass  # rebuilt from the evaluations still to come
    return results


def strip_wrapper_prefix(state_dict: dict[str, Any], prefix: str = "model.") -> dict[str, Any]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


# transformers >= 5 may "revert" to legacy key names on save (LayerNorm.gamma/beta, seen after a ZeRO-3 load):
# every reader then needs the renaming table. Save the names the model has now.
CURRENT_KEY_NAMES = ({"save_original_format": False}
                     if "save_original_format" in inspect.signature(PreTrainedModel.save_pretrained).parameters else {})


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
            hf_model.save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True, **CURRENT_KEY_NAMES)
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
            raise (failure if failure.filename else _named(failure, final_dir)) from err
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
