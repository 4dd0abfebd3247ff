"""Where a pretraining step's time goes on one GPU: the step variants of bench/gpu_check.sh, and a CLI that runs
several of them in one process.

    python -m bench.gpu_profile --out bench_out/gpu_profile.json                  # bert-base, 256 x 128, bf16
    python -m bench.gpu_profile --device cpu --tiny                               # dry run

Times the step of train/pretrain.py WITHOUT its loop (batches collated once and kept on the device; the
objective, autocast, clip and fused AdamW from train.common), so that the gap between the loop's throughput
and the model's own is visible, and what inside the model costs. A variant is named by tokens:
  sparse          (no token) PretrainingObjective with the sparse MLM head fed the collator's fixed-width
                  position table (the script's step); the batch carries its all-ones attention mask
  no_mask         the collator leaves the mask out of unpadded batches (what the script does): the encoder gets
                  attention_mask=None, so SDPA may take its flash / no-mask kernels
  fused           the encoder as train/common/fused_encoder.py writes it (--fused_encoder)
  packed          instances of 1/4 to all of the row length (uniform), packed whole into rows (--pack_sequences):
                  the batch size counts instances, MFU counts their tokens and per-instance attention; with fused,
                  flash's varlen kernel on the GPU, checked first against the Hugging Face block-diagonal path
                  (`packed_check`: dropout off, loss and gradients of the same batch)
  boolean_index   the sparse head finding the masked positions by boolean indexing (a data-dependent size:
                  one device->host sync per forward, and a graph break under torch.compile)
  dense           the dense MLM head (what BertForPreTraining's own loss computes)
  no_dropout      hidden and attention dropout 0 (dropout kernels and their masks cost)
  sync_per_step   one device->host sync per step (what the loop did before its agreement waited)
  batch_512       twice the batch
  compiled        the whole objective compiled in place (what --torch_compile does)
  encoder_compiled  only the encoder compiled (what --torch_compile did before the position table)
  bf16_weights    the whole model cast to bf16 (no fp32 master weights: a ceiling, not a recipe)
  max_autotune    compiled with mode="max-autotune-no-cudagraphs" (Triton/cuBLAS choices autotuned: minutes)
  cudagraphs      compiled with mode="reduce-overhead" (CUDA graphs; both: mode="max-autotune")
e.g. fused_compiled_cudagraphs_batch_512_no_mask. Every variant is profiled for 3 steps after its timing
(torch.profiler): the attention kernel it ran, kernel-busy time against wall time, and for the variants in
--profile a table of the top kernels (CUDA time, grouped by kind).
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

BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
             "max_position_embeddings": 512}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256,
        "max_position_embeddings": 512}
PROFILED_STEPS = 3


def kernel_kind(name: str) -> str:
    n = name.lower()
    if n.startswith("triton_"):
        # Inductor's generated kernels: fused pointwise/reduction work (matmuls stay in cuBLAS unless
        # max-autotune picks a triton template: those names contain "mm").
        return "matmul" if "_mm" in n or "bmm" in n else "compiled fused (triton)"
    if any(k in n for k in ("gemm", "cutlass", "sm90_xmma", "cublas", "matmul", "nvjet")) or n in (
            "aten::mm", "aten::addmm", "aten::bmm"):  # the last: CPU dry runs, where ops stand for kernels
        return "matmul"
    if any(k in n for k in ("flash", "fmha", "attention", "efficient", "sdpa", "scaled_dot_product")):
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


def peak_memory() -> dict[str, Any]:
    """This process's peak memory: the CUDA allocator's on a GPU, else the resident set (a CPU dry run)."""
    import torch

    from bench.common import peak_rss_mib
    if torch.cuda.is_available():
        return {"peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
                "peak_memory_of": "torch.cuda.max_memory_allocated"}
    return {"peak_memory_gib": peak_rss_mib() / 1024.0, "peak_memory_of": "process peak RSS (CPU)"}


def compile_mode(variant: str) -> str | None:
    autotune, graphs = "max_autotune" in variant, "cudagraphs" in variant
    return {(False, False): None, (True, False): "max-autotune-no-cudagraphs", (False, True): "reduce-overhead",
            (True, True): "max-autotune"}[(autotune, graphs)]


def is_compiled(variant: str) -> bool:
    return any(k in variant for k in ("compiled", "max_autotune", "cudagraphs"))


def kernel_profile(step, data, device, table: bool) -> dict[str, Any]:
    """PROFILED_STEPS steps under torch.profiler: the attention kernel seen, kernel-busy vs wall time and, with
    `table`, the top kernels. On CPU the 'kernels' are the aten ops (self CPU time): a dry run of the shape only."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for i in range(PROFILED_STEPS):
            step(data[i % len(data)])
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    key = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    # On CUDA the aten:: rows are the host side of the kernels below them; their self device time is 0.
    kernels = [e for e in prof.key_averages() if key(e) > 0 and (not cuda or not e.key.startswith("aten::"))]
    busy_us = sum(key(e) for e in kernels)
    attention = sorted((e for e in kernels if kernel_kind(e.key) == "attention"), key=key, reverse=True)
    result = {"attention_kernel": attention[0].key[:160] if attention else None,
              "attention_kernels": [e.key[:160] for e in attention[:4]],
              "kernel_busy_s": busy_us / 1e6, "wall_s": wall,
              "busy_fraction": busy_us / 1e6 / wall if wall > 0 else None,
              "profiled_steps": PROFILED_STEPS,
              "measured": "self CUDA time of kernels" if cuda else "self CPU time of aten ops (CPU dry run)"}
    if table:
        total = busy_us or 1.0
        kinds: dict[str, float] = {}
        for e in kernels:
            kinds[kernel_kind(e.key)] = kinds.get(kernel_kind(e.key), 0.0) + key(e)
        result["kernel_table"] = {
            "total_ms_per_step": total / PROFILED_STEPS / 1000.0,
            "by_kind_fraction": {k: round(v / total, 4) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top": [{"name": e.key[:120], "kind": kernel_kind(e.key),
                     "ms_per_step": round(key(e) / PROFILED_STEPS / 1000.0, 3), "fraction": round(key(e) / total, 4),
                     "calls_per_step": e.count / PROFILED_STEPS}
                    for e in sorted(kernels, key=key, reverse=True)[:20]]}
    return result


