"""Checkpoints that are either complete or ignored, and the counters that make resume exact.

A checkpoint is written by `accelerator.save_state` (every rank: DeepSpeed needs all of them)
into `checkpoints/.tmp-step_NNNNNN/`; the main process then writes `checkpoint.json` (step,
counters, world size, model shape, file sizes) and renames the folder to `step_NNNNNN/`. A kill at
any moment leaves either a hidden temporary folder or a complete checkpoint; deleting one (pruning,
or the same step saved again) renames it to a hidden `.trash-` folder first, for the same reason. On resume,
`latest` walks checkpoints from the newest down and skips (with a warning naming it) any whose
manifest is missing or whose files do not match it, or that fails to load.

A checkpoint folder is trusted input: optimizer, scheduler and RNG states are pickles.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from accelerate.logging import get_logger

from .distributed import is_deepspeed
from .run_folder import RunFolder

logger = get_logger(__name__)

MANIFEST = "checkpoint.json"
TRASH_PREFIX = ".trash-"  # checkpoints being deleted (hidden, like the .tmp- folders being written)
STEP_PREFIX = RunFolder.STEP_PREFIX
checkpoint_name = RunFolder.checkpoint_name  # step_NNNNNN


class CheckpointError(RuntimeError):
    pass


@dataclass
class TrainState:
    """Registered with accelerator.register_for_checkpointing: restored by load_state."""

    step: int = 0                  # optimizer steps done
    epoch: int = 0                 # epoch in progress
    batches_in_epoch: int = 0      # micro-batches (per process) consumed in that epoch
    samples_seen: int = 0          # global
    tokens_seen: int = 0           # global, non-padding
    world_size: int = 1            # processes and micro-batch size that batches_in_epoch counts in
    per_device_batch_size: int = 0
    pending_stats: list[float] | None = None  # the logging interval's sums not yet logged (reduced over ranks)
    length_group_batch: int | None = None      # global batch the length-grouped sampler groups by (fine-tuning)
    best_dev_accuracy: float | None = None     # early stopping (classification)
    best_step: int | None = None
    bad_epochs: int = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state.update(state.pop("extra", None) or {})  # checkpoints written before the fields were typed
        known = {f.name for f in fields(self)}
        for key, value in state.items():
            if key in known:
                setattr(self, key, value)

    def batches_to_skip(self, world_size: int, per_device_batch_size: int) -> int:
        """Micro-batches per process to skip in the resumed epoch, also on another process count:
        the seeded epoch permutation is the same, so the consumed prefix of samples is too."""
        consumed = self.batches_in_epoch * self.world_size * self.per_device_batch_size
        per_batch = world_size * per_device_batch_size
        if consumed % per_batch:
            raise CheckpointError(
                f"the checkpoint stopped {consumed} samples into epoch {self.epoch} ({self.world_size} processes x "
                f"{self.per_device_batch_size}); that is not a whole number of batches of {world_size} x "
                f"{per_device_batch_size}; resume with {self.world_size} processes or a compatible batch size")
        return consumed // per_batch


def _manifest_files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def save_checkpoint(accelerator, checkpoints_dir: Path, train_state: TrainState, metadata: dict[str, Any],
                    keep_last_n: int) -> Path:
    """Save the accelerator state atomically; returns the final folder."""
    started = time.perf_counter()
    name = checkpoint_name(train_state.step)
    final = checkpoints_dir / name
    tmp = checkpoints_dir / f".tmp-{name}"
    if accelerator.is_main_process:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        for left in checkpoints_dir.glob(f"{TRASH_PREFIX}*"):  # a deletion that an earlier stop cut short
            shutil.rmtree(left, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        manifest = {"step": train_state.step, "train_state": train_state.state_dict(), **metadata,
                    "files": _manifest_files(tmp), "save_seconds": round(time.perf_counter() - started, 3)}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        # the same step saved again (e.g. epoch end right after a step save): the old one goes out of sight first
        trash = _out_of_sight(final) if final.exists() else None
        os.replace(tmp, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        _prune(checkpoints_dir, keep_last_n)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete-looking checkpoint folders, newest first (by the step in the manifest name)."""
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for p in checkpoints_dir.iterdir():
        if p.is_dir() and p.name.startswith(STEP_PREFIX) and p.name[len(STEP_PREFIX):].isdigit():
            found.append((int(p.name[len(STEP_PREFIX):]), p))
    return [p for _, p in sorted(found, reverse=True)]


def _prune(checkpoints_dir: Path, keep_last_n: int) -> None:
    if keep_last_n <= 0:
        return
    for old in list_checkpoints(checkpoints_dir)[keep_last_n:]:
        shutil.rmtree(_out_of_sight(old), ignore_errors=True)


def _out_of_sight(folder: Path) -> Path:
    """Rename a checkpoint folder to its hidden trash name (returned) before it is deleted: a stop (a second
    Ctrl-C, a kill) in the middle of a deletion leaves a hidden folder the next save removes, never a visible
    checkpoint with files missing."""
    trash = folder.parent / f"{TRASH_PREFIX}{folder.name}"
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    return trash


