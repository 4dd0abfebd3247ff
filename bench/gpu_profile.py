"""Where a pretraining step's time goes on one GPU (a diagnostic next to gpu_check.sh, not part of it).

    python -m bench.gpu_profile --out bench_out/gpu_profile.json                  # bert-base, 256 x 128, bf16
    python -m bench.gpu_profile --device cpu --tiny                               # dry run

Times the step of train/pretrain.py WITHOUT its loop (batches collated once and kept on the device; the
objective, autocast, clip and fused AdamW from train.common), in variants, so that the gap between the
loop's throughput (gpu_check) and the model's own is visible, and what inside the model costs:
  sparse          PretrainingObjective with the sparse MLM head fed the collator's fixed-width position table
                  (the script's default step)
  boolean_index   the sparse head finding the masked positions by boolean indexing (a data-dependent size:
                  one device->host sync per forward, and a graph break under torch.compile)
  dense           the dense MLM head (what BertForPreTraining's own loss computes)
  no_dropout      sparse, hidden and attention dropout 0 (dropout kernels and their masks cost)
  sync_per_step   sparse + one device->host sync per step (what the loop did before its agreement waited)
  batch_512       sparse, twice the batch
  compiled        the whole objective compiled in place (what --torch_compile does)
  encoder_compiled  only the encoder compiled (what --torch_compile did before the position table)
  bf16_weights    sparse with the whole model cast to bf16 (no fp32 master weights: a ceiling for
                  "bf16 activations end to end", not a recipe)
  max_autotune    compiled with mode="max-autotune-no-cudagraphs" (Triton/cuBLAS choices autotuned: minutes)
  cudagraphs      compiled with mode="reduce-overhead" (CUDA graphs; both: mode="max-autotune"). Compile modes
                  are what-ifs, not script options
Variant names combine: any name containing boolean_index / dense / compiled / batch_512 / no_dropout /
bf16_weights / max_autotune / cudagraphs gets that (max_autotune and cudagraphs imply compiled), e.g.
compiled_cudagraphs_batch_512. A torch.profiler table of the top kernels (CUDA time, grouped by kind) is
taken for the variants in --profile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_throughput import BERT_BASE, TINY


def kernel_kind(name: str) -> str:
    n = name.lower()
    if n.startswith("triton_"):
        # Inductor's generated kernels: fused pointwise/reduction work (matmuls stay in cuBLAS unless
        # max-autotune picks a triton template: those names contain "mm").
        return "matmul" if "_mm" in n or "bmm" in n else "compiled fused (triton)"
    if any(k in n for k in ("gemm", "cutlass", "sm90_xmma", "cublas", "matmul", "nvjet")):
        return "matmul"
    if any(k in n for k in ("flash", "fmha", "attention", "efficient")):
        return "attention"
    if "layer_norm" in n or "layernorm" in n:
        return "layer_norm"
    if "dropout" in n or "fused_dropout" in n or "bernoulli" in n or "philox" in n:
        return "dropout"
    if "adam" in n or "multi_tensor" in n or "foreach" in n:
        return "optimizer/foreach"
    if "softmax" in n or "cross_entropy" in n or "nll" in n or "log_softmax" in n:
        return "softmax/loss"
    if "gelu" in n:
        return "gelu"
    if "copy" in n or "cast" in n or "to_copy" in n:
        return "copy/cast"
    if "reduce" in n or "norm" in n:
        return "reduction"
    if "index" in n or "nonzero" in n or "gather" in n or "scatter" in n:
        return "index/gather"
    return "elementwise/other"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--variants", default="sparse,boolean_index,dense,batch_512,encoder_compiled,compiled,"
                                              "compiled_batch_512,compiled_cudagraphs_batch_512,"
                                              "compiled_max_autotune_batch_512")
    parser.add_argument("--profile", default="sparse,compiled_batch_512",
                        help="Variants to take a kernel table of (those that run).")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from bench.common import SyntheticBertVocab, emit, environment, quiet_libraries, summarize, synthetic_nsp_instances
    quiet_libraries()
    import torch
    from transformers import BertConfig

    from train.common.data.masking import PretrainingCollator, max_predictions_per_seq
    from train.common.models import PretrainingObjective, build_pretraining_model
    from train.common.optim import parameter_groups
    from train.common.throughput import bert_training_flops, peak_tflops_for

    device = torch.device(args.device)
    shape = TINY if args.tiny else BERT_BASE
    seq = 32 if args.tiny else 128
    base_batch = args.batch_size or (8 if args.tiny else 256)
    steps = args.steps or (4 if args.tiny else 20)
    vocab = SyntheticBertVocab()
    collators = {table: PretrainingCollator(vocab, seed=0, mlm_positions_per_row=max_predictions_per_seq(0.15, seq)
                                            if table else None) for table in (True, False)}
    peak = peak_tflops_for(torch.cuda.get_device_name(0)) if args.device == "cuda" else None

    def batches(batch_size: int, count: int, position_table: bool) -> list[dict[str, torch.Tensor]]:
        data = synthetic_nsp_instances(batch_size * count, seq, vocab, seed=1)
        out = []
        for b in range(count):
            rows = [{**data[i], "index": i} for i in range(b * batch_size, (b + 1) * batch_size)]
            out.append({k: v.to(device) for k, v in collators[position_table](rows).items()})
        return out

    def run(variant: str, profile: bool = False) -> dict[str, Any]:
        batch_size = base_batch * 2 if "batch_512" in variant else base_batch
        dropout = 0.0 if "no_dropout" in variant else 0.1
        config = BertConfig(vocab_size=len(vocab), hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                            **shape)
        torch._dynamo.reset()  # each variant compiles afresh (and never hits the recompilation limit)
        torch.manual_seed(0)
        model = PretrainingObjective(build_pretraining_model(config, "sdpa"),
                                     sparse_mlm_head=variant != "dense").to(device)
        if "bf16_weights" in variant:
            model.to(torch.bfloat16)  # a ceiling only: no fp32 master weights
        forward = model
        if "encoder_compiled" in variant:
            model.model.bert.compile()
        elif any(k in variant for k in ("compiled", "max_autotune", "cudagraphs")):
            autotune, graphs = "max_autotune" in variant, "cudagraphs" in variant
            mode = {(False, False): None, (True, False): "max-autotune-no-cudagraphs",
                    (False, True): "reduce-overhead", (True, True): "max-autotune"}[(autotune, graphs)]
            forward = torch.compile(model, mode=mode)
        optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-4, fused=args.device == "cuda")
        data = batches(batch_size, 4, position_table="boolean_index" not in variant and "dense" not in variant)
        masked = sum(int((b["labels"] != -100).sum()) for b in data) / len(data)
        flops = bert_training_flops(config, batch_size * seq, batch_size * seq * seq, masked)

        def step(batch):
            if "cudagraphs" in variant:
                torch.compiler.cudagraph_mark_step_begin()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                sums = forward(**batch)
            loss = sums.mlm_nll.sum() / sums.masked_tokens.sum() + sums.nsp_nll.mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if variant == "sync_per_step":
                loss.item()

        start = time.perf_counter()
        for i in range(3):
            step(data[i % len(data)])
        if device.type == "cuda":
            torch.cuda.synchronize()
        warmup_seconds = time.perf_counter() - start
        times = []
        for i in range(steps):
            start = time.perf_counter()
            step(data[i % len(data)])
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        result = {"batch_size": batch_size, "step_seconds": summarize(times), "warmup_seconds": warmup_seconds,
                  "samples_per_second": batch_size / seconds,
                  "mfu": flops / seconds / (peak * 1e12) if peak else None}
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with torch_profile(activities=activities) as prof:
                for i in range(3):
                    step(data[i % len(data)])
                if device.type == "cuda":
                    torch.cuda.synchronize()
            events = [e for e in prof.key_averages()
                      if (e.device_time_total if device.type == "cuda" else e.self_cpu_time_total) > 0]
            key = (lambda e: e.self_device_time_total) if device.type == "cuda" else (lambda e: e.self_cpu_time_total)
            kernels = [e for e in events if device.type != "cuda" or not e.key.startswith("aten::")]
            total = sum(key(e) for e in kernels) or 1.0
            kinds: dict[str, float] = {}
            for e in kernels:
                kinds[kernel_kind(e.key)] = kinds.get(kernel_kind(e.key), 0.0) + key(e)
            result["profile"] = {
                "measured": "self CUDA time of kernels over 3 steps" if device.type == "cuda" else "self CPU time",
                "total_ms_per_step": total / 3 / 1000.0,
                "by_kind_fraction": {k: round(v / total, 4) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
                "top": [{"name": e.key[:120], "ms_per_step": round(key(e) / 3 / 1000.0, 3),
                         "fraction": round(key(e) / total, 4), "calls_per_step": e.count / 3}
                        for e in sorted(kernels, key=key, reverse=True)[:20]]}
        return result  # the model and optimizer go with this frame

    results: dict[str, Any] = {}

    def summary() -> dict[str, Any]:
        return {"benchmark": "gpu_profile", "settings": {"model": shape, "seq_len": seq, "batch_size": base_batch,
                                                         "precision": "bf16 autocast", "steps": steps,
                                                         "what": "the objective's step without the loop: batches on "
                                                                 "the device, autocast, backward, clip, fused AdamW"},
                "environment": environment(args.device), "variants": results}

    for variant in args.variants.split(","):
        print(f"[gpu_profile] {variant}", file=sys.stderr, flush=True)
        try:
            results[variant] = run(variant, profile=variant in args.profile.split(","))
        except Exception as err:  # one variant that does not compile must not cost the others
            results[variant] = {"failed": True, "error": f"{type(err).__name__}: {str(err)[:2000]}"}
        if args.device == "cuda":
            torch.cuda.empty_cache()
        if args.out:  # what is measured so far survives a time limit
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(summary(), indent=2, default=str) + "\n")
    emit(summary(), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
