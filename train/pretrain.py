"""Pretrain BERT from scratch: masked language modelling + next sentence prediction.

    accelerate launch train/pretrain.py                                     # bert-base, WikiText-2 (hub)
    accelerate launch train/pretrain.py --config train/configs/smoke.yaml     # offline, embedded sample, CPU minutes
    accelerate launch train/pretrain.py --config train/configs/smoke.yaml --train_file TEXT   # your own text
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml train/pretrain.py --config ...
    python train/pretrain.py --config train/configs/smoke.yaml ...          # one process, no launcher

Run folder: config.yaml, metrics.jsonl, eval_results.json, tensorboard/, checkpoints/step_NNNNNN/,
final/ (save_pretrained). Resume with --resume_from_checkpoint latest.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python train/pretrain.py`: make `train.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.common.config import OptimizationArguments, RunArguments, check_sequence_length, flat_config, parse_config
from train.common.hub_access import preflight
from train.common.task_config import PretrainingDataArguments, PretrainingModelArguments

ARGS = (PretrainingModelArguments, PretrainingDataArguments, OptimizationArguments, RunArguments)


def hub_resources(model_args, data_args, *_) -> list:
    return [(None if data_args.uses_local_files() else data_args.dataset_name, "dataset"),
            (None if data_args.train_tokenizer else data_args.tokenizer_name, "model")]


if __name__ == "__main__":
    preflight(ARGS, __doc__, hub_resources)  # --help and the Hub check answer before the slow imports below

import torch
from accelerate.logging import get_logger

from train.common.checkpoint import registered_train_state, resume_run
from train.common.console import RunClock, StepProgress, fmt, print_summary, show_bars
from train.common.data.loaders import build_dataloader
from train.common.data.masking import IndexedDataset, PretrainingCollator, max_predictions_per_seq
from train.common.distributed import check_replicas_in_sync, distributed_summary, start_run, zero3_init_as_configured
from train.common.errors import run_main
from train.common.evaluation import baseline_notes, evaluate_pretraining, training_baselines
from train.common.hub_access import go_offline_if_unreachable, hub_names
from train.common.loop import IntervalSums, TrainLoop, start_logging, steps_or_fail
from train.common.model_card import model_card
from train.common.models import PretrainingObjective, build_bert_config, build_pretraining_model
from train.common.optim import build_optimizer, build_scheduler
from train.common.preemption import PreemptionFlag
from train.common.run_folder import (
    RunFolder,
    export_final_model,
    push_folder_to_hub,
    write_run_config,
)
from train.common.throughput import IntervalTimer, bert_training_flops, dense_head_training_flops, mfu, peak_tflops_for

logger = get_logger(__name__)
# Summed on the device over a logging interval, reduced across ranks only when logged.
STATS = ("mlm_nll", "masked", "nsp_nll", "sequences", "tokens", "sum_len_sq", "padded_tokens")


@dataclass
class PretrainingInputs:
    """What main() builds before its DataLoaders: the tokenizer and the instance splits ("train", and
    "validation"/"test" when there is held-out text; each a sequence of instances as built by
    train/common/data/pretraining.py). `boundary` (how documents were told apart) goes into config.yaml."""

    tokenizer: Any
    splits: dict[str, Any]
    boundary: str


@dataclass
class Overrides:
    """main()'s seam for callers in the same process (bench/ uses it); None keeps the script's own piece.

    inputs(data_args, seed, run folder, accelerator) -> PretrainingInputs replaces reading and preparing the text;
    build_optimizer(model, opt_args, device) the optimizer; interval_timer the class (IntervalTimer's interface)
    of the clock behind the logged throughput."""

    inputs: Callable[..., PretrainingInputs] | None = None
    build_optimizer: Callable[..., torch.optim.Optimizer] | None = None
    interval_timer: type[IntervalTimer] | None = None


def read_inputs(data_args, seed: int, folder: RunFolder, accelerator) -> PretrainingInputs:
    """The text of --train_file/--dataset_name, the tokenizer (loaded or trained on it) and the instances.
    Preprocessing runs once per machine; the other ranks then read the datasets cache."""
    # `datasets` only here: a caller with its own inputs (the GPU benchmark machine) does not need it.
    from train.common.data.pretraining import build_pretraining_datasets, load_corpus
    from train.common.data.vocabulary import obtain_tokenizer
    with accelerator.local_main_process_first():
        corpus = load_corpus(data_args, seed)
    with accelerator.main_process_first():
        tokenizer = obtain_tokenizer(data_args, corpus, folder, accelerator.is_main_process)
    with accelerator.local_main_process_first():
        splits = build_pretraining_datasets(corpus, tokenizer, data_args, seed)
    return PretrainingInputs(tokenizer, splits, corpus.boundary)


def build_dataloaders(inputs: PretrainingInputs, model_args, data_args, opt_args, run_args):
    """(train collator, train loader, {held-out split: loader}); held-out masks are fixed (--eval_mask_seed)."""
    positions_per_row = (max_predictions_per_seq(data_args.mlm_probability, data_args.max_seq_length)
                         if model_args.sparse_mlm_head else None)

    def collator(seed: int, pack_to_length: int | None = None) -> PretrainingCollator:
        return PretrainingCollator(inputs.tokenizer, data_args.mlm_probability, data_args.whole_word_masking,
                                   seed=seed, mlm_positions_per_row=positions_per_row, omit_full_attention_mask=True,
                                   pack_to_length=pack_to_length)

    def loader(split: str, collate, batch_size: int, train: bool):
        return build_dataloader(IndexedDataset(inputs.splits[split]), collate, batch_size, train,
                                run_args.dataloader_num_workers, run_args.seed)

    # Only training packs: evaluation gathers one row per instance (gather_for_metrics trims the sampler's padding).
    train_collator = collator(run_args.seed, data_args.max_seq_length if data_args.pack_sequences else None)
    eval_collator = collator(data_args.eval_mask_seed)  # its epoch stays 0: the same masks at every evaluation
    return train_collator, loader("train", train_collator, opt_args.per_device_train_batch_size, True), {
        split: loader(split, eval_collator, opt_args.per_device_eval_batch_size, False)
        for split in ("validation", "test") if split in inputs.splits}


def instances_in(batch, device) -> torch.Tensor:
    """The batch's instances (float64, on the device, no host sync): its rows, or, packed, its [CLS] slots."""
    if "cls_positions" in batch:
        return (batch["cls_positions"] >= 0).sum().double()
    return torch.full((), len(batch["input_ids"]), device=device, dtype=torch.float64)  # a fill, not a copy


def batch_stats(batch, sums) -> torch.Tensor:
    ids, mask = batch["input_ids"], batch.get("attention_mask")  # no mask: no padding
    full = ids.new_full(ids.shape[:1], ids.shape[1], dtype=torch.float64)  # a fill on the device, not a copy
    lengths = mask.sum(dim=1).double() if mask is not None else full
    if "sequence_ids" in batch:  # packed: count instances, not rows (absent slots have length 0)
        slots = torch.arange(batch["cls_positions"].shape[1], device=ids.device)
        lengths = (batch["sequence_ids"][:, :, None] == slots).sum(dim=1).double().flatten()
        return torch.stack([sums.mlm_nll.detach().double().sum(), sums.masked_tokens.double().sum(),
                            sums.nsp_nll.detach().double().sum(), (lengths > 0).double().sum(),
                            lengths.sum(), (lengths ** 2).sum(), full.sum()])
    return torch.stack([sums.mlm_nll.detach().double().sum(), sums.masked_tokens.double().sum(),
                        sums.nsp_nll.detach().double().sum(), torch.ones_like(lengths).sum(),
                        lengths.sum(), (lengths ** 2).sum(), full.sum()])


def pending_of(saved: list[float] | None) -> list[float] | None:
    """A checkpoint's unlogged interval sums; a checkpoint written before padded_tokens was summed (one value
    fewer) resumes with that interval counted as unpadded."""
    if saved is not None and len(saved) == len(STATS) - 1:
        return [*saved, saved[STATS.index("tokens")]]
    return saved


def interval_record(accelerator, stats: IntervalSums, seconds: float, bert_config, peak, nsp: bool) -> dict:
    """Reduce the interval's sums over ranks (the only host sync of a logging step) and reset them."""
    values = stats.reduce_and_reset(accelerator)
    mlm_loss = values["mlm_nll"] / max(values["masked"], 1.0)
    nsp_loss = values["nsp_nll"] / max(values["sequences"], 1.0) if nsp else None
    record = {"loss": mlm_loss + (nsp_loss or 0.0), "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
              "samples_per_second": values["sequences"] / seconds, "tokens_per_second": values["tokens"] / seconds,
              "padding_fraction": 1.0 - values["tokens"] / max(values["padded_tokens"], 1.0),
              "_samples": int(values["sequences"]), "_tokens": int(values["tokens"])}
    flops = bert_training_flops(bert_config, values["tokens"], values["sum_len_sq"], values["masked"])
    utilisation = mfu(flops, seconds, accelerator.num_processes, peak)
    if utilisation is not None:
        record["mfu"] = utilisation
        record["mfu_dense_head"] = mfu(dense_head_training_flops(bert_config, values["tokens"], values["sum_len_sq"]),
                                       seconds, accelerator.num_processes, peak)
    return record


def summary_lines(eval_results: dict) -> dict:
    last, test = (eval_results["epochs"] or [{}])[-1], eval_results.get("test") or {}
    return {"validation perplexity": last.get("perplexity"), "  unigram baseline": last.get("unigram_perplexity"),
            "validation nsp_accuracy": last.get("nsp_accuracy"),
            "  majority baseline": last.get("nsp_majority_accuracy"), "test perplexity": test.get("perplexity"),
            "  unigram baseline ": test.get("unigram_perplexity")}


def main(argv=None, overrides: Overrides | None = None) -> int:
    # ---- config ------------------------------------------------------------------------------
    overrides = overrides or Overrides()
    model_args, data_args, opt_args, run_args = parse_config(ARGS, argv, description=__doc__)
    check_sequence_length(data_args.max_seq_length, model_args.max_position_embeddings, "--max_position_embeddings")
    config = flat_config(model_args, data_args, opt_args, run_args)
    clock = RunClock()
    preemption = PreemptionFlag()  # before anything slow: a signal during start-up is kept, not fatal
    go_offline_if_unreachable(hub_names(hub_resources(model_args, data_args)))  # asked once: preflight's answer

    # ---- accelerator, output folder, data ------------------------------------------------------
    accelerator, folder = start_run(run_args, opt_args, config, do_train=True)
    inputs = (overrides.inputs or read_inputs)(data_args, run_args.seed, folder, accelerator)
    tokenizer, splits = inputs.tokenizer, inputs.splits
    baselines = training_baselines(splits["train"], len(tokenizer), tokenizer.all_special_ids)
    train_collator, train_dataloader, eval_dataloaders = build_dataloaders(inputs, model_args, data_args, opt_args,
                                                                           run_args)

    # ---- model, optimizer, schedule ------------------------------------------------------------
    bert_config = build_bert_config(model_args, len(tokenizer), tokenizer)
    with zero3_init_as_configured(accelerator):
        model = PretrainingObjective(build_pretraining_model(bert_config, model_args.attn_implementation),
                                     sparse_mlm_head=model_args.sparse_mlm_head, nsp=data_args.nsp,
                                     fused_encoder=model_args.fused_encoder, packed_batches=data_args.pack_sequences)
    if model_args.torch_compile:
        # The whole objective, in place: parameter names (and checkpoints) stay unchanged. With the
        # collator's position table it is one graph (no data-dependent shapes).
        model.compile(mode=model_args.torch_compile_mode)
    optimizer = (overrides.build_optimizer or build_optimizer)(model, opt_args, accelerator.device)
    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
    eval_dataloaders = {k: accelerator.prepare(v) for k, v in eval_dataloaders.items()}
    gas = opt_args.gradient_accumulation_steps
    steps_per_epoch = steps_or_fail(len(train_dataloader), gas, len(splits["train"]), accelerator.num_processes,
                                    opt_args.per_device_train_batch_size, unit="instances")
    total_steps, num_epochs = opt_args.total_steps(steps_per_epoch), opt_args.num_epochs(steps_per_epoch)
    lr_scheduler = build_scheduler(optimizer, opt_args, total_steps)
    train_state = registered_train_state(accelerator, opt_args.per_device_train_batch_size, lr_scheduler)
    model_signature = {k: getattr(bert_config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                            "num_attention_heads", "intermediate_size")}

    # ---- resume, run folder --------------------------------------------------------------------
    resume_step, skip_batches = resume_run(accelerator, run_args, folder, train_state, model_signature,
                                           opt_args.per_device_train_batch_size)
    train_state.pending_stats = pending_of(train_state.pending_stats)
    distributed = distributed_summary(accelerator, gas)
    if accelerator.is_main_process:
        write_run_config(folder, "pretraining", config, distributed, extra={
            "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
            "dataset_sizes": {k: len(v) for k, v in splits.items()}, "document_boundary": inputs.boundary,
            "vocab_size": len(tokenizer), "resumed_from_step": resume_step})
    metrics, eval_results = start_logging(accelerator, run_args, folder, resume_step, "pretraining")
    bars = show_bars(run_args.disable_progress_bar)
    progress = StepProgress(total_steps, train_state.step, bars, accelerator.is_main_process, logger)
    stats = IntervalSums(STATS, accelerator.device)
    loop = TrainLoop(accelerator, run_args, opt_args, train_state, steps_per_epoch=steps_per_epoch,
                     total_steps=total_steps, num_epochs=num_epochs, skip_batches=skip_batches, preemption=preemption,
                     progress=progress, stats=stats, checkpoints_dir=folder.checkpoints_dir,
                     checkpoint_metadata={"config": config, "model_signature": model_signature,
                                          "distributed": distributed},
                     resume_step=resume_step, reseed=(train_collator,), timer_class=overrides.interval_timer,
                     optimizer=optimizer)

    def run_evaluation(split: str) -> dict:
        result = evaluate_pretraining(model, eval_dataloaders[split], accelerator, len(splits[split]),
                                      data_args.nsp, progress=bars, baselines=baselines)
        record = {"epoch": loop.epoch_position(), "step": train_state.step, **result}
        metrics.log({"split": split, **record}, prefix="eval" if split == "validation" else "test")
        progress.write(f"{split} step {train_state.step}: perplexity {fmt(result['perplexity'])} (unigram "
                       f"{fmt(result['unigram_perplexity'])}) mlm_loss {fmt(result['mlm_loss'])} nsp_accuracy "
                       f"{fmt(result['nsp_accuracy'])} (majority {fmt(result['nsp_majority_accuracy'])})")
        record.pop("num_examples")
        if split == "validation":
            eval_results["epochs"].append(record)
            if accelerator.is_main_process:
                folder.write_eval_results(eval_results)
        return record

    def evaluated_now() -> bool:
        return any(e["step"] == train_state.step for e in eval_results["epochs"])

    peak = peak_tflops_for(distributed["device_name"], run_args.peak_tflops)
    logger.info(f"{len(splits['train'])} training instances, {steps_per_epoch} steps/epoch, {total_steps} steps, "
                f"{accelerator.num_processes} process(es), mixed precision {accelerator.mixed_precision}",
                main_process_only=True)

    # ---- the loop ----------------------------------------------------------------------------
    model.train()
    for epoch in loop.epochs():
        for window in loop.windows(train_dataloader, epoch):
            # MLM is normalised by the masked tokens of the whole window on all ranks, NSP by its
            # sequences, so each optimizer step follows one token-weighted mean (no host sync: a device sum
            # and a fill with the host's count).
            window_counts = accelerator.reduce(torch.stack([
                sum((b["labels"] != -100).sum() for b in window).double(),
                sum(instances_in(b, accelerator.device) for b in window)]), reduction="sum")
            for batch in window:
                with accelerator.accumulate(model):
                    sums = model(**batch)
                    loss = sums.mlm_nll.sum() / window_counts[0]
                    if data_args.nsp:
                        loss = loss + sums.nsp_nll.sum() / window_counts[1]
                    accelerator.backward(loop.watch(loss) * loop.loss_scale)
                    if accelerator.sync_gradients and loop.clip_and_agree(model):
                        optimizer.step()
                    optimizer.zero_grad()
                stats.add(batch_stats(batch, sums))
            loop.step_done(lr_scheduler)
            if loop.should_log():
                record = interval_record(accelerator, stats, loop.timer.seconds_and_reset(), bert_config, peak,
                                         data_args.nsp)
                metrics.log(loop.interval_record(record, lr_scheduler.get_last_lr()[0]), prefix="train")
                progress.log(train_state.step, {"loss": record["loss"], "mlm": record["mlm_loss"],
                                                "nsp": record["nsp_loss"], "lr": record["lr"],
                                                "tokens/s": round(record["tokens_per_second"])})
            if loop.should_evaluate() and "validation" in eval_dataloaders:
                with loop.paused():
                    run_evaluation("validation")
            loop.save_if_due()
        if loop.stop:
            break
        with loop.epoch_end():  # the end of an epoch (or of the step budget): evaluate, checkpoint
            if "validation" in eval_dataloaders and not evaluated_now():
                run_evaluation("validation")
            if loop.should_save_at_epoch_end():
                loop.save()
    if loop.stop:  # preempted or non-finite: the checkpoint is saved
        return loop.finish_stopped(folder)

    # ---- final evaluation and export ---------------------------------------------------------
    progress.close()
    if "test" in eval_dataloaders:
        eval_results["test"] = run_evaluation("test")
    if accelerator.is_main_process:
        folder.write_eval_results(eval_results)
    check_replicas_in_sync(accelerator, model, folder)
    export_final_model(accelerator, model, accelerator.unwrap_model(model).model, tokenizer, folder.final_dir,
                       model_card(config, eval_results, train_state, distributed))
    accelerator.end_training()
    url = None
    if run_args.push_to_hub and accelerator.is_main_process:
        url = push_folder_to_hub(folder.final_dir, run_args.hub_model_id, run_args.hub_private,
                                 f"BERT pretraining, step {train_state.step}")
    print_summary("pretraining", clock, {"steps": train_state.step, **summary_lines(eval_results)},
                  {"final model": folder.final_dir, "metrics": folder.metrics_file, "pushed to": url},
                  folder, accelerator.is_main_process,
                  notes=baseline_notes(eval_results.get("test") or (eval_results["epochs"] or [{}])[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
