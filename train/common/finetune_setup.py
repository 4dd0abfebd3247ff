"""The fine-tuning scripts' set-up between model loading and the loop, written once: prepare the model with the
training loader, optimizer and schedule (or alone for --do_train false), the registered train state, resume."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import registered_train_state, resume_run
from .data.loaders import build_train_dataloader, keep_length_grouping
from .distributed import is_deepspeed
from .loop import FinetuneSums, TrainLoop, steps_or_fail
from .models import parameter_block, require_trained_head
from .optim import build_optimizer, build_scheduler
from .run_folder import RunFolder, export_final_model, push_folder_to_hub


@dataclass
class Prepared:
    """What accelerator.prepare returned, with the schedule's sizes (all 0 when only evaluating)."""

    model: Any
    optimizer: Any
    train_dataloader: Any
    eval_loaders: dict[str, Any]
    lr_scheduler: Any
    train_state: Any
    steps_per_epoch: int
    total_steps: int
    num_epochs: int
    train_size: int


def prepare_finetuning(accelerator, model, train_features: list | None, collator, eval_loaders: dict, opt_args,
                       run_args, data_args, load_report: dict, head_prefix: str) -> Prepared:
    """With `train_features`: the training loader (length-grouped when asked), AdamW and the schedule. Without
    (--do_train false): the model must have a trained `head_prefix` head; DeepSpeed then takes its batch size from
    the evaluation loaders prepared with the model."""
    if train_features is None:
        require_trained_head(load_report, head_prefix)
        model, *loaders = accelerator.prepare(model, *eval_loaders.values())
        return Prepared(model, None, None, dict(zip(eval_loaders, loaders, strict=True)), None,
                        registered_train_state(accelerator, opt_args.per_device_train_batch_size), 0, 0, 0, 0)
    train_dataloader = build_train_dataloader(train_features, collator, opt_args, run_args, data_args,
                                              accelerator.num_processes)
    optimizer = build_optimizer(model, opt_args, accelerator.device)
    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
    steps_per_epoch = steps_or_fail(len(train_dataloader), opt_args.gradient_accumulation_steps, len(train_features),
                                    accelerator.num_processes, opt_args.per_device_train_batch_size)
    total_steps = opt_args.total_steps(steps_per_epoch)
    lr_scheduler = build_scheduler(optimizer, opt_args, total_steps)
    eval_loaders = {k: accelerator.prepare(v) for k, v in eval_loaders.items()}
    return Prepared(model, optimizer, train_dataloader, eval_loaders, lr_scheduler,
                    registered_train_state(accelerator, opt_args.per_device_train_batch_size, lr_scheduler),
                    steps_per_epoch, total_steps, opt_args.num_epochs(steps_per_epoch), len(train_features))


def model_signature(model_args, model, **extra) -> dict:
    """What a checkpoint must match to be resumed into this model."""
    config = model.config
    return {"model_name_or_path": model_args.model_name_or_path, **extra,
            **{k: getattr(config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers")}}


def resume_finetuning(accelerator, run_args, opt_args, output_dir: Path | RunFolder, prepared: Prepared,
                      signature: dict) -> tuple[int | None, int]:
    """resume_run, keeping a length-grouped order's global batch from the first launch."""
    resumed = resume_run(accelerator, run_args, output_dir, prepared.train_state, signature,
                         opt_args.per_device_train_batch_size)
    if prepared.train_dataloader is not None:
        keep_length_grouping(prepared.train_dataloader, prepared.train_state)
    return resumed


def finetune_loop(accelerator, prepared: Prepared, run_args, opt_args, preemption, resume_step: int | None,
                  skip_batches: int, output_dir: Path | RunFolder, checkpoint_metadata: dict, progress) -> TrainLoop:
    """The TrainLoop of a fine-tuning run, with its interval sums (loss, examples, tokens, padding)."""
    return TrainLoop(accelerator, run_args, opt_args, prepared.train_state, steps_per_epoch=prepared.steps_per_epoch,
                     total_steps=prepared.total_steps, num_epochs=prepared.num_epochs, skip_batches=skip_batches,
                     preemption=preemption, progress=progress, stats=FinetuneSums(accelerator.device),
                     checkpoints_dir=RunFolder.of(output_dir).checkpoints_dir, checkpoint_metadata=checkpoint_metadata,
                     resume_step=resume_step, optimizer=prepared.optimizer)


def finish_finetuning(accelerator, model, tokenizer, output_dir: Path | RunFolder, eval_results: dict, model_args,
                      run_args, do_train: bool, model_card: Callable[[], str], push_message: str) -> str | None:
    """Export final/ (when trained), add the parameter counts and diffs against the starting checkpoint, mark the
    results complete, push (--push_to_hub). Returns the pushed URL or None."""
    folder = RunFolder.of(output_dir)
    if do_train:
        export_final_model(accelerator, model, accelerator.unwrap_model(model), tokenizer, folder.final_dir,
                           model_card())
    accelerator.end_training()
    if accelerator.is_main_process:
        after = folder.final_dir if is_deepspeed(accelerator) else accelerator.unwrap_model(model)
        eval_results["params"] = parameter_block(model_args.model_name_or_path, after, model_args.trust_remote_code)
        eval_results["completed"] = True
        folder.write_eval_results(eval_results)
    if run_args.push_to_hub and do_train and accelerator.is_main_process:
        return push_folder_to_hub(folder.final_dir, run_args.hub_model_id, run_args.hub_private, push_message)
    return None
