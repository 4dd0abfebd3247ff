"""Pretraining evaluation throughput: evaluate_pretraining (what train/pretrain.py and analysis.perplexity
run) against `Trainer.evaluate` on the same model, instances, fixed masks and batch size.

    python -m bench.eval_throughput --shape smoke                       # validation split of wiki.test.raw
    python -m bench.eval_throughput --shape bert_base --precision bf16 --repeats 3

Ours: train.common.evaluation.evaluate_pretraining over the prepared eval DataLoader (sparse MLM
head, per-example sums gathered with gather_for_metrics). Baseline: Trainer(BertForPreTraining).evaluate()
with our eval collator (the same fixed masks) and TrainingArguments with the same batch size, precision and
loader workers (dense MLM head, HF's loss). Both sides evaluate the SAME model object; every pass is
timed whole (loader iteration included); passes alternate; the first pass of each side is dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    WIKITEXT_TEST,
    describe_shape,
    emit,
    environment,
    machine_probe,
    mixed_precision_env,
    quiet_libraries,
    safe_ratio,
    set_offline_env,
    stdout_to_stderr,
    summarize,
    target,
)
from bench.pretrain_throughput import (
    DEFAULT_BATCH,
    ours_argv,
    parse_pretrain_args,
    resolve_tokenizer,
    shape_settings,
    write_preset,
)

TARGET = 1.0  # ours / Trainer samples per second: never slower than the standard evaluation


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("tiny", "smoke", "bert_base"), default="smoke")
    parser.add_argument("--vocab", choices=("wordpiece8000", "bert"), default=None)
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--train_file", default=str(WIKITEXT_TEST))
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--batch_size", type=int, default=None, help="Eval batch (default: 64 smoke, 16 bert_base).")
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5, help="Timed passes per side (plus one warm-up pass).")
    parser.add_argument("--no_sparse_mlm_head", dest="sparse_mlm_head", action="store_false")
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=None)
    # shared with pretrain_throughput's argv builder
    parser.set_defaults(steps=1, seq_len=None, torch_compile=False, fused_encoder=False)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    set_offline_env()
    scratch = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    os.environ["HF_DATASETS_CACHE"] = str(scratch / "hf-datasets")
    quiet_libraries()
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    from train.common.data.loaders import build_dataloader
    from train.common.data.masking import IndexedDataset, PretrainingCollator, max_predictions_per_seq
    from train.common.data.pretraining import build_pretraining_datasets, load_corpus
    from train.common.distributed import build_accelerator
    from train.common.evaluation import evaluate_pretraining
    from train.common.models import PretrainingObjective, build_bert_config, build_pretraining_model
    from train.common.tokenizer import load_tokenizer

    args.vocab = args.vocab or ("bert" if args.shape == "bert_base" else "wordpiece8000")
    batch_size = args.batch_size or {"tiny": 16, "smoke": 64, "bert_base": 16}[args.shape]
    preset = write_preset(shape_settings(args.shape), scratch / f"bench_{args.shape}.yaml")
    try:
        with stdout_to_stderr(), mixed_precision_env(args.precision):
            parsed = parse_pretrain_args(ours_argv(args, preset, "unused", DEFAULT_BATCH[args.shape]))
            tokenizer_dir, vocab_note = resolve_tokenizer(args, scratch, parsed)
            parsed = parse_pretrain_args(ours_argv(args, preset, tokenizer_dir, DEFAULT_BATCH[args.shape]))
            model_args, data_args, opt_args, run_args = parsed
            data_args = dataclasses.replace(data_args, max_eval_samples=args.max_eval_samples)
            tokenizer = load_tokenizer(tokenizer_dir)
            splits = build_pretraining_datasets(load_corpus(data_args, run_args.seed), tokenizer, data_args,
                                                run_args.seed)
            instances = splits["validation"]
            set_seed(run_args.seed)
            bert_config = build_bert_config(model_args, len(tokenizer), tokenizer)
            model = build_pretraining_model(bert_config, model_args.attn_implementation)
            collator = PretrainingCollator(tokenizer, data_args.mlm_probability, data_args.whole_word_masking,
                                           seed=data_args.eval_mask_seed)

            # ours, set up as train/pretrain.py does
            accelerator = build_accelerator(run_args, 1, opt_args.max_grad_norm)
            objective = PretrainingObjective(model, sparse_mlm_head=args.sparse_mlm_head, nsp=data_args.nsp)
            # The same masks plus the script's position table (the Trainer's model takes no extra inputs).
            ours_collator = PretrainingCollator(
                tokenizer, data_args.mlm_probability, data_args.whole_word_masking, seed=data_args.eval_mask_seed,
                mlm_positions_per_row=(max_predictions_per_seq(data_args.mlm_probability, data_args.max_seq_length)
                                       if args.sparse_mlm_head else None))
            loader = build_dataloader(IndexedDataset(instances), ours_collator, batch_size, False,
                                      args.dataloader_num_workers, run_args.seed)
            objective, loader = accelerator.prepare(objective, loader)

            # the Trainer, on the same model object
            training_args = TrainingArguments(
                output_dir=str(scratch / "trainer"), per_device_eval_batch_size=batch_size,
                bf16=args.precision == "bf16", use_cpu=not torch.cuda.is_available(), report_to=[],
                remove_unused_columns=False, dataloader_num_workers=args.dataloader_num_workers, disable_tqdm=True,
                seed=run_args.seed)
            trainer = Trainer(model=model, args=training_args, eval_dataset=IndexedDataset(instances),
                              data_collator=collator)

            def run_ours():
                return evaluate_pretraining(objective, loader, accelerator, len(instances), data_args.nsp)

            def run_trainer():
                return trainer.evaluate()

            passes = {"ours": [], "trainer": []}
            probes = {"ours": [], "trainer": []}
            outputs = {}
            for rep in range(args.repeats + 1):
                order = ("ours", "trainer") if rep % 2 == 0 else ("trainer", "ours")
                for side in order:
                    probe = machine_probe() if not torch.cuda.is_available() else None
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    outputs[side] = run_ours() if side == "ours" else run_trainer()
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    seconds = time.perf_counter() - start
                    if rep > 0:  # the first pass of each side warms up
                        passes[side].append(len(instances) / seconds)
                        probes[side].append(probe)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    per_repeat = [safe_ratio(o, t) for o, t in zip(passes["ours"], passes["trainer"], strict=True)]
    ratio = statistics.median(per_repeat)
    targets = [target(f"ours/Trainer eval samples per second, {args.shape} shape", ratio, TARGET,
                      note="no number in the issue; ours must simply not be slower")]
    result = {
        "benchmark": "eval_throughput",
        "settings": {"shape": args.shape, "model": describe_shape(bert_config), "vocab": vocab_note,
                     "batch_size": batch_size, "seq_len": data_args.max_seq_length, "precision": args.precision,
                     "eval_instances": len(instances), "repeats": args.repeats, "warmup_passes_dropped": 1,
                     "sparse_mlm_head": args.sparse_mlm_head, "dataloader_num_workers": args.dataloader_num_workers,
                     "train_file": str(args.train_file)},
        "environment": environment("cuda" if torch.cuda.is_available() else "cpu"),
        "ours": {"what": "train.common.evaluation.evaluate_pretraining",
                 "samples_per_second": summarize(passes["ours"]), "machine_probe_seconds": probes["ours"],
                 "result": outputs["ours"]},
        "baseline": {"what": "Trainer(BertForPreTraining).evaluate()",
                     "samples_per_second": summarize(passes["trainer"]), "machine_probe_seconds": probes["trainer"],
                     "result": {k: v for k, v in outputs["trainer"].items()
                                if k in ("eval_loss", "eval_samples_per_second")}},
        "ratio": ratio,
        "ratio_per_repeat": per_repeat,
        "targets": targets,
        "target_met": all(t["target_met"] for t in targets),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
