"""The variants of bench/gpu_check.sh, one per process, and the summary it rewrites after each of them.

    python -m bench.gpu_check --plan [--dry-run]                       # the variants in order, with their time caps
    python -m bench.gpu_check --variant eager --out OUT/variants/eager.json [--dry-run]
    python -m bench.gpu_check --summary OUT                            # OUT/variants/*.json -> OUT/summary.json

VARIANTS below is the one list of what the check runs, in order (the shell script and the dry-run test read it).
Step variants time the objective's step without the loop (bench/gpu_profile.py); `real_script_bert_base` is
train/pretrain.py's main() with train/configs/bert_base.yaml on the WikiText sample shipped in data/sample/ (it
needs `datasets`: bench/README.md says how its wheels travel to the GPU machine); `real_loop_batch_512` is the
same main() at batch 512 on synthetic data through its Overrides seam (no `datasets`). Every variant but the
real script runs with `import datasets` made to fail, as on the GPU machine.

`--dry-run`: the same sequence on CPU at a tiny size with one thread; torch.compile with the "eager" backend
(dynamo traces, no code is generated, the compile modes are named only) and the real loops uncompiled.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "wikitext-2-raw"
MFU_TARGET = 0.45
# name, seconds it may take at most on the H200 (compilation included; cut further to what the budget has left),
# what it answers. The step variants change one thing at a time from compiled_batch_512 on.
VARIANTS = (
    ("environment", 40, "GPU name -> peak TFLOP/s, versions, SDPA backends"),
    ("eager", 60, "bert-base seq 128 bf16 batch 256, eager, mask passed: the H100 baseline's step (0.230 there)"),
    ("compiled_batch_512", 90, "the whole objective compiled, batch 512, with its kernel table"),
    ("compiled_batch_512_no_mask", 80, "the same with attention_mask=None on unpadded batches (flash?)"),
    ("compiled_cudagraphs_batch_512_no_mask", 90, "+ CUDA graphs (mode reduce-overhead)"),
    ("fused_compiled_batch_512_no_mask", 80, "the fused encoder (--fused_encoder), compiled"),
    ("fused_compiled_cudagraphs_batch_512_no_mask", 90, "the fused encoder, compiled with CUDA graphs"),
    ("real_script_bert_base", 130, "train/pretrain.py + bert_base.yaml on the WikiText sample for ~90 s: "
                                   "per-epoch perplexity and NSP beside the unigram / majority baselines"),
    ("fused_compiled_packed_batch_512", 90, "--pack_sequences with the fused encoder, compiled: flash varlen on "
                                            "instances of 32-128 tokens, checked against the block-diagonal path"),
    ("real_loop_batch_512", 100, "train/pretrain.py's loop, --torch_compile, batch 512, synthetic data"),
    ("compiled_max_autotune_batch_512_no_mask", 300, "max-autotune (no CUDA graphs): whatever time is left"),
)
FIELDS = ("name", "samples_per_second", "mfu", "mfu_dense_head", "step_ms", "peak_memory_gib", "attention_kernel",
          "kernel_busy_s", "wall_s", "busy_fraction", "failed", "error")
KERNEL_TABLE_FOR = ("compiled_batch_512",)
# The real script: epochs enough for ~90 s on an H200 (36 steps of batch 32 per epoch on the sample), stopped at
# the time limit if they are not (a preemption signal: it stops at a step boundary with every evaluation kept).
REAL_SCRIPT_EPOCHS = {"gpu": 30, "dry": 2}
REAL_SCRIPT_SECONDS = {"gpu": 90, "dry": 120}
# Seconds the real script needs after its stop signal: the step boundary, a checkpoint, reading its run folder.
REAL_SCRIPT_STOP_MARGIN_S = 35


def variant_names() -> list[str]:
    return [name for name, _, _ in VARIANTS]


def normalised(name: str, measured: dict[str, Any]) -> dict[str, Any]:
    """Every record has FIELDS (None where a variant cannot say), then its own details."""
    return {**{k: None for k in FIELDS}, **measured, "name": name, "failed": bool(measured.get("failed"))}


def environment_record(dry_run: bool) -> dict[str, Any]:
    import torch

    from bench.common import environment
    from train.common.throughput import peak_tflops_for
    cuda = not dry_run and torch.cuda.is_available()
    if not dry_run and not cuda:
        raise SystemExit("torch sees no GPU (torch.cuda.is_available() is False); on a CPU run with --dry-run")
    info = environment("cuda" if cuda else "cpu")
    info["peak_tflops"] = peak_tflops_for(info["device_name"])
    info["peak_tflops_from"] = "train.common.throughput.PEAK_TFLOPS (dense bf16)"
    info["cuda"] = torch.version.cuda
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(capability=list(torch.cuda.get_device_capability(0)), memory_gib=props.total_memory / 2 ** 30,
                    multiprocessors=props.multi_processor_count, cudnn=torch.backends.cudnn.version(),
                    sdpa_backends={name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")()
                                   for name in ("flash", "mem_efficient", "cudnn", "math")})
    return info


def real_script_record(dry_run: bool, limit_s: float | None) -> dict[str, Any]:
    """train/pretrain.py main() in this process, bert_base.yaml on the shipped WikiText sample; stopped early enough
    that its record is written within this process's time limit `limit_s`."""
    import yaml

    from bench.common import mixed_precision_env, restored_signal_handlers, stdout_to_stderr, summarize
    from bench.gpu_profile import TINY, peak_memory
    from train.common.run_folder import RunFolder
    from train.pretrain import main
    kind = "dry" if dry_run else "gpu"
    folder = Path(os.environ["HF_DATASETS_CACHE"]).parent  # run_variant's, set before `datasets` was imported
    argv = ["--config", str(REPO / "train/configs/bert_base.yaml"), "--train_file", str(SAMPLE / "sample-train.raw"),
            "--validation_file", str(SAMPLE / "sample-test.raw"), "--train_tokenizer", "4000" if dry_run else "30522",
            "--num_train_epochs", str(REAL_SCRIPT_EPOCHS[kind]), "--logging_steps", "10", "--checkpointing_steps",
            "none", "--report_to", "none", "--disable_progress_bar", "--output_dir", str(folder / "run"),
            "--overwrite_output_dir"]
    if dry_run:
        argv += [x for k, v in TINY.items() for x in (f"--{k}", str(v))]
    fired = threading.Event()

    def stop_the_run():  # SIGTERM is the script's preemption signal: it stops at a step boundary, checkpointed
        fired.set()
        os.kill(os.getpid(), signal.SIGTERM)
    seconds = REAL_SCRIPT_SECONDS[kind] if limit_s is None else min(REAL_SCRIPT_SECONDS[kind],
                                                                    limit_s - REAL_SCRIPT_STOP_MARGIN_S)
    alarm = threading.Timer(max(seconds, 1.0), stop_the_run)
    start = time.perf_counter()
    try:
        with mixed_precision_env("bf16"), stdout_to_stderr(), restored_signal_handlers():
            alarm.start()
            rc = main(argv)
            alarm.cancel()
        wall = time.perf_counter() - start
        if rc != 0:
            raise RuntimeError(f"train/pretrain.py main() returned {rc}")
        run = RunFolder(folder / "run")
        train = [r for r in run.read_metrics() if "split" not in r and "samples_per_second" in r][1:]  # 1st: warm-up
        evals = json.loads((folder / "run" / "eval_results.json").read_text())["epochs"]
    finally:
        alarm.cancel()
        shutil.rmtree(folder, ignore_errors=True)
    if not evals:
        raise RuntimeError("train/pretrain.py ran no evaluation before its time limit; fewer steps per epoch needed")

    def median(key: str) -> float | None:
        return summarize([r[key] for r in train if r.get(key) is not None])["median"]
    batch = yaml.safe_load((REPO / "train/configs/bert_base.yaml").read_text())["per_device_train_batch_size"]
    sps = median("samples_per_second")
    last = evals[-1]
    return {"what": "train/pretrain.py main(), train/configs/bert_base.yaml, data/sample WikiText (train: "
                    "sample-train.raw, validation: sample-test.raw), WordPiece trained on it, bf16",
            "samples_per_second": sps, "step_ms": 1000.0 * batch / sps if sps else None,
            "mfu": median("mfu"), "mfu_dense_head": median("mfu_dense_head"), "run_wall_s": wall,
            **peak_memory(),
            "batch_size": batch, "epochs_requested": REAL_SCRIPT_EPOCHS[kind],
            "stopped_at_time_limit": fired.is_set(), "time_limit_s": seconds,
            "evaluations": [{k: e.get(k) for k in ("epoch", "step", "perplexity", "unigram_perplexity", "nsp_accuracy",
                                                   "nsp_majority_accuracy")} for e in evals],
            "beats_unigram": last["perplexity"] < last["unigram_perplexity"],
            "nsp_above_majority": last["nsp_accuracy"] > last["nsp_majority_accuracy"],
            "attention_kernel_note": "the loop is not profiled; the step variants name the kernel"}


def real_loop_record(dry_run: bool) -> dict[str, Any]:
    from bench.gpu_profile import peak_memory
    from bench.gpu_throughput import part_pretrain_ours, plan
    args = argparse.Namespace(tiny=dry_run, batch_size=16 if dry_run else 512, workers=0 if dry_run else 4,
                              precision="bf16")
    measured = part_pretrain_ours(args, plan(args), compiled=not dry_run)
    sps = (measured["samples_per_second"] or {}).get("median")
    return {**measured, "samples_per_second": sps, "batch_size": args.batch_size,
            "step_ms": 1000.0 * args.batch_size / sps if sps else None,
            "mfu": (measured["mfu"] or {}).get("median"),
            "mfu_dense_head": (measured.get("mfu_dense_head") or {}).get("median"),
            **peak_memory(), "compiled": not dry_run,
            "attention_kernel_note": "the loop is not profiled; the step variants name the kernel"}


def run_variant(name: str, dry_run: bool, limit_s: float | None = None) -> dict[str, Any]:
    if name == "real_script_bert_base":  # its vocabulary and instances are built afresh, in a folder of its own
        if importlib.util.find_spec("datasets") is None:
            raise RuntimeError("`datasets` is not installed here (train/pretrain.py reads text with it): carry its "
                               "wheels in .whl/ as bench/README.md's section 4 says")
        os.environ["HF_DATASETS_CACHE"] = str(Path(tempfile.mkdtemp(prefix="gpu-check-real-")) / "cache")
    else:
        sys.modules["datasets"] = None  # as on the GPU machine: `import datasets` fails
    if dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from bench.common import quiet_libraries, set_offline_env
    set_offline_env()
    quiet_libraries()
    if name == "environment":
        return environment_record(dry_run)
    import torch
    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("torch sees no GPU (torch.cuda.is_available() is False); on a CPU run with --dry-run")
    if name == "real_script_bert_base":
        return real_script_record(dry_run, limit_s)
    if name == "real_loop_batch_512":
        return real_loop_record(dry_run)
    from bench.gpu_profile import measure_step_variant
    return measure_step_variant(name, "cpu" if dry_run else "cuda", tiny=dry_run, kernel_table=name in KERNEL_TABLE_FOR,
                                compile_backend="eager" if dry_run else "inductor")


