"""DataLoaders and accumulation windows shared by the training scripts."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
from torch.utils.data import DataLoader

T = TypeVar("T")


def default_num_workers(requested: int | None) -> int:
    if requested is not None:
        return requested
    return min(4, max(1, (os.cpu_count() or 2) // 2)) if torch.cuda.is_available() else 0


def build_dataloader(dataset, collate_fn, batch_size: int, train: bool, num_workers: int | None,
                     seed: int) -> DataLoader:
    """Training loaders shuffle (accelerate swaps in a seeded, epoch-aware sampler) and drop the
    last partial batch so every rank takes the same number of steps. The loader gets its own
    generator so creating an iterator never consumes the global RNG that dropout uses."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train, collate_fn=collate_fn,
                      num_workers=default_num_workers(num_workers), pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(seed), persistent_workers=False)


def accumulation_windows(batches: Iterable[T], size: int) -> Iterator[list[T]]:
    """Groups of `size` micro-batches, one per optimizer step. A trailing group shorter than
    `size` is dropped (drop_last at optimizer-step granularity), which keeps every step's
    normalisation and accelerate's accumulation counter aligned; the loader is still drained."""
    window: list[T] = []
    for batch in batches:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []


def step_seed(seed: int, step: int, process_index: int) -> int:
    """Seed for the dropout RNG of one optimizer step: a function of (seed, step, rank) only, so
    a resumed run draws exactly the dropout masks the uninterrupted run drew."""
    digest = hashlib.blake2b(f"{seed}:{step}:{process_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF
