"""The plumbing around each script's optimizer-step block, written once.

A script's loop reads, in every script:

    for epoch in loop.epochs():
        for window in loop.windows(train_dataloader, epoch):       # resume skip, accumulation, step budget, seeds
            ...task loss over the window...
            for batch in window:
                with accelerator.accumulate(model):
                    loss = ...
                    accelerator.backward(loop.watch(loss) * loop.loss_scale)
                    if accelerator.sync_gradients and loop.clip_and_agree(model):
                        optimizer.step()
                    optimizer.zero_grad()
            loop.step_done(lr_scheduler)                                # counters, progress, stop flags
            if loop.should_log(): ...
            loop.save_if_due()                                          # not timed, as evaluation is not
        if loop.stop:
            break
        with loop.epoch_end():                                         # bookkeeping; not timed
            ...the task's evaluation and early-stopping policy...
            if loop.should_save_at_epoch_end(): loop.save()
    if loop.stop in ("preempted", "nonfinite"):
        return loop.finish_stopped(output_dir)

The step block (accumulate/backward/clip/step/zero_grad) and the task's evaluation stay in the script, where a
reader looks for them. What lives here: which batches each epoch gives after a resume, the per-step dropout seed,
the non-finite/preemption agreement across ranks (without a host sync per step where the update can be dropped on
the device; see TrainLoop.clip_and_agree), the log/evaluate/save triggers, the end-of-epoch bookkeeping,
checkpoints with the not-yet-logged interval, and the early stop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate.logging import get_logger

from .checkpoint import save_checkpoint
from .data.loaders import TrainingDataError, accumulation_windows, step_seed
from .distributed import agree_on_flags, is_deepspeed, nonfinite_flag
from .preemption import write_marker
from .run_folder import MetricsLogger, RunFolder, load_eval_results
from .throughput import IntervalTimer

logger = get_logger(__name__)
# Where the ranks' agreement on non-finite values and preemption waits (the default), it happens at every logging,
# evaluation and checkpoint step, at each epoch's end, and at least this often: a preemption signal is acted on
# within this many optimizer steps (a single process acts on it at the next one).
MAX_STEPS_BETWEEN_AGREEMENTS = 25


class IntervalSums:
    """Named float64 sums over one logging interval, kept on the device (no host sync per step) and reduced
    across ranks only when logged. `pending` travels with checkpoints, so that a resumed run logs the numbers
    an uninterrupted run logs."""

    def __init__(self, names: Sequence[str], device):
        self.names = tuple(names)
        self.sums = torch.zeros(len(self.names), device=device, dtype=torch.float64)

    def add(self, values: torch.Tensor) -> None:
        self.sums += values

    def pending(self, accelerator) -> list[float]:
        return accelerator.reduce(self.sums.clone(), reduction="sum").tolist()

    def restore(self, values: list[float]) -> None:
        self.sums += torch.tensor(values, device=self.sums.device, dtype=self.sums.dtype)

    def reduce_and_reset(self, accelerator) -> dict[str, float]:
        values = dict(zip(self.names, accelerator.reduce(self.sums, reduction="sum").tolist(), strict=True))
        self.sums.zero_()
        return values


class FinetuneSums(IntervalSums):
    """The fine-tuning scripts' interval: (weighted) loss, examples, non-padding and padded tokens."""

    NAMES = ("loss_sum", "loss_weight", "samples", "tokens", "padded_tokens")

    def __init__(self, device):
        super().__init__(self.NAMES, device)

    def add_batch(self, weighted_nll: torch.Tensor, weights: torch.Tensor, batch: dict) -> None:
        mask = batch["attention_mask"]

        def counted(n: int) -> torch.Tensor:  # known on the host: a fill on the device, not a (syncing) copy
            return torch.full((), n, dtype=torch.float64, device=mask.device)
        self.add(torch.stack([weighted_nll.detach().double().sum(), weights.double().sum(), counted(mask.shape[0]),
                              mask.sum().double(), counted(mask.numel())]))

    def record(self, accelerator, seconds: float) -> dict:
        values = self.reduce_and_reset(accelerator)
        return {"loss": values["loss_sum"] / max(values["loss_weight"], 1e-12),
                "samples_per_second": values["samples"] / seconds, "tokens_per_second": values["tokens"] / seconds,
                "padding_fraction": 1.0 - values["tokens"] / max(values["padded_tokens"], 1.0),
                "_samples": int(values["samples"]), "_tokens": int(values["tokens"])}

    def log(self, loop: TrainLoop, metrics, lr: float, unit: str) -> None:
        """The interval ending at this optimizer step: one metrics.jsonl/TensorBoard record and a progress line."""
        record = loop.interval_record(self.record(loop.accelerator, loop.timer.seconds_and_reset()), lr)
        metrics.log(record, prefix="train")
        loop.progress.log(loop.train_state.step, {"loss": record["loss"], "lr": lr,
                                                  f"{unit}/s": round(record["samples_per_second"], 1)})


def steps_or_fail(num_batches: int, gas: int, examples: int, num_processes: int, batch_size: int,
                  unit: str = "examples") -> int:
    """Optimizer steps per epoch; none is an error that says what to change."""
    steps = num_batches // gas
    if steps == 0:
        raise TrainingDataError(f"{examples} training {unit} make no full optimizer step of {num_processes} x "
                                f"{batch_size} x {gas}; lower the batch size or add data")
    return steps


def rounded_epoch(epoch: int, batches_in_epoch: int, batches_per_epoch: int) -> float:
    return round(epoch + batches_in_epoch / max(batches_per_epoch, 1), 4)


def start_logging(accelerator, run_args, output_dir: Path | RunFolder, resume_step: int | None, task: str):
    """(MetricsLogger, eval_results so far): on resume both keep only what the resumed step had written."""
    metrics = MetricsLogger(accelerator, output_dir, resume_step)
    eval_results = load_eval_results(output_dir, resume_step, task)
    eval_results.pop("test", None)
    if run_args.report_to == "tensorboard":
        purge = {"tensorboard": {"purge_step": resume_step + 1}} if resume_step is not None else None
        # the project name is the folder under accelerate's logging_dir (the run folder) that holds the events
        accelerator.init_trackers(RunFolder.TENSORBOARD, init_kwargs=purge)
    return metrics, eval_results


class TrainLoop:
    """Counters, triggers and stop flags of one training run (see the module docstring for the loop it serves).

    `train_state` is the registered (checkpointed) TrainState; `stats` the interval sums the script adds to;
    `checkpoint_metadata` goes into each checkpoint's manifest. `timer_class` may be replaced by a caller
    measuring time its own way (the benchmarks)."""

    def __init__(self, accelerator, run_args, opt_args, train_state, *, steps_per_epoch: int, total_steps: int,
                 num_epochs: int, skip_batches: int, preemption, progress, stats: IntervalSums,
                 checkpoints_dir: Path, checkpoint_metadata: dict[str, Any], resume_step: int | None,
                 reseed: Sequence = (), timer_class: type[IntervalTimer] | None = None, optimizer=None):
        self.accelerator, self.run_args, self.train_state = accelerator, run_args, train_state
        self.gas, self.max_grad_norm = opt_args.gradient_accumulation_steps, opt_args.max_grad_norm
        self.steps_per_epoch, self.total_steps, self.num_epochs = steps_per_epoch, total_steps, num_epochs
        self.batches_per_epoch = steps_per_epoch * self.gas
        # The scripts divide each window's summed loss by its count over ALL ranks (one weighted mean per update);
        # DDP/DeepSpeed then average gradients over ranks and accelerate divides each micro-batch's loss by the
        # accumulation steps. Multiplying by both undoes that second normalisation.
        self.loss_scale = accelerator.num_processes * self.gas
        self.skip_batches, self.start_epoch = skip_batches, train_state.epoch
        self.preemption, self.progress, self.stats = preemption, progress, stats
        self.checkpoints_dir, self.checkpoint_metadata = checkpoints_dir, checkpoint_metadata
        self.reseed = tuple(reseed)  # objects with set_epoch (the pretraining collator's masks)
        self.timer = (timer_class or IntervalTimer)()  # started now: the first interval begins with the loop
        self.stop: str | None = None  # "preempted", "nonfinite" or "early_stopping"
        self.grad_norm = None
        self.last_checkpoint_step = resume_step
        self._local_nonfinite = torch.zeros((), device=accelerator.device)
        self._nonfinite = self._preempted = self._update_allowed = False
        self._device_skip = self._optimizer_dropping_on_device(optimizer)
        # The deferred agreement's state: each step's flag (device), the sticky "drop updates from here" flag the
        # fused optimizer reads, the host-side preemption flag, and the first non-finite step once agreed.
        self._unagreed: list[torch.Tensor] = []
        self._dropping = torch.zeros((), device=accelerator.device)
        self._preempted_locally = 0.0
        self.first_nonfinite_step: int | None = None
        self._window_size = 0
        if resume_step is not None and accelerator.is_main_process and train_state.pending_stats is not None:
            stats.restore(train_state.pending_stats)

    # ---- iteration -----------------------------------------------------------------------------------
    def epochs(self) -> Iterator[int]:
        for epoch in range(self.start_epoch, self.num_epochs):
            if self.stop or self.train_state.step >= self.total_steps:
                return
            self.train_state.epoch = epoch
            yield epoch

    def windows(self, dataloader, epoch: int) -> Iterator[list]:
        """The optimizer steps' micro-batch windows of this epoch: the resumed epoch skips what it consumed
        (only that epoch is part-done); each step gets its own dropout seed; stops at the step budget or a stop."""
        dataloader.set_epoch(epoch)
        for reseeded in self.reseed:
            reseeded.set_epoch(epoch)
        skip = self.skip_batches if epoch == self.start_epoch else 0
        batches = self.accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        for window in accumulation_windows(batches, self.gas):
            if self.train_state.step >= self.total_steps or self.stop:
                return
            torch.manual_seed(step_seed(self.run_args.seed, self.train_state.step, self.accelerator.process_index))
            self._local_nonfinite.zero_()
            self._nonfinite = self._preempted = False
            self._update_allowed, self._window_size = True, len(window)
            yield window
            if self.stop:
                return

    # ---- inside the step block -----------------------------------------------------------------------
    def watch(self, loss: torch.Tensor) -> torch.Tensor:
        """Note (on the device) whether this micro-batch's loss is finite; returns the loss."""
        torch.maximum(self._local_nonfinite, (~torch.isfinite(loss.detach())).float(), out=self._local_nonfinite)
        return loss

    def clip_and_agree(self, model) -> bool:
        """At the window's last micro-batch: clip to --max_grad_norm, then all ranks agree on non-finite values
        and preemption. True when the optimizer may apply this update.

        By default the agreement waits (see _agreement_due) and a non-finite update is dropped on the device: the
        fused AdamW skips its update (parameters and moments unchanged) when its `found_inf` is 1, and that flag
        stays up until the agreement stops the run, so the model stays as it was before the first bad step. The
        agreement happens here, every step, where that cannot work: --nan_policy skip (the schedule follows the
        applied updates), DeepSpeed (its update runs inside backward), fp16 (the GradScaler owns found_inf),
        an optimizer without device-side skipping, or no clipping (the gradient's norm is what every rank sees
        alike)."""
        if self.max_grad_norm > 0:
            self.grad_norm = self.accelerator.clip_grad_norm_(model.parameters(), self.max_grad_norm)
        flag = nonfinite_flag(self._local_nonfinite, self.grad_norm)
        if self._device_skip is None:
            nonfinite, self._preempted = agree_on_flags(self.accelerator, flag, self.preemption.local_flag)
            self._nonfinite = nonfinite[0]
            # DeepSpeed applies its update inside backward(): it cannot be skipped, only stopped after.
            skip = self._nonfinite and self.run_args.nan_policy == "skip" and not is_deepspeed(self.accelerator)
            self._update_allowed = not skip
            return self._update_allowed
        self._unagreed.append(flag)
        # Ranks must drop the same updates: the loss flag is one rank's own, the gradient (reduced) is everyone's.
        alike = flag if self.accelerator.num_processes == 1 else nonfinite_flag(self._dropping, self.grad_norm)
        torch.maximum(self._dropping, alike, out=self._dropping)
        self._device_skip.found_inf = self._dropping
        return True

    def _optimizer_dropping_on_device(self, optimizer):
        """The torch optimizer that drops a non-finite update on the device, where the agreement may wait."""
        inner = getattr(optimizer, "optimizer", optimizer)  # under accelerate's AcceleratedOptimizer
        waits = (optimizer is not None and self.run_args.nan_policy == "stop" and self.max_grad_norm > 0
                 and not is_deepspeed(self.accelerator) and self.accelerator.mixed_precision != "fp16"
                 and getattr(inner, "_step_supports_amp_scaling", False))  # fused Adam/AdamW: reads found_inf
        return inner if waits else None

    def _agreement_due(self) -> bool:
        if self.accelerator.num_processes == 1 and self._preempted_locally:
            return True  # nobody to agree with: the next step acts on it
        state = self.train_state
        return (self.should_log() or self.should_evaluate() or self.should_save()
                or state.batches_in_epoch >= self.batches_per_epoch
                or len(self._unagreed) >= MAX_STEPS_BETWEEN_AGREEMENTS)

    def _agree(self) -> None:
        """The deferred agreement: which of the steps since the last one was non-finite on any rank, preemption."""
        nonfinite, self._preempted = agree_on_flags(self.accelerator, torch.stack(self._unagreed),
                                                    self._preempted_locally)
        if any(nonfinite):
            self._nonfinite = True
            self.first_nonfinite_step = self.train_state.step - len(nonfinite) + 1 + nonfinite.index(True)
        self._unagreed.clear()

    def step_done(self, lr_scheduler) -> None:
        """After the window: the schedule advances with applied updates only; counters, progress, stop flags."""
        if self._update_allowed and not self.accelerator.optimizer_step_was_skipped:
            lr_scheduler.step()
        state = self.train_state
        state.step += 1
        state.batches_in_epoch += self._window_size
        self.progress.update()
        if self._device_skip is not None:
            self._preempted_locally = max(self._preempted_locally, self.preemption.local_flag)
            if self._unagreed and self._agreement_due():
                self._agree()
        if self._nonfinite:
            self._report_nonfinite()
        if self._preempted:
            self.stop = "preempted"

    def _report_nonfinite(self) -> None:
        step, first = self.train_state.step, self.first_nonfinite_step
        if self._device_skip is not None:
            dropped = "" if first == step else f"; the updates of steps {first}-{step} were dropped"
            logger.warning(f"step {first}: non-finite loss or gradient (stopping{dropped})", main_process_only=True)
            self.stop = "nonfinite"
            return
        skipped = not self._update_allowed
        logger.warning(f"step {step}: non-finite loss or gradient ({'update skipped' if skipped else 'stopping'})",
                       main_process_only=True)
        if not skipped:
            self.stop = "nonfinite"

    # ---- triggers --------------------------------------------------------------------------------------
    def should_log(self) -> bool:
        step = self.train_state.step
        return step % self.run_args.logging_steps == 0 or step == self.total_steps or bool(self.stop)

    def should_evaluate(self) -> bool:
        """Mid-epoch evaluation every --eval_steps (each epoch's end is evaluated by the script's policy)."""
        return bool(self.run_args.eval_steps) and self.train_state.step % self.run_args.eval_steps == 0

    def should_save(self) -> bool:
        every = self.run_args.checkpoint_every_steps()
        return bool(every and self.train_state.step % every == 0) or bool(self.stop)

    def save_if_due(self) -> None:
        """The mid-epoch checkpoint: every --checkpointing_steps N, and at a stop (preemption, non-finite)."""
        if self.should_save():
            with self.paused():
                self.save()

    def should_save_at_epoch_end(self) -> bool:
        return self.run_args.checkpointing_steps == "epoch" and self.last_checkpoint_step != self.train_state.step

    @contextmanager
    def paused(self):
        """Evaluation and checkpoints are not training time (throughput and MFU exclude them)."""
        self.timer.pause()
        try:
            yield
        finally:
            self.timer.resume()

    @contextmanager
    def epoch_end(self):
        """The end of an epoch (or of the step budget), not timed: a complete epoch (or one cut by the step budget
        before its end) moves the state to the next one; the script then evaluates and saves inside."""
        state = self.train_state
        if state.step < self.total_steps or state.batches_in_epoch >= self.batches_per_epoch:
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
        with self.paused():
            yield

    # ---- bookkeeping -----------------------------------------------------------------------------------

    def epoch_position(self) -> float:
        """Epochs done, as logged: the epoch in progress plus its consumed share."""
        state = self.train_state
        return rounded_epoch(state.epoch, state.batches_in_epoch, self.batches_per_epoch)

    def epoch_label(self) -> float:
        """The epoch an end-of-epoch record is for: a whole number after a full epoch, else the position."""
        state = self.train_state
        return float(state.epoch) if not state.batches_in_epoch else self.epoch_position()

    def interval_record(self, record: dict, lr: float) -> dict:
        """Completes an interval's record (counters move to the train state) for metrics.jsonl."""
        state = self.train_state
        state.samples_seen += record.pop("_samples")
        state.tokens_seen += record.pop("_tokens")
        record.update(step=state.step, lr=lr, epoch=self.epoch_position(),
                      grad_norm=float(self.grad_norm) if self.grad_norm is not None else None)
        return record

    def save(self, folder: Path | None = None, keep: int | None = None) -> None:
        """A checkpoint; the not-yet-logged interval travels with it (reduced over ranks)."""
        self.train_state.pending_stats = self.stats.pending(self.accelerator)
        save_checkpoint(self.accelerator, folder or self.checkpoints_dir, self.train_state,
                        self.checkpoint_metadata, self.run_args.keep_last_n if keep is None else keep)
        if folder is None:
            self.last_checkpoint_step = self.train_state.step

    def finish_stopped(self, marker_dir: Path | RunFolder) -> int:
        """After the checkpoint of a preempted stop (exit 0, PREEMPTED marker for a SLURM job to requeue) or a
        non-finite one (exit 3)."""
        self.progress.close()
        self.accelerator.end_training()
        step, preemption = self.train_state.step, self.preemption
        if self.stop == "preempted":
            if self.accelerator.is_main_process:
                write_marker(marker_dir, step, preemption.signal_name())
            logger.info(f"preempted ({preemption.signal_name()}): checkpoint at step {step} saved; rerun with "
                        "--resume_from_checkpoint latest to continue", main_process_only=True)
            return 0
        logger.error(f"stopped at step {step}: non-finite loss or gradient (--nan_policy stop). The last checkpoint "
                     "is saved; lower the learning rate or use bf16 instead of fp16.", main_process_only=True)
        return 3
