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
from pathlib import Path

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

from train.common.checkpoint import TrainState, resume_from_checkpoint, save_checkpoint
from train.common.console import RunClock, StepProgress, fmt, print_summary, show_bars
from train.common.data.loaders import accumulation_windows, build_dataloader, step_seed
from train.common.data.masking import IndexedDataset, PretrainingCollator, max_predictions_per_seq
from train.common.data.pretraining import build_pretraining_datasets, load_corpus
from train.common.data.vocabulary import obtain_tokenizer
from train.common.distributed import (
    agree_on_flags,
    check_replicas_in_sync,
    distributed_summary,
    is_deepspeed,
    start_run,
    zero3_init_as_configured,
)
from train.common.errors import run_main
from train.common.evaluation import baseline_notes, evaluate_pretraining, training_baselines
from train.common.hub_access import go_offline_if_unreachable, hub_names
from train.common.model_card import model_card
from train.common.models import PretrainingObjective, build_bert_config, build_pretraining_model
from train.common.optim import build_optimizer, build_scheduler
from train.common.preemption import PreemptionFlag, write_marker
from train.common.run_folder import (
    MetricsLogger,
    export_final_model,
    load_eval_results,
    push_folder_to_hub,
    write_json_atomic,
    write_run_config,
)
from train.common.throughput import IntervalTimer, bert_training_flops, mfu, peak_tflops_for

logger = get_logger(__name__)
# Summed on the device over a logging interval, reduced across ranks only when logged.
STATS = ("mlm_nll", "masked", "nsp_nll", "sequences", "tokens", "sum_len_sq")


def batch_stats(batch, sums) -> torch.Tensor:
    lengths = batch["attention_mask"].sum(dim=1).double()
    return torch.stack([sums.mlm_nll.detach().double().sum(), sums.masked_tokens.double().sum(),
                        sums.nsp_nll.detach().double().sum(), torch.ones_like(lengths).sum(),
                        lengths.sum(), (lengths ** 2).sum()])


def interval_record(accelerator, stats: torch.Tensor, seconds: float, bert_config, peak, nsp: bool) -> dict:
    """Reduce the interval's sums over ranks (the only host sync of a logging step) and reset them."""
    values = dict(zip(STATS, accelerator.reduce(stats, reduction="sum").tolist()))
    stats.zero_()
    mlm_loss = values["mlm_nll"] / max(values["masked"], 1.0)
    nsp_loss = values["nsp_nll"] / max(values["sequences"], 1.0) if nsp else None
    record = {"loss": mlm_loss + (nsp_loss or 0.0), "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
              "samples_per_second": values["sequences"] / seconds, "tokens_per_second": values["tokens"] / seconds,
              "_sequences": int(values["sequences"]), "_tokens": int(values["tokens"])}
    flops = bert_training_flops(bert_config, values["tokens"], values["sum_len_sq"], values["masked"])
    utilisation = mfu(flops, seconds, accelerator.num_processes, peak)
    if utilisation is not None:
        record["mfu"] = utilisation
    return record


