"""The real loops on one GPU, a part per process: what the H100 answered (ours vs Trainer, SQuAD) and the
loop bench/gpu_check.sh runs at batch 512 (`part_pretrain_ours`). Needs torch + transformers + accelerate + pyyaml
only (the GPU machine has no `datasets`, no vocabulary and no data files).

    python -m bench.gpu_throughput --part pretrain_ours --out bench_out/pretrain_ours.json
    python -m bench.gpu_throughput --part pretrain_ours --device cpu --tiny --simulate_no_datasets   # dry run

Parts (bert-base, seq 128, batch 256, bf16 autocast, SDPA, fused AdamW, 4 loader workers on both sides):
  pretrain_ours           the REAL train/pretrain.py main() on synthetic full-length NSP instances; only its
                          data functions (load_corpus, obtain_tokenizer, build_pretraining_datasets) are replaced.
                          Throughput and MFU come from its metrics.jsonl (logged every 10 steps, first 2 intervals
                          dropped); MFU uses train.common.throughput's formula and peak table.
  pretrain_trainer        Trainer(BertForPreTraining) on the same instances with our PretrainingCollator, timed per
                          step by a TrainerCallback (first 20 steps dropped); MFU from the same formula.
  squad_ours              the REAL train/finetune_qa.py main() (squad_bert_base.yaml recipe: 384-token windows,
                          doc_stride 128) on a synthetic SQuAD v1.1 file, with a random-init bert-base QA checkpoint
                          and a synthetic WordPiece vocabulary written to a temporary folder; batch 32.
  pretrain_ours_compiled  pretrain_ours with --torch_compile (the whole objective compiled in place).
Without `datasets`, a placeholder module stands in while train.pretrain is imported (pretraining_data imports
it at module level); nothing of it runs, because the data functions are replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_profile import BERT_BASE, TINY

PARTS = ("pretrain_ours", "pretrain_trainer", "squad_ours", "pretrain_ours_compiled")


def plan(args) -> dict[str, Any]:
    if args.tiny:
        return {"model": TINY, "seq": 32, "batch": args.batch_size or 8, "steps": 8, "log_every": 2,
                "warmup_intervals": 1, "squad_seq": 128, "squad_stride": 32, "squad_query": 32,
                "squad_batch": 4, "squad_steps": 6, "squad_log_every": 2, "articles": 6, "workers": args.workers}
    return {"model": BERT_BASE, "seq": 128, "batch": args.batch_size or 256, "steps": 60, "log_every": 10,
            "warmup_intervals": 2, "squad_seq": 384, "squad_stride": 128, "squad_query": 64, "squad_batch": 32,
            "squad_steps": 40, "squad_log_every": 5, "articles": 62, "workers": args.workers}


# ---------------------------------------------------------------------------------------------
# Importing train.pretrain without `datasets`
# ---------------------------------------------------------------------------------------------

def synthetic_inputs(vocab, train_instances):
    """pretrain.main's documented data seam (Overrides.inputs): the synthetic vocabulary and instances instead of
    reading text. train.pretrain imports `datasets` only where it reads text, so the GPU machine needs none."""
    from train.pretrain import PretrainingInputs
    return lambda data_args, seed, output_dir, accelerator: PretrainingInputs(vocab, {"train": train_instances},
                                                                             "synthetic")


# ---------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------

def pretrain_argv(p: dict[str, Any], compiled: bool) -> list[str]:
    argv = [x for k, v in p["model"].items() for x in (f"--{k}", str(v))]
    argv += ["--max_seq_length", str(p["seq"]), "--per_device_train_batch_size", str(p["batch"]),
             "--max_train_steps", str(p["steps"]), "--logging_steps", str(p["log_every"]),
             "--checkpointing_steps", "none", "--report_to", "none", "--dataloader_num_workers", str(p["workers"]),
             "--learning_rate", "1e-4", "--warmup_ratio", "0.01", "--seed", "42",
             # The data come through Overrides.inputs (synthetic_inputs): local-text options, so the script does not
             # ask the Hub for the default dataset and tokenizer it will never load.
             "--train_file", "synthetic", "--train_tokenizer", "30522"]
    return argv + (["--torch_compile"] if compiled else [])


def memory_record(device: str) -> dict[str, Any]:
    import torch

    from bench.common import peak_rss_mib
    if device == "cuda":
        return {"peak_gpu_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
                "peak_gpu_memory_reserved_gib": torch.cuda.max_memory_reserved() / 2 ** 30}
    return {"peak_rss_mib": peak_rss_mib()}


def flops_per_full_sample(bert_config, seq: int, mlm_probability: float = 0.15) -> float:
    """Model FLOPs of one full-length synthetic instance (all [CLS] A [SEP] B [SEP] of seq tokens): the
    collator masks round(p * (seq - 3)) ordinary tokens of each."""
    from train.common.throughput import bert_training_flops
    masked = max(1, int(round((seq - 3) * mlm_probability)))
    return bert_training_flops(bert_config, seq, seq * seq, masked)


def part_pretrain_ours(args, p, compiled: bool) -> dict[str, Any]:
    import torch

    from bench.common import (
        SyntheticBertVocab,
        mixed_precision_env,
        restored_signal_handlers,
        stdout_to_stderr,
        summarize,
        synthetic_nsp_instances,
    )
    from train.common.run_folder import RunFolder
    from train.pretrain import Overrides, main
    vocab = SyntheticBertVocab()
    overrides = Overrides(inputs=synthetic_inputs(vocab, synthetic_nsp_instances((p["steps"] + 2) * p["batch"],
                                                                                  p["seq"], vocab)))
    run_dir = Path(tempfile.mkdtemp(prefix="gpu-pretrain-"))
    start = time.perf_counter()
    try:
        with mixed_precision_env(args.precision), stdout_to_stderr(), restored_signal_handlers():
            rc = main(pretrain_argv(p, compiled) + ["--output_dir", str(run_dir), "--overwrite_output_dir"],
                      overrides)
        if rc != 0:
            raise RuntimeError(f"train/pretrain.py main() returned {rc}")
        lines = sorted((rec for rec in RunFolder(run_dir).read_metrics() if "split" not in rec),
                       key=lambda rec: rec["step"])
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    steady = lines[p["warmup_intervals"]:]
    mfus = [rec["mfu"] for rec in steady if rec.get("mfu") is not None]
    dense = [rec["mfu_dense_head"] for rec in steady if rec.get("mfu_dense_head") is not None]
    return {"what": "train/pretrain.py main() (real loop), synthetic data" + (", --torch_compile" if compiled else ""),
            "samples_per_second": summarize([rec["samples_per_second"] for rec in steady]),
            "tokens_per_second": summarize([rec["tokens_per_second"] for rec in steady]),
            "mfu": summarize(mfus) if mfus else None, "mfu_dense_head": summarize(dense) if dense else None,
            "steps": p["steps"],
            "steps_measured": len(steady) * p["log_every"], "loss_first_last": [lines[0]["loss"], lines[-1]["loss"]],
            "wall_seconds_incl_setup_and_export": time.perf_counter() - start,
            **memory_record("cuda" if torch.cuda.is_available() else "cpu")}


def part_pretrain_trainer(args, p) -> dict[str, Any]:
    import torch

    from bench.common import SyntheticBertVocab, summarize, synthetic_nsp_instances
    from bench.pretrain_throughput import parse_pretrain_args, run_trainer
    from train.common.models import build_bert_config
    from train.common.throughput import peak_tflops_for
    vocab = SyntheticBertVocab()
    instances = synthetic_nsp_instances((p["steps"] + 2) * p["batch"], p["seq"], vocab)
    parsed = parse_pretrain_args(pretrain_argv(p, compiled=False))
    out_dir = Path(tempfile.mkdtemp(prefix="gpu-trainer-"))
    start = time.perf_counter()
    run = run_trainer(parsed, instances, vocab, args.precision, p["steps"], p["warmup_intervals"] * p["log_every"],
                      "ours", out_dir)
    sps = run["samples_per_second"]
    flops = flops_per_full_sample(build_bert_config(parsed[0], len(vocab), vocab), p["seq"])
    device_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = peak_tflops_for(device_name)
    return {"what": "Trainer(BertForPreTraining) + our PretrainingCollator, same instances",
            "optimizer": run["optimizer"], "samples_per_second": summarize(sps),
            "tokens_per_second": summarize([s * p["seq"] for s in sps]),
            "mfu": summarize([s * flops / (peak * 1e12) for s in sps]) if peak else None,
            "steps": p["steps"], "steps_measured": len(sps),
            "wall_seconds_incl_setup": time.perf_counter() - start,
            **memory_record("cuda" if torch.cuda.is_available() else "cpu")}


def _word(i: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = "q"
    while True:
        out += letters[i % 26]
        i //= 26
        if i == 0:
            return out


def write_squad_assets(folder: Path, p, seed: int = 0) -> tuple[Path, Path, int]:
    """A WordPiece vocabulary of bert-base's size and layout, a random-init BertForQuestionAnswering saved with
    it, and a SQuAD v1.1 file of p['articles'] articles x 5 paragraphs x 5 questions with 100-330-word contexts."""
    import random

    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast
    vocab_size = 30522
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"[unused{i}]" for i in range(99, 99 + 999 - len(tokens))]
    words = [_word(i) for i in range(vocab_size - len(tokens))]
    tokens += words
    backend = BertWordPieceTokenizer({t: i for i, t in enumerate(tokens)}, lowercase=True)
    tokenizer = BertTokenizerFast(tokenizer_object=backend._tokenizer, do_lower_case=True, unk_token="[UNK]",
                                  sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    model_dir = folder / "model"
    config = BertConfig(vocab_size=vocab_size, **p["model"])
    BertForQuestionAnswering(config).save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    rng = random.Random(seed)
    data = []
    for a in range(p["articles"]):
        paragraphs = []
        for g in range(5):
            context_words = [rng.choice(words) for _ in range(rng.randint(100, 330))]
            context = " ".join(context_words)
            qas = []
            for q in range(5):
                start = rng.randrange(len(context_words) - 4)
                length = rng.randint(1, 4)
                answer = " ".join(context_words[start:start + length])
                char = len(" ".join(context_words[:start])) + (1 if start else 0)
                question = " ".join(rng.choice(words) for _ in range(rng.randint(6, 20)))
                qas.append({"id": f"a{a}p{g}q{q}", "question": question,
                            "answers": [{"text": answer, "answer_start": char}]})
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"article {a}", "paragraphs": paragraphs})
    squad_file = folder / "synthetic-squad-v1.1.json"
    squad_file.write_text(json.dumps({"version": "1.1", "data": data}))
    return model_dir, squad_file, p["articles"] - 2


def part_squad_ours(args, p) -> dict[str, Any]:
    import torch

    from bench.common import mixed_precision_env, restored_signal_handlers, stdout_to_stderr, summarize
    from train.common.run_folder import RunFolder
    from train.common.throughput import peak_tflops_for
    folder = Path(tempfile.mkdtemp(prefix="gpu-squad-"))
    start = time.perf_counter()
    try:
        model_dir, squad_file, train_articles = write_squad_assets(folder, p)
        import train.finetune_qa as module
        argv = ["--model_name_or_path", str(model_dir), "--train_file", str(squad_file), "--train_articles",
                str(train_articles), "--max_seq_length", str(p["squad_seq"]), "--doc_stride", str(p["squad_stride"]),
                "--max_query_length", str(p["squad_query"]), "--per_device_train_batch_size", str(p["squad_batch"]),
                "--per_device_eval_batch_size", "64", "--learning_rate", "3e-5", "--warmup_ratio", "0.1",
                "--max_train_steps", str(p["squad_steps"]), "--logging_steps", str(p["squad_log_every"]),
                "--checkpointing_steps", "none", "--report_to", "none", "--max_eval_samples", "16",
                "--aux_metrics", "false", "--dataloader_num_workers", str(p["workers"]), "--seed", "42",
                "--output_dir", str(folder / "run"), "--overwrite_output_dir"]
        with mixed_precision_env(args.precision), stdout_to_stderr(), restored_signal_handlers():
            rc = module.main(argv)
        if rc != 0:
            raise RuntimeError(f"train/finetune_qa.py main() returned {rc}")
        lines = sorted((rec for rec in RunFolder(folder / "run").read_metrics()
                        if "split" not in rec and "samples_per_second" in rec), key=lambda rec: rec["step"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    steady = lines[1:] if len(lines) > 1 else lines
    h, i, layers = p["model"]["hidden_size"], p["model"]["intermediate_size"], p["model"]["num_hidden_layers"]
    device_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = peak_tflops_for(device_name)
    approx = []
    for rec in steady:
        mean_len = rec["tokens_per_second"] / rec["samples_per_second"]
        flops_per_s = 3 * (rec["tokens_per_second"] * layers * (8 * h * h + 4 * h * i)
                           + rec["samples_per_second"] * layers * 4 * h * mean_len ** 2)
        approx.append(flops_per_s / (peak * 1e12) if peak else None)
    return {"what": "train/finetune_qa.py main() (real loop), synthetic SQuAD v1.1 file, random-init bert-base",
            "max_seq_length": p["squad_seq"], "doc_stride": p["squad_stride"], "batch_size": p["squad_batch"],
            "features_per_second": summarize([rec["samples_per_second"] for rec in steady]),
            "tokens_per_second": summarize([rec["tokens_per_second"] for rec in steady]),
            "padding_fraction": [rec.get("padding_fraction") for rec in steady],
            "approx_mfu": summarize(approx) if peak else None,
            "approx_mfu_note": "encoder FLOPs from tokens/s with the attention term at the mean feature length",
            "steps": p["squad_steps"], "wall_seconds_incl_setup": time.perf_counter() - start,
            **memory_record("cuda" if torch.cuda.is_available() else "cpu")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=PARTS, required=True)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="A tiny shape and few steps (CPU dry run).")
    parser.add_argument("--simulate_no_datasets", action="store_true",
                        help="Make `import datasets` fail, as on the GPU machine (dry runs here).")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--batch_size", type=int, default=None, help="Pretraining batch (default 256; tiny 8).")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers, both sides.")
    parser.add_argument("--out", default=None)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.simulate_no_datasets:
        sys.modules["datasets"] = None  # `import datasets` now fails; find_spec reports it missing
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from bench.common import emit, environment, quiet_libraries, set_offline_env
    set_offline_env()
    quiet_libraries()
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU (torch.cuda.is_available() is False)")
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    p = plan(args)
    started = time.perf_counter()
    if args.part == "pretrain_ours":
        measured = part_pretrain_ours(args, p, compiled=False)
    elif args.part == "pretrain_ours_compiled":
        measured = part_pretrain_ours(args, p, compiled=True)
    elif args.part == "pretrain_trainer":
        measured = part_pretrain_trainer(args, p)
    else:
        measured = part_squad_ours(args, p)
    from train.common.throughput import peak_tflops_for
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    result = {"part": args.part, "settings": {"model": p["model"], "vocab_size": 30522, "seq_len": p["seq"],
                                              "batch_size": p["batch"], "precision": args.precision,
                                              "attn_implementation": "sdpa", "sparse_mlm_head": True,
                                              "optimizer": "AdamW fused on CUDA (train.common.optim)",
                                              "dataloader_num_workers": p["workers"], "tiny": args.tiny,
                                              "peak_tflops": peak_tflops_for(device_name)},
              "environment": environment(args.device), "seconds": time.perf_counter() - started, **measured}
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