def measure_step_variant(variant: str, device_type: str = "cuda", tiny: bool = False, batch_size: int | None = None,
                         steps: int | None = None, kernel_table: bool = False,
                         compile_backend: str = "inductor") -> dict[str, Any]:
    """One variant's step: median step time, samples/s, MFU (our FLOPs and dense-head FLOPs), peak memory and its
    kernel profile. compile_backend "eager" (the CPU dry run) traces with dynamo but generates no code: the
    compile modes are then only named, not applied."""
    import torch
    from transformers import BertConfig

    from bench.common import SyntheticBertVocab, summarize
    from train.common.data.masking import PretrainingCollator, max_predictions_per_seq
    from train.common.models import PretrainingObjective, build_pretraining_model
    from train.common.optim import parameter_groups
    from train.common.throughput import bert_training_flops, dense_head_training_flops, peak_tflops_for

    device = torch.device(device_type)
    cuda = device.type == "cuda"
    shape = TINY if tiny else BERT_BASE
    seq = 32 if tiny else 128
    batch_size = (batch_size or (8 if tiny else 256)) * (2 if "batch_512" in variant else 1)
    steps = steps or (4 if tiny else 20)
    vocab = SyntheticBertVocab()
    position_table = "boolean_index" not in variant and "dense" not in variant
    collate = PretrainingCollator(vocab, seed=0, omit_full_attention_mask="no_mask" in variant,
                                  mlm_positions_per_row=max_predictions_per_seq(0.15, seq) if position_table else None)
    packed = "packed" in variant
    collate.pack_to_length = seq if packed else None
    examples = synthetic_examples(batch_size * 4, seq, vocab, variable_length=packed)
    host_batches = [collate(examples[b * batch_size:(b + 1) * batch_size]) for b in range(4)]
    data = [{k: v.to(device) for k, v in batch.items()} for batch in host_batches]
    dropout = 0.0 if "no_dropout" in variant else 0.1
    config = BertConfig(vocab_size=len(vocab), hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                        **shape)
    torch._dynamo.reset()  # each variant compiles afresh (and never hits the recompilation limit)
    torch.manual_seed(0)
    model = PretrainingObjective(build_pretraining_model(config, "sdpa"), sparse_mlm_head="dense" not in variant,
                                 fused_encoder="fused" in variant).to(device)
    if "bf16_weights" in variant:
        model.to(torch.bfloat16)  # a ceiling only: no fp32 master weights
    forward, mode = model, compile_mode(variant)
    if "encoder_compiled" in variant:
        model.model.bert.compile(backend=compile_backend)
    elif is_compiled(variant):
        forward = torch.compile(model, backend=compile_backend, mode=mode if compile_backend == "inductor" else None)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-4, fused=cuda)
    masked = sum(int((b["labels"] != -100).sum()) for b in host_batches) / len(data)
    lengths = [len(e["input_ids"]) for e in examples]
    tokens = sum(lengths) / len(data)  # per batch: every token is real (full-length or packed instances)
    attention_pairs = sum(n * n for n in lengths) / len(data)
    flops = bert_training_flops(config, tokens, attention_pairs, masked)
    dense_flops = dense_head_training_flops(config, tokens, attention_pairs)
    packing = packing_record(model, data[0], host_batches, seq) if packed else {}

    def step(batch):
        if "cudagraphs" in variant:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            sums = forward(**batch)
        loss = sums.mlm_nll.sum() / sums.masked_tokens.sum() + sums.nsp_nll.sum() / batch_size  # packed: per row
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if "sync_per_step" in variant:
            loss.item()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(3):  # compilation, CUDA graph capture, allocator warm-up
        step(data[i % len(data)])
    if cuda:
        torch.cuda.synchronize()
    warmup_seconds = time.perf_counter() - start
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step(data[i % len(data)])
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    peak = peak_tflops_for(torch.cuda.get_device_name(0)) if cuda else None
    return {"batch_size": batch_size, "seq_len": seq, "model": shape, "steps": steps,
            "compile": {"mode": mode, "backend": compile_backend} if is_compiled(variant) else None,
            "samples_per_second": batch_size / seconds, "step_ms": seconds * 1000.0,
            "step_seconds": summarize(times), "warmup_seconds": warmup_seconds,
            "mfu": flops / seconds / (peak * 1e12) if peak else None,
            "mfu_dense_head": dense_flops / seconds / (peak * 1e12) if peak else None,
            **packing, **peak_memory(), **profiled(step, data, device, kernel_table)}