def write_summary(folder: Path) -> dict[str, Any]:
    """OUT/summary.json from every variant record written so far, in VARIANTS order."""
    records = {}
    for name in variant_names():
        path = folder / "variants" / f"{name}.json"
        if path.exists():
            try:
                records[name] = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                records[name] = normalised(name, {"failed": True, "error": f"{path}: unreadable JSON ({err})"})
    environment = records.pop("environment", None)
    variants = list(records.values())
    measured = [v for v in variants if not v.get("failed") and v.get("mfu") is not None]
    best = max(measured, key=lambda v: v["mfu"], default=None)
    summary = {"benchmark": "gpu_check", "environment": environment, "variants": variants,
               "best": {"name": best["name"], "mfu": best["mfu"], "mfu_dense_head": best["mfu_dense_head"],
                        "samples_per_second": best["samples_per_second"]} if best else None,
               "mfu_target": MFU_TARGET, "target_met": bool(best and best["mfu"] >= MFU_TARGET)}
    tmp = folder / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    tmp.replace(folder / "summary.json")  # whole or absent, whenever the time limit strikes
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", action="store_true", help="Print 'name seconds' per variant, in order.")
    parser.add_argument("--variant", choices=variant_names())
    parser.add_argument("--failed", metavar="ERROR", help="Write a failed record for --variant with this error.")
    parser.add_argument("--summary", metavar="OUT", help="Rewrite OUT/summary.json from OUT/variants/.")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, one thread (the test's run).")
    parser.add_argument("--out", help="The variant's JSON file.")
    parser.add_argument("--limit_s", type=float, help="The time limit this process runs under (the real script "
                                                      "stops in time to write its record).")
    args = parser.parse_args(argv)
    if args.plan:
        print("\n".join(f"{name} {seconds}" for name, seconds, _ in VARIANTS))
        return 0
    if args.summary:
        write_summary(Path(args.summary))
        return 0
    if not (args.variant and args.out):
        parser.error("give --plan, --summary OUT, or --variant NAME --out FILE")
    if args.failed is not None:
        record = normalised(args.variant, {"failed": True, "error": args.failed})
    else:
        started = time.perf_counter()
        try:
            measured = run_variant(args.variant, args.dry_run, args.limit_s)
        except (Exception, SystemExit) as err:  # the record says why; the traceback goes to gpu_check.log
            traceback.print_exc()
            measured = {"failed": True, "error": f"{type(err).__name__}: {str(err)[:2000]}"}
        # The environment is summary.json's own key, not a measured variant.
        record = {"name": "environment", **measured} if args.variant == "environment" else normalised(
            args.variant, measured)
        record["process_seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return 1 if record.get("failed") and args.failed is None else 0


if __name__ == "__main__":
    sys.exit(main())