def validate_checkpoint(folder: Path) -> dict[str, Any]:
    """The manifest if every file it lists is present with its size; CheckpointError otherwise."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST} (incomplete write?)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({err})") from None
    for rel, size in manifest.get("files", {}).items():
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(f"{folder}: missing {rel}")
        if path.stat().st_size != size:
            raise CheckpointError(f"{folder}: {rel} has {path.stat().st_size} bytes, the manifest says {size} "
                                  "(truncated or corrupt)")
    return manifest


def resume_candidates(output_dir: Path | RunFolder, spec: str) -> list[Path]:
    """Checkpoints to try in order for --resume_from_checkpoint SPEC ('latest' or a path)."""
    if spec == "latest":
        candidates = []
        for folder in list_checkpoints(RunFolder.of(output_dir).checkpoints_dir):
            try:
                validate_checkpoint(folder)
                candidates.append(folder)
            except CheckpointError as err:
                logger.warning(f"skipping checkpoint {folder.name}: {err}", main_process_only=True)
        return candidates
    folder = Path(spec)
    if not folder.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {spec}: no such folder")
    validate_checkpoint(folder)
    return [folder]


def check_compatible(manifest: dict[str, Any], model_signature: dict[str, Any], world_size: int,
                     using_deepspeed: bool, folder: Path) -> None:
    """Refuse, with the reason, checkpoints that cannot continue this run."""
    saved = manifest.get("model_signature")
    if saved is not None and saved != model_signature:
        diffs = {k: (saved.get(k), model_signature.get(k)) for k in set(saved) | set(model_signature)
                 if saved.get(k) != model_signature.get(k)}
        raise CheckpointError(f"{folder}: checkpoint is of a different model shape {diffs} "
                              "(checkpoint value, this run's value); resume with the same model options")
    saved_world = manifest.get("train_state", {}).get("world_size", world_size)
    if saved_world != world_size and using_deepspeed:
        raise CheckpointError(f"{folder}: saved by {saved_world} processes; DeepSpeed ZeRO shards optimizer state "
                              f"per process, so resume it with {saved_world} processes (this run has {world_size})")


def load_checkpoint(accelerator, folder: Path) -> None:
    accelerator.load_state(str(folder))


def latest_complete_step(output_dir: Path | RunFolder) -> int | None:
    for folder in list_checkpoints(RunFolder.of(output_dir).checkpoints_dir):
        try:
            return validate_checkpoint(folder)["step"]
        except CheckpointError:
            continue
    return None


def resume_from_checkpoint(accelerator, run_args, output_dir: Path | RunFolder, train_state,
                           model_signature: dict) -> int | None:
    """Load the requested checkpoint; returns its step, or None for a fresh start.

    'latest' with no checkpoint yet is a fresh start (the first run of a requeued job). A
    candidate that fails to load is skipped with a warning naming it; if checkpoints exist but
    none loads, the run stops rather than silently starting over on half-loaded weights.
    """
    spec = run_args.resume_from_checkpoint
    if not spec:
        return None
    checkpoints = RunFolder.of(output_dir).checkpoints_dir
    candidates = resume_candidates(output_dir, spec)
    if not candidates:
        if spec == "latest" and not any(checkpoints.glob(f"{STEP_PREFIX}*")):
            logger.info("no checkpoint yet: starting from scratch", main_process_only=True)
            return None
        raise CheckpointError(f"{checkpoints}: no complete checkpoint could be used; remove the "
                              "damaged ones or pass --overwrite_output_dir to start again")
    errors = []
    for folder in candidates:
        manifest = validate_checkpoint(folder)
        check_compatible(manifest, model_signature, accelerator.num_processes, is_deepspeed(accelerator), folder)
        try:
            load_checkpoint(accelerator, folder)
        except Exception as err:  # a corrupt file inside a complete-looking folder
            if spec != "latest":
                raise CheckpointError(f"{folder}: failed to load ({type(err).__name__}: {err})") from err
            logger.warning(f"skipping checkpoint {folder.name}: failed to load ({type(err).__name__}: {err})",
                           main_process_only=True)
            errors.append(folder.name)
            continue
        logger.info(f"resumed from {folder} (step {train_state.step}, epoch {train_state.epoch}, "
                    f"{train_state.batches_in_epoch} batches into it)", main_process_only=True)
        return train_state.step
    raise CheckpointError(f"none of the checkpoints {errors} in {checkpoints} could be loaded; "
                          "remove them or pass --overwrite_output_dir to start again")


def registered_train_state(accelerator, per_device_batch_size: int, lr_scheduler=None) -> TrainState:
    """A fresh TrainState, registered (with the schedule, when training) so that save_state/load_state carry it."""
    train_state = TrainState(world_size=accelerator.num_processes, per_device_batch_size=per_device_batch_size)
    accelerator.register_for_checkpointing(*[x for x in (lr_scheduler, train_state) if x is not None])
    return train_state


def resume_run(accelerator, run_args, output_dir: Path | RunFolder, train_state: TrainState, model_signature: dict,
               per_device_batch_size: int) -> tuple[int | None, int]:
    """(step resumed from or None, micro-batches per process to skip in the resumed epoch). The state then counts
    in this launch's processes and batch size."""
    resume_step = resume_from_checkpoint(accelerator, run_args, output_dir, train_state, model_signature)
    skip_batches = train_state.batches_to_skip(accelerator.num_processes, per_device_batch_size)
    train_state.world_size, train_state.per_device_batch_size = accelerator.num_processes, per_device_batch_size
    return resume_step, skip_batches
