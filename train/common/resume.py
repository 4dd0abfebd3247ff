"""--resume_from_checkpoint: find, check and load a checkpoint into the prepared objects."""

from __future__ import annotations

from pathlib import Path

from accelerate.logging import get_logger

from .checkpointing import CheckpointError, check_compatible, load_checkpoint, resume_candidates, validate_checkpoint
from .distributed import is_deepspeed

logger = get_logger(__name__)


def resume_from_checkpoint(accelerator, run_args, output_dir: Path, train_state,
                           model_signature: dict) -> int | None:
    """Load the requested checkpoint; returns its step, or None for a fresh start.

    'latest' with no checkpoint yet is a fresh start (the first run of a requeued job). A
    candidate that fails to load is skipped with a warning naming it; if checkpoints exist but
    none loads, the run stops rather than silently starting over on half-loaded weights.
    """
    spec = run_args.resume_from_checkpoint
    if not spec:
        return None
    candidates = resume_candidates(output_dir, spec)
    if not candidates:
        if spec == "latest" and not any((output_dir / "checkpoints").glob("step_*")):
            logger.info("no checkpoint yet: starting from scratch", main_process_only=True)
            return None
        raise CheckpointError(f"{output_dir / 'checkpoints'}: no complete checkpoint could be used; remove the "
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
    raise CheckpointError(f"none of the checkpoints {errors} in {output_dir / 'checkpoints'} could be loaded; "
                          "remove them or pass --overwrite_output_dir to start again")
