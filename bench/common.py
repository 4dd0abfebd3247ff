"""Helpers every benchmark shares: environment record, statistics, targets, JSON output, the
Trainer step timer, and synthetic data for machines without `datasets` (the GPU check).

Nothing here imports `datasets`, so the GPU check can use it with only torch + transformers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
WIKITEXT_TEST = SHARED_DATA / "wikitext-2-raw" / "wiki.test.raw"
SQUAD_DEV = SHARED_DATA / "squad" / "dev-v1.1.json"
SST_DIR = SHARED_DATA / "sst"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def set_offline_env() -> None:
    """The hub is unreachable here; without these every miss costs 20-40 s of retries."""
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def package_version(name: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: str) -> dict[str, Any]:
    import torch
    info: dict[str, Any] = {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in ("torch", "transformers", "accelerate", "datasets",
                                                                "tokenizers")},
        "hostname": platform.node(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return info


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median (the reported number), spread, and the raw values."""
    values = [float(v) for v in values]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": [round(v, 6) for v in values]}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 1])."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def fast_phase_ratio(ours: Sequence[float], baseline: Sequence[float], q: float = 0.9) -> dict[str, Any]:
    """Neighbours only ever slow a step down, so the 90th percentile of each side's per-step throughput is
    its speed in the machine's quiet phases; their ratio is robust to contention bursts."""
    a, b = percentile(ours, q), percentile(baseline, q)
    return {"what": f"p{int(q * 100)} of our per-step samples/s over p{int(q * 100)} of the baseline's (all "
                    "steady-state steps of all repetitions): the ratio in the machine's quiet phases",
            "ours": a, "baseline": b, "ratio": safe_ratio(a, b)}


def safe_ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or not math.isfinite(a) or not math.isfinite(b):
        return None
    return a / b


def target(name: str, value: float | None, threshold: float, higher_is_better: bool = True,
           note: str = "") -> dict[str, Any]:
    met = value is not None and (value >= threshold if higher_is_better else value <= threshold)
    record = {"name": name, "value": value, "threshold": threshold,
              "comparison": ">=" if higher_is_better else "<=", "target_met": bool(met)}
    if note:
        record["note"] = note
    return record


def emit(result: dict[str, Any], out: str | None) -> None:
    """ONE JSON object on stdout (everything else the benchmark printed went to stderr)."""
    text = json.dumps(result, indent=2, allow_nan=False, default=str)
    sys.__stdout__.write(text + "\n")
    sys.__stdout__.flush()
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


@contextlib.contextmanager
def stdout_to_stderr():
    """Libraries print (Trainer's PrinterCallback, progress lines); keep stdout for the JSON."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def quiet_libraries() -> None:
    import logging
    for name in ("transformers", "accelerate", "datasets", "train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import transformers
        transformers.logging.set_verbosity_warning()
    except ImportError:
        pass
    try:
        import datasets
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_warning()
    except ImportError:
        pass


def reset_accelerate_state() -> None:
    """Several Accelerators (our loop, then a Trainer) in one process need a clean singleton."""
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@contextlib.contextmanager
def mixed_precision_env(precision: str):
    """Our scripts take precision from the accelerate config, i.e. ACCELERATE_MIXED_PRECISION."""
    old = os.environ.get("ACCELERATE_MIXED_PRECISION")
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16" if precision == "bf16" else "no"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ACCELERATE_MIXED_PRECISION", None)
        else:
            os.environ["ACCELERATE_MIXED_PRECISION"] = old


@contextlib.contextmanager
def restored_signal_handlers():
    """The training scripts install SIGTERM/SIGUSR1 handlers that only set a preemption flag and never put
    the old ones back; after an in-process main() the benchmark must stay killable (timeout, Ctrl-C)."""
    import signal
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def peak_rss_mib() -> float:
    """High-water mark of this process's resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def steady_state(values: Sequence[float], warmup: int) -> list[float]:
    if len(values) <= warmup:
        raise ValueError(f"{len(values)} measured steps leave nothing after {warmup} warm-up steps; raise --steps")
    return list(values[warmup:])