def synthetic_examples(count: int, seq: int, vocab, variable_length: bool) -> list[dict[str, Any]]:
    """The collator's input: full-length NSP instances, or (variable_length) each cut to a length drawn uniformly
    from seq/4 .. seq (a corpus of short documents: what packing is for)."""
    import numpy as np

    from bench.common import synthetic_nsp_instances
    from train.common.data.masking import IndexedDataset
    examples = IndexedDataset(synthetic_nsp_instances(count, seq, vocab, seed=1)).__getitems__(list(range(count)))
    if not variable_length:
        return examples
    lengths = np.random.default_rng(2).integers(seq // 4, seq + 1, size=count)
    return [{**e, "input_ids": e["input_ids"][:n], "token_type_ids": e["token_type_ids"][:n]}
            for e, n in zip(examples, lengths.tolist(), strict=True)]


def packing_record(model, batch, host_batches, seq: int) -> dict[str, Any]:
    """What packing saved (padding fractions packed vs padded to the row length, rows per batch) and, for the
    fused encoder, `packed_check`: its packed attention (flash varlen on a GPU) against the Hugging Face
    block-diagonal SDPA path on one batch in the autocast dtype with dropout off: loss and gradient agreement."""
    import torch

    from train.common.fused_encoder import packed_attention_kernel
    rows = [len(b["input_ids"]) for b in host_batches]
    instances = [int((b["cls_positions"] >= 0).sum()) for b in host_batches]
    real = [int((b["sequence_ids"] >= 0).sum()) for b in host_batches]
    record = {"rows_per_batch": rows, "instances_per_row": sum(instances) / sum(rows),
              "padding_fraction_packed": 1.0 - sum(real) / (sum(rows) * seq),
              "padding_fraction_if_padded": 1.0 - sum(real) / (sum(instances) * seq)}
    if not model.fused_encoder:
        return record
    device = batch["input_ids"].device
    head_size = model.config.hidden_size // model.config.num_attention_heads
    probe = torch.zeros(1, device=device, dtype=torch.bfloat16)  # activations as the autocast step has them
    results = {}
    model.eval()  # dropout off in both paths: the same function, two implementations
    try:
        for name, fused in (("fused", True), ("hf_block_diagonal", False)):
            model.fused_encoder = fused
            model.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                sums = model(**batch)
            loss = sums.mlm_nll.sum() / sums.masked_tokens.sum() + sums.nsp_nll.sum() / instances[0]
            loss.backward()
            grads = torch.cat([p.grad.double().flatten() for p in model.parameters() if p.grad is not None])
            results[name] = (float(loss.detach()), grads)
    finally:
        model.fused_encoder = True
        model.zero_grad(set_to_none=True)
        model.train()
    (fused_loss, fused_grads), (hf_loss, hf_grads) = results["fused"], results["hf_block_diagonal"]
    record["packed_check"] = {
        "fused_attention": packed_attention_kernel(probe, head_size), "dtype": "bf16 autocast", "dropout": 0.0,
        "loss_fused": fused_loss, "loss_hf_block_diagonal": hf_loss,
        "loss_relative_difference": abs(fused_loss - hf_loss) / abs(hf_loss),
        "gradient_cosine": float(torch.nn.functional.cosine_similarity(fused_grads, hf_grads, dim=0)),
        "gradient_relative_norm_difference": float((fused_grads - hf_grads).norm() / hf_grads.norm())}
    return record


def profiled(step, data, device, kernel_table: bool) -> dict[str, Any]:
    """The kernel profile, or why there is none: a profiler that fails (CUPTI under CUDA graphs, say) must not
    cost the variant its timing."""
    try:
        return kernel_profile(step, data, device, kernel_table)
    except Exception as err:
        return {"profile_error": f"{type(err).__name__}: {str(err)[:500]}"}


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
    from bench.common import emit, environment, quiet_libraries
    quiet_libraries()
    import torch

    results: dict[str, Any] = {}

    def summary() -> dict[str, Any]:
        return {"benchmark": "gpu_profile", "settings": {"precision": "bf16 autocast",
                                                         "what": "the objective's step without the loop: batches on "
                                                                 "the device, autocast, backward, clip, fused AdamW"},
                "environment": environment(args.device), "variants": results}

    for variant in args.variants.split(","):
        print(f"[gpu_profile] {variant}", file=sys.stderr, flush=True)
        try:
            results[variant] = measure_step_variant(variant, args.device, args.tiny, args.batch_size, args.steps,
                                                    kernel_table=variant in args.profile.split(","))
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
