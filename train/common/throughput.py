"""Throughput and model FLOPs utilisation (MFU).

Training FLOPs of a BERT batch (multiply-adds count 2, backward = 2x forward, so 3x forward)::

    flops = 3 * ( T * L * (8 h^2 + 4 h i)          # QKV + output projections, FFN, per token
                + L * 4 h * sum_s(len_s^2)          # QK^T and attention-weighted values, per sequence
                + M * (2 h^2 + 2 h V) )             # MLM transform + decoder at the M predicted tokens

with T non-padding tokens, L layers, hidden h, FFN size i, vocabulary V. Only the work the
objective needs counts (model FLOPs, not hardware FLOPs): padding, recomputation and a dense MLM
decoder at unmasked positions are not useful work, so an implementation that skips them is not
penalised, and one that does them is not rewarded. The pooler and NSP head (2 h^2 + 4 h per
sequence) are negligible and left out. MFU = FLOPs per second / (peak of one device x devices),
with the peak for bf16/fp16 dense matrix work from the table below or --peak_tflops.
"""

from __future__ import annotations

import time

import torch

# Dense bf16/fp16 tensor-core peaks in TFLOP/s, from the vendors' data sheets.
PEAK_TFLOPS = {
    # torch names the SXM part "NVIDIA H200" and the PCIe card "NVIDIA H200 NVL" (the longer key wins).
    "H200": 989.4, "H200 SXM": 989.4, "H200 NVL": 835.0,
    "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0,
    "GH200": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10G": 70.0, "A10": 125.0,
    "V100": 125.0, "T4": 65.0, "RTX 4090": 165.2, "RTX 3090": 71.0,
}


def peak_tflops_for(device_name: str, override: float | None = None) -> float | None:
    if override:
        return override
    # Longest key first so "H100 PCIe" wins over a shorter, more general match.
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_TFLOPS[key]
    if "h100" in device_name.lower():
        return PEAK_TFLOPS["H100 SXM"]
    return None


def bert_training_flops(config, tokens: float, sum_len_sq: float, predicted_tokens: float) -> float:
    h, i, layers, vocab = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    forward = (tokens * layers * (8 * h * h + 4 * h * i) + layers * 4 * h * sum_len_sq
               + predicted_tokens * (2 * h * h + 2 * h * vocab))
    return 3.0 * forward


def dense_head_training_flops(config, tokens: float, sum_len_sq: float) -> float:
    """The same batch counted as published BERT figures count it: the MLM decoder at every token (what a dense
    head computes), so an MFU from this is comparable with theirs; it is not the work our objective needs."""
    return bert_training_flops(config, tokens, sum_len_sq, tokens)


class IntervalTimer:
    """Wall time of the training work between two log points; eval and checkpoints are excluded
    by pausing. Work counts are summed on the device by the loop (no host sync per step)."""

    def __init__(self):
        self._elapsed = 0.0
        self._started: float | None = time.perf_counter()

    def pause(self) -> None:
        if self._started is not None:
            self._elapsed += time.perf_counter() - self._started
            self._started = None

    def resume(self) -> None:
        if self._started is None:
            self._started = time.perf_counter()

    def seconds_and_reset(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.pause()
        seconds = max(self._elapsed, 1e-9)
        self._elapsed = 0.0
        self.resume()
        return seconds


def mfu(flops: float, seconds: float, num_devices: int, peak_tflops: float | None) -> float | None:
    if not peak_tflops:
        return None
    return flops / seconds / (peak_tflops * 1e12 * num_devices)