def make_step_timer():
    """A TrainerCallback recording the wall time of each optimizer step of a Trainer, measured the
    way our loop measures it: from the end of one step to the end of the next (data loading,
    forward, backward, clip, optimizer and scheduler step, the Trainer's bookkeeping)."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.cpu_times: list[float] = []
            self.start: float | None = None
            self.cpu_start: float | None = None

        def _now(self) -> float:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.cpu_start = self._now(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(self._now())
            self.cpu_times.append(time.process_time())

        def intervals(self) -> list[float]:
            marks = [self.start] + self.times
            return [b - a for a, b in zip(marks, marks[1:], strict=False)]

        def cpu_intervals(self) -> list[float]:
            """CPU seconds of this process (all its threads) per step: what neighbours on a shared machine
            change least (they steal wall time, not our CPU time)."""
            marks = [self.cpu_start] + self.cpu_times
            return [b - a for a, b in zip(marks, marks[1:], strict=False)]

    return StepTimer()


# ---------------------------------------------------------------------------------------------
# Synthetic data (the GPU machine has no `datasets` and no vocabulary files)
# ---------------------------------------------------------------------------------------------

class SyntheticBertVocab:
    """Stands in for a bert-base-uncased tokenizer where only ids matter: the collator needs the
    special ids, the vocabulary size and which pieces are ## continuations."""

    pad_token_id, unk_token_id, cls_token_id, sep_token_id, mask_token_id = 0, 100, 101, 102, 103

    def __init__(self, vocab_size: int = 30522):
        self.vocab_size = vocab_size
        self.all_special_ids = [self.pad_token_id, self.unk_token_id, self.cls_token_id, self.sep_token_id,
                                self.mask_token_id]

    def __len__(self) -> int:
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        # The upper third are continuation pieces, roughly as in the real vocabulary.
        return {(f"##w{i}" if i > 2 * self.vocab_size // 3 else f"w{i}"): i for i in range(self.vocab_size)}

    def save_pretrained(self, folder: str) -> None:
        """The training script exports its tokenizer with the model; there is none to save here."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "SYNTHETIC_VOCAB.txt").write_text(f"synthetic ids, vocab_size {self.vocab_size}\n")


class ColumnDataset:
    """Minimal in-memory table with the two access patterns IndexedDataset uses from
    `datasets.Dataset`: row by int, columns by a list of ints."""

    def __init__(self, columns: dict[str, list]):
        self.columns = columns
        self.length = len(next(iter(columns.values())))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key):
        if isinstance(key, (list, tuple)):
            return {name: [values[i] for i in key] for name, values in self.columns.items()}
        return {name: values[int(key)] for name, values in self.columns.items()}


def synthetic_nsp_instances(count: int, seq_len: int, vocab: SyntheticBertVocab, seed: int = 0) -> ColumnDataset:
    """Full-length [CLS] A [SEP] B [SEP] instances of random ordinary tokens with an NSP label (bert-base
    pretraining at 128 tokens is ~90% full-length instances, so this is the realistic heavy case)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    first_ordinary = 999  # bert-base-uncased: [unused*] and the specials sit below 999
    body = seq_len - 3
    tokens = rng.integers(first_ordinary, vocab.vocab_size, size=(count, body)).tolist()
    a_lengths = rng.integers(1, body, size=count).tolist()
    columns: dict[str, list] = {"input_ids": [], "token_type_ids": [],
                                "next_sentence_label": rng.integers(0, 2, size=count).tolist()}
    for row, a_len in zip(tokens, a_lengths, strict=True):
        columns["input_ids"].append([vocab.cls_token_id, *row[:a_len], vocab.sep_token_id, *row[a_len:],
                                     vocab.sep_token_id])
        columns["token_type_ids"].append([0] * (a_len + 2) + [1] * (body - a_len + 1))
    return ColumnDataset(columns)


def describe_shape(config) -> dict[str, Any]:
    return {k: getattr(config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                            "intermediate_size", "max_position_embeddings")}


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def machine_probe(repeats: int = 5) -> float:
    """Seconds for a fixed CPU matmul workload (best of `repeats`). The 2-core machines are shared:
    recorded next to every timed run, it shows when a neighbour was competing for the cores."""
    import torch
    a = torch.randn(384, 384)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(8):
            a @ a
        best = min(best, time.perf_counter() - start)
    return best


def cpu_timed_interval_timer(base):
    """A subclass of train.common.throughput.IntervalTimer that also records this process's CPU time at
    every log point (the loop logs every step in the benchmarks). Instances register in `.instances`."""

    class CpuTimedIntervalTimer(base):
        instances: list = []

        def __init__(self):
            super().__init__()
            self.cpu_marks = [time.process_time()]
            CpuTimedIntervalTimer.instances.append(self)

        def seconds_and_reset(self) -> float:
            seconds = super().seconds_and_reset()
            self.cpu_marks.append(time.process_time())
            return seconds

        def cpu_intervals(self) -> list[float]:
            return [b - a for a, b in zip(self.cpu_marks, self.cpu_marks[1:], strict=False)]

    return CpuTimedIntervalTimer


def flatten(items: Iterable[Iterable[float]]) -> list[float]:
    return [v for group in items for v in group]
