"""DataLoaders and accumulation windows shared by the training scripts.

Fine-tuning batches for throughput: `PaddingCollator` pads each batch to its longest sequence (rounded up to a
multiple of 8); `LengthGroupedSampler` makes training batches of similar length, deterministically per seed and
epoch; evaluation datasets are sorted by length (`build_eval_dataloader`) and `evaluation.EvalCollector` puts the
gathered outputs back into the original order."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


class ListDataset(Dataset):
    """Feature dicts in memory; `order` (eval) serves them in another order, each tagged with its `index`."""

    def __init__(self, features: Sequence[dict], order: Sequence[int] | None = None):
        self.features = features
        self.order = list(order) if order is not None else None

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        j = self.order[i] if self.order is not None else i
        return {**self.features[j], "index": j}


class PaddingCollator:
    """Pads input_ids / attention_mask / token_type_ids to the batch's longest sequence rounded up to a multiple of
    `multiple_of` (never beyond `max_length`); every other field is one number per example."""

    def __init__(self, pad_token_id: int, multiple_of: int, max_length: int):
        self.pad = {"input_ids": pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        self.multiple_of, self.max_length = multiple_of, max_length

    def __call__(self, features: list[dict]) -> dict:
        longest = max(len(f["input_ids"]) for f in features)
        width = max(longest, min(-(-longest // self.multiple_of) * self.multiple_of, self.max_length))
        batch = {}
        for key, value in self.pad.items():
            if key in features[0]:
                rows = [list(f[key]) + [value] * (width - len(f[key])) for f in features]
                batch[key] = torch.tensor(rows, dtype=torch.long)
        for key in features[0]:
            if key not in self.pad:
                batch[key] = torch.tensor([f[key] for f in features])
        return batch


def _epoch_seed(seed: int, epoch: int) -> int:
    digest = hashlib.blake2b(f"group_by_length:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class LengthGroupedSampler(Sampler[int]):
    """Indices of one epoch such that every global batch (per-device batch x processes x accumulation steps: the
    examples of one optimizer step, consecutive in this order; accelerate hands the per-device parts to the ranks
    and the loop to the micro-steps) holds examples of similar length.

    The epoch's permutation (seeded by seed and epoch) is cut into groups of `group_batches` global batches; each
    group is sorted by length (longest first) and cut into global batches; the batches are then shuffled with the
    same generator, and the one holding the longest example goes first (an out-of-memory shows at step 1). The
    samples that do not fill a last global batch stay at the end, where the loaders' drop_last and the loop's
    whole windows leave them out. The order is a function of (seed, epoch, global batch size) only: a resumed run
    sees the same batches, and 2 processes x 4 or 1 x 4 x 2 accumulation steps take the same optimizer steps as
    1 process x 8."""

    def __init__(self, lengths: Sequence[int], global_batch_size: int, seed: int, group_batches: int = 50):
        self.lengths, self.global_batch_size = list(lengths), global_batch_size
        self.seed, self.group_batches, self.epoch = seed, group_batches, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        perm = torch.randperm(len(self.lengths), generator=generator).tolist()
        size = self.global_batch_size
        full = len(perm) // size * size
        batches = []
        for start in range(0, full, size * self.group_batches):
            group = sorted(perm[start:min(start + size * self.group_batches, full)], key=lambda i: -self.lengths[i])
            batches += [group[k:k + size] for k in range(0, len(group), size)]
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        if batches:
            first = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]])
            batches[0], batches[first] = batches[first], batches[0]
        return iter([i for batch in batches for i in batch] + perm[full:])


def keep_length_grouping(train_dataloader, train_state) -> None:
    """The grouped order depends on the global batch size; a run resumed with another process count or batch size
    keeps the first run's grouping, so that the skipped part of the resumed epoch is exactly what was consumed."""
    batch_sampler = train_dataloader.batch_sampler
    sampler = getattr(getattr(batch_sampler, "batch_sampler", batch_sampler), "sampler", None)
    if isinstance(sampler, LengthGroupedSampler):
        if train_state.length_group_batch is None:
            train_state.length_group_batch = sampler.global_batch_size
        sampler.global_batch_size = train_state.length_group_batch


def build_train_dataloader(features: Sequence[dict], collator, opt_args, run_args, data_args,
                           num_processes: int) -> DataLoader:
    dataset = ListDataset(features)
    if not data_args.group_by_length:
        return build_dataloader(dataset, collator, opt_args.per_device_train_batch_size, True,
                                run_args.dataloader_num_workers, run_args.seed)
    global_batch = opt_args.per_device_train_batch_size * num_processes * opt_args.gradient_accumulation_steps
    sampler = LengthGroupedSampler([len(f["input_ids"]) for f in features], global_batch, run_args.seed)
    return DataLoader(dataset, batch_size=opt_args.per_device_train_batch_size, sampler=sampler, drop_last=True,
                      collate_fn=collator, num_workers=default_num_workers(run_args.dataloader_num_workers),
                      pin_memory=torch.cuda.is_available())


def build_eval_dataloader(features: Sequence[dict], collator, batch_size: int,
                          num_workers: int | None) -> DataLoader:
    """Longest first (less padding); EvalCollector restores the original order from each item's `index`."""
    order = sorted(range(len(features)), key=lambda i: (-len(features[i]["input_ids"]), i))
    return DataLoader(ListDataset(features, order), batch_size=batch_size, shuffle=False, drop_last=False,
                      collate_fn=collator, num_workers=default_num_workers(num_workers),
                      pin_memory=torch.cuda.is_available())


class TrainingDataError(ValueError):
    """Data that cannot be trained or evaluated on as given; the message names the source and the fix."""