def main(argv=None) -> int:
    # ---- config ------------------------------------------------------------------------------
    model_args, data_args, opt_args, run_args = parse_config(ARGS, argv, description=__doc__)
    check_sequence_length(data_args.max_seq_length, model_args.max_position_embeddings, "--max_position_embeddings")
    config = flat_config(model_args, data_args, opt_args, run_args)
    clock = RunClock()
    preemption = PreemptionFlag()  # before anything slow: a signal during start-up is kept, not fatal

    go_offline_if_unreachable(hub_names(hub_resources(model_args, data_args)))  # asked once: preflight's answer

    # ---- accelerator, output folder ------------------------------------------------------------
    accelerator, output_dir = start_run(run_args, opt_args, config, do_train=True)

    # ---- data --------------------------------------------------------------------------------
    # Preprocessing runs once per machine; the other ranks then read the datasets cache.
    with accelerator.local_main_process_first():
        corpus = load_corpus(data_args, run_args.seed)
    with accelerator.main_process_first():
        tokenizer = obtain_tokenizer(data_args, corpus, output_dir, accelerator.is_main_process)
    with accelerator.local_main_process_first():
        splits = build_pretraining_datasets(corpus, tokenizer, data_args, run_args.seed)
    baselines = training_baselines(splits["train"], len(tokenizer), tokenizer.all_special_ids)
    positions_per_row = (max_predictions_per_seq(data_args.mlm_probability, data_args.max_seq_length)
                         if model_args.sparse_mlm_head else None)
    train_collator = PretrainingCollator(tokenizer, data_args.mlm_probability, data_args.whole_word_masking,
                                         seed=run_args.seed, mlm_positions_per_row=positions_per_row)
    eval_collator = PretrainingCollator(tokenizer, data_args.mlm_probability, data_args.whole_word_masking,
                                        seed=data_args.eval_mask_seed,  # epoch stays 0: fixed masks
                                        mlm_positions_per_row=positions_per_row)
    train_dataloader = build_dataloader(IndexedDataset(splits["train"]), train_collator,
                                        opt_args.per_device_train_batch_size, True,
                                        run_args.dataloader_num_workers, run_args.seed)
    eval_dataloaders = {split: build_dataloader(IndexedDataset(splits[split]), eval_collator,
                                                opt_args.per_device_eval_batch_size, False,
                                                run_args.dataloader_num_workers, run_args.seed)
                        for split in ("validation", "test") if split in splits}

    # ---- model -------------------------------------------------------------------------------
    bert_config = build_bert_config(model_args, len(tokenizer), tokenizer)
    with zero3_init_as_configured(accelerator):
        model = PretrainingObjective(build_pretraining_model(bert_config, model_args.attn_implementation),
                                     sparse_mlm_head=model_args.sparse_mlm_head, nsp=data_args.nsp)
    if model_args.torch_compile:
        # The whole objective, in place: parameter names (and checkpoints) stay unchanged. With the
        # collator's position table it is one graph (no data-dependent shapes).
        model.compile()

    # ---- optimizer / schedule ----------------------------------------------------------------
    optimizer = build_optimizer(model, opt_args, accelerator.device)

    # ---- prepare -----------------------------------------------------------------------------
    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
    eval_dataloaders = {k: accelerator.prepare(v) for k, v in eval_dataloaders.items()}
    gas = opt_args.gradient_accumulation_steps
    steps_per_epoch = len(train_dataloader) // gas
    if steps_per_epoch == 0:
        raise SystemExit(f"error: {len(splits['train'])} training instances make no full optimizer step of "
                         f"{accelerator.num_processes} x {opt_args.per_device_train_batch_size} x {gas} sequences; "
                         "lower the batch size or add text")
    total_steps = opt_args.total_steps(steps_per_epoch)
    num_epochs = opt_args.num_epochs(steps_per_epoch)
    lr_scheduler = build_scheduler(optimizer, opt_args, total_steps)
    train_state = TrainState(world_size=accelerator.num_processes,
                             per_device_batch_size=opt_args.per_device_train_batch_size)
    accelerator.register_for_checkpointing(lr_scheduler, train_state)
    model_signature = {k: getattr(bert_config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                            "num_attention_heads", "intermediate_size")}

    # ---- resume ------------------------------------------------------------------------------
    resume_step = resume_from_checkpoint(accelerator, run_args, output_dir, train_state, model_signature)
    skip_batches = train_state.batches_to_skip(accelerator.num_processes, opt_args.per_device_train_batch_size)
    train_state.world_size = accelerator.num_processes
    train_state.per_device_batch_size = opt_args.per_device_train_batch_size

    distributed = distributed_summary(accelerator, gas)
    if accelerator.is_main_process:
        write_run_config(output_dir, "pretraining", config, distributed, extra={
            "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
            "dataset_sizes": {k: len(v) for k, v in splits.items()}, "document_boundary": corpus.boundary,
            "vocab_size": len(tokenizer), "resumed_from_step": resume_step})
    metrics = MetricsLogger(accelerator, output_dir, resume_step)
    eval_results = load_eval_results(output_dir, resume_step, "pretraining")
    if run_args.report_to == "tensorboard":
        purge = {"tensorboard": {"purge_step": resume_step + 1}} if resume_step is not None else None
        accelerator.init_trackers("tensorboard", init_kwargs=purge)

    bars = show_bars(run_args.disable_progress_bar)
    progress = StepProgress(total_steps, train_state.step, bars, accelerator.is_main_process, logger)

    def run_evaluation(split: str) -> dict:
        result = evaluate_pretraining(model, eval_dataloaders[split], accelerator, len(splits[split]),
                                      data_args.nsp, progress=bars, baselines=baselines)
        epochs_done = train_state.epoch + train_state.batches_in_epoch / (steps_per_epoch * gas)
        record = {"epoch": round(epochs_done, 4), "step": train_state.step, **result}
        metrics.log({"split": split, **record}, prefix="eval" if split == "validation" else "test")
        progress.write(f"{split} step {train_state.step}: perplexity {fmt(result['perplexity'])} (unigram "
                       f"{fmt(result['unigram_perplexity'])}) mlm_loss {fmt(result['mlm_loss'])} nsp_accuracy "
                       f"{fmt(result['nsp_accuracy'])} (majority {fmt(result['nsp_majority_accuracy'])})")
        record.pop("num_examples")
        if split == "validation":
            eval_results["epochs"].append(record)
            if accelerator.is_main_process:
                write_json_atomic(output_dir / "eval_results.json", eval_results)
        return record

    def checkpoint() -> None:
        # The not-yet-logged interval travels with the checkpoint (reduced over ranks), so a resumed
        # run logs the same numbers as one that was never interrupted.
        train_state.extra["pending_stats"] = accelerator.reduce(stats.clone(), reduction="sum").tolist()
        save_checkpoint(accelerator, output_dir / "checkpoints", train_state,
                        {"config": config, "model_signature": model_signature, "distributed": distributed},
                        run_args.keep_last_n)

    peak = peak_tflops_for(distributed["device_name"], run_args.peak_tflops)
    every = run_args.checkpoint_every_steps()
    logger.info(f"{len(splits['train'])} training instances, {steps_per_epoch} steps/epoch, {total_steps} steps, "
                f"{accelerator.num_processes} process(es), mixed precision {accelerator.mixed_precision}",
                main_process_only=True)

    # ---- the loop ----------------------------------------------------------------------------
    stats = torch.zeros(len(STATS), device=accelerator.device, dtype=torch.float64)
    if resume_step is not None and accelerator.is_main_process and "pending_stats" in train_state.extra:
        stats += torch.tensor(train_state.extra["pending_stats"], device=stats.device, dtype=stats.dtype)
    timer = IntervalTimer()
    stop, grad_norm = None, None
    last_eval_step = last_checkpoint_step = resume_step
    model.train()
    start_epoch = train_state.epoch
    for epoch in range(start_epoch, num_epochs):
        skip = skip_batches if epoch == start_epoch else 0  # only the resumed epoch is part-done
        train_state.epoch = epoch
        train_dataloader.set_epoch(epoch)
        train_collator.set_epoch(epoch)
        batches = accelerator.skip_first_batches(train_dataloader, skip) if skip else train_dataloader
        for window in accumulation_windows(batches, gas):
            if train_state.step >= total_steps:
                break
            torch.manual_seed(step_seed(run_args.seed, train_state.step, accelerator.process_index))
            # MLM is normalised by the masked tokens of the whole window on all ranks, NSP by its
            # sequences, so each optimizer step follows one token-weighted mean. DDP/DeepSpeed
            # average over ranks and accelerate divides by the accumulation steps: `scale` undoes both.
            window_counts = accelerator.reduce(torch.stack([
                sum((b["labels"] != -100).sum() for b in window).double(),
                torch.tensor(sum(len(b["input_ids"]) for b in window), device=accelerator.device).double()]),
                reduction="sum")
            scale = accelerator.num_processes * gas
            local_nonfinite = torch.zeros((), device=accelerator.device)
            skip_update = False
            for batch in window:
                with accelerator.accumulate(model):
                    sums = model(**batch)
                    loss = sums.mlm_nll.sum() / window_counts[0]
                    if data_args.nsp:
                        loss = loss + sums.nsp_nll.sum() / window_counts[1]
                    local_nonfinite = torch.maximum(local_nonfinite, (~torch.isfinite(loss.detach())).float())
                    accelerator.backward(loss * scale)
                    if accelerator.sync_gradients:
                        if opt_args.max_grad_norm > 0:
                            grad_norm = accelerator.clip_grad_norm_(model.parameters(), opt_args.max_grad_norm)
                        nonfinite, preempted = agree_on_flags(accelerator, local_nonfinite, grad_norm, preemption)
                        skip_update = nonfinite and run_args.nan_policy == "skip" and not is_deepspeed(accelerator)
                    if not skip_update:
                        optimizer.step()
                    optimizer.zero_grad()
                stats += batch_stats(batch, sums)
            if not skip_update and not accelerator.optimizer_step_was_skipped:
                lr_scheduler.step()
            train_state.step += 1
            train_state.batches_in_epoch += len(window)
            progress.update()
            if nonfinite:
                logger.warning(f"step {train_state.step}: non-finite loss or gradient "
                               f"({'update skipped' if skip_update else 'stopping'})", main_process_only=True)
                stop = None if skip_update else "nonfinite"
            if preempted:
                stop = "preempted"

            if train_state.step % run_args.logging_steps == 0 or train_state.step == total_steps or stop:
                record = interval_record(accelerator, stats, timer.seconds_and_reset(), bert_config, peak, data_args.nsp)
                train_state.samples_seen += record.pop("_sequences")
                train_state.tokens_seen += record.pop("_tokens")
                record.update(step=train_state.step, lr=lr_scheduler.get_last_lr()[0],
                              epoch=epoch + train_state.batches_in_epoch / (steps_per_epoch * gas),
                              grad_norm=float(grad_norm) if grad_norm is not None else None)
                metrics.log(record, prefix="train")
                progress.log(train_state.step, {"loss": record["loss"], "mlm": record["mlm_loss"],
                                                "nsp": record["nsp_loss"], "lr": record["lr"],
                                                "tokens/s": round(record["tokens_per_second"])})
            timer.pause()
            if run_args.eval_steps and train_state.step % run_args.eval_steps == 0 and "validation" in eval_dataloaders:
                run_evaluation("validation")
                last_eval_step = train_state.step
            if (every and train_state.step % every == 0) or stop:
                checkpoint()
                last_checkpoint_step = train_state.step
            timer.resume()
            if stop:
                break
        if stop:
            break

        # ---- end of epoch (or of the step budget): evaluate, checkpoint ------------------------
        timer.pause()
        if train_state.step < total_steps or train_state.batches_in_epoch >= steps_per_epoch * gas:
            train_state.epoch, train_state.batches_in_epoch = epoch + 1, 0
        if "validation" in eval_dataloaders and last_eval_step != train_state.step:
            run_evaluation("validation")
            last_eval_step = train_state.step
        if run_args.checkpointing_steps == "epoch" and last_checkpoint_step != train_state.step:
            checkpoint()
            last_checkpoint_step = train_state.step
        timer.resume()
        if train_state.step >= total_steps:
            break

    # ---- stopped early: preempted or non-finite ----------------------------------------------------
    progress.close()
    if stop is not None:
        accelerator.end_training()
        if stop == "preempted":
            if accelerator.is_main_process:
                write_marker(output_dir, train_state.step, preemption.signal_name())
            logger.info(f"preempted ({preemption.signal_name()}): checkpoint at step {train_state.step} saved; "
                        "rerun with --resume_from_checkpoint latest to continue", main_process_only=True)
            return 0
        logger.error(f"stopped at step {train_state.step}: non-finite loss or gradient (--nan_policy stop). The "
                     "last checkpoint is saved; lower the learning rate or use bf16 instead of fp16.",
                     main_process_only=True)
        return 3

    # ---- final evaluation and export ---------------------------------------------------------
    if "test" in eval_dataloaders:
        eval_results["test"] = run_evaluation("test")
    if accelerator.is_main_process:
        write_json_atomic(output_dir / "eval_results.json", eval_results)
    check_replicas_in_sync(accelerator, model, output_dir)
    unwrapped = accelerator.unwrap_model(model)
    export_final_model(accelerator, model, unwrapped.model, tokenizer, output_dir / "final",
                       model_card(config, eval_results, train_state, distributed))
    accelerator.end_training()
    url = None
    if run_args.push_to_hub and accelerator.is_main_process:
        url = push_folder_to_hub(output_dir / "final", run_args.hub_model_id, run_args.hub_private,
                                 f"BERT pretraining, step {train_state.step}")
    last = eval_results["epochs"][-1] if eval_results["epochs"] else {}
    print_summary("pretraining", clock, {
        "steps": train_state.step, "validation perplexity": last.get("perplexity"),
        "  unigram baseline": last.get("unigram_perplexity"), "validation nsp_accuracy": last.get("nsp_accuracy"),
        "  majority baseline": last.get("nsp_majority_accuracy"),
        "test perplexity": (eval_results.get("test") or {}).get("perplexity"),
        "  unigram baseline ": (eval_results.get("test") or {}).get("unigram_perplexity")},
        {"final model": output_dir / "final", "metrics": output_dir / "metrics.jsonl", "pushed to": url},
        output_dir, accelerator.is_main_process, notes=baseline_notes(eval_results.get("test") or last))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
