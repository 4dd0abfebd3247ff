from __future__ import annotations

from pathlib import Path

import torch
from accelerate.logging import get_logger

from .data.loaders import FinetuneDataError
from .preemption import write_marker
from .run_folder import (
    MetricsLogger,
    load_eval_results,
)

logger = get_logger(__name__)


class IntervalStats:
    """Sums over a logging interval, on the device: loss numerator and denominator, examples, non-padding tokens,
    padded tokens. Reduced across ranks only when logged; `pending` travels with checkpoints so that a resumed
    run logs what the uninterrupted run logged."""

    NAMES = ("loss_sum", "loss_weight", "samples", "tokens", "padded_tokens")

    def __init__(self, device):
        self.sums = torch.zeros(len(self.NAMES), device=device, dtype=torch.float64)

    def add(self, weighted_nll: torch.Tensor, weights: torch.Tensor, batch: dict) -> None:
        mask = batch["attention_mask"]
        self.sums += torch.stack([weighted_nll.detach().double().sum(), weights.double().sum(),
                                  torch.tensor(float(mask.shape[0]), device=mask.device, dtype=torch.float64),
                                  mask.sum().double(), torch.tensor(float(mask.numel()), device=mask.device,
                                                                    dtype=torch.float64)])

    def pending(self, accelerator) -> list[float]:
        return accelerator.reduce(self.sums.clone(), reduction="sum").tolist()

    def restore(self, values: list[float]) -> None:
        self.sums += torch.tensor(values, device=self.sums.device, dtype=self.sums.dtype)

    def record(self, accelerator, seconds: float) -> dict:
        values = dict(zip(self.NAMES, accelerator.reduce(self.sums, reduction="sum").tolist()))
        self.sums.zero_()
        return {"loss": values["loss_sum"] / max(values["loss_weight"], 1e-12),
                "samples_per_second": values["samples"] / seconds, "tokens_per_second": values["tokens"] / seconds,
                "padding_fraction": 1.0 - values["tokens"] / max(values["padded_tokens"], 1.0),
                "_samples": int(values["samples"]), "_tokens": int(values["tokens"])}

    def log(self, accelerator, metrics, seconds: float, train_state, lr: float, grad_norm, batches_per_epoch: int,
            progress, unit: str) -> None:
        """One metrics.jsonl / TensorBoard line for the interval that ends at this optimizer step."""
        record = self.record(accelerator, seconds)
        train_state.samples_seen += record.pop("_samples")
        train_state.tokens_seen += record.pop("_tokens")
        record.update(step=train_state.step, lr=lr, grad_norm=float(grad_norm) if grad_norm is not None else None,
                      epoch=rounded_epoch(train_state.epoch, train_state.batches_in_epoch, batches_per_epoch))
        metrics.log(record, prefix="train")
        progress.log(train_state.step, {"loss": record["loss"], "lr": lr,
                                        f"{unit}/s": round(record["samples_per_second"], 1)})


def start_logging(accelerator, run_args, output_dir: Path, resume_step: int | None, task: str):
    """(MetricsLogger, eval_results so far): on resume both keep only what the resumed step had written."""
    metrics = MetricsLogger(accelerator, output_dir, resume_step)
    eval_results = load_eval_results(output_dir, resume_step, task)
    eval_results.pop("test", None)
    if run_args.report_to == "tensorboard":
        purge = {"tensorboard": {"purge_step": resume_step + 1}} if resume_step is not None else None
        accelerator.init_trackers("tensorboard", init_kwargs=purge)
    return metrics, eval_results


def stop_early(accelerator, stop: str, step: int, preemption, marker_dir: Path) -> int:
    """After the checkpoint of a preempted (exit 0, PREEMPTED marker for the SLURM job to requeue) or non-finite
    (exit 3) stop."""
    accelerator.end_training()
    if stop == "preempted":
        if accelerator.is_main_process:
            write_marker(marker_dir, step, preemption.signal_name())
        logger.info(f"preempted ({preemption.signal_name()}): checkpoint at step {step} saved; rerun with "
                    "--resume_from_checkpoint latest to continue", main_process_only=True)
        return 0
    logger.error(f"stopped at step {step}: non-finite loss or gradient (--nan_policy stop). The last checkpoint is "
                 "saved; lower the learning rate or use bf16 instead of fp16.", main_process_only=True)
    return 3


def steps_or_fail(num_batches: int, gas: int, examples: int, num_processes: int, batch_size: int) -> int:
    steps = num_batches // gas
    if steps == 0:
        raise FinetuneDataError(f"{examples} training examples make no full optimizer step of {num_processes} x "
                                 f"{batch_size} x {gas}; lower the batch size or add data")
    return steps


def rounded_epoch(epoch: int, batches_in_epoch: int, batches_per_epoch: int) -> float:
    return round(epoch + batches_in_epoch / max(batches_per_epoch, 1), 4)
