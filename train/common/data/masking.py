"""Masked-LM masking as a collator, deterministic per (seed, epoch, example index).

Each example draws its mask from its own generator keyed by (seed, epoch, index). Masks are
therefore the same whatever the batch composition, worker count, number of processes or
resume point, fresh in every training epoch, and FIXED for evaluation (one constant epoch).
Of the ~15% chosen positions 80% become [MASK], 10% a random token and 10% stay unchanged;
special tokens and padding are never chosen. The chosen count is round(p * maskable tokens)
(at least one), as in BERT's data creation, rather than a Bernoulli draw per token.

With `mlm_positions_per_row` the collator also lists each row's masked positions, as BERT's
`masked_lm_positions`: a fixed-width [batch, P] table (P = `max_predictions_per_seq`), so the sparse
MLM head gathers a static number of rows and the whole objective compiles as one graph, with no
device-to-host sync for a data-dependent size.

With `omit_full_attention_mask` a batch without padding (every row as long as the padded width) carries no
`attention_mask`: the host knows it, so the model learns it with no device-to-host sync. The encoder then gets
attention_mask=None (Hugging Face's meaning: attend everywhere), which lets SDPA take its no-mask (flash) kernels
and spares transformers' mask code its `padding_mask.all()` check. A batch with padding keeps its mask. The
signal is the key's absence, so it survives accelerate's DataLoader wrapper (send_to_device moves the tensors
that are there) and DDP; accelerate's dispatch_batches mode (which concatenates several batches by the first
one's keys) would lose it, and the pretraining script's map-style datasets never use that mode.

With `pack_to_length` whole instances are packed greedily, in the order given, into rows of that many tokens (an
instance never splits; a row is closed when the next instance does not fit). Each token carries its instance's
`position_ids` (restarting at 0) and `sequence_ids` (its instance's slot in the row, -1 on padding); the encoder
attends only within an instance. NSP works on `cls_positions` / `next_sentence_label` [rows, max instances per row]
with -1 / IGNORE_INDEX fill. Masks are keyed by each instance's index, so they equal the unpacked ones.
`cu_seqlens` (int32, computed here on the host) lists where each instance, and each row's trailing padding as a
segment of its own, starts in the flattened [rows x length] token stream, plus its end: the offsets that varlen
(flash) attention takes instead of a [rows, length, length] mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

IGNORE_INDEX = -100


def max_predictions_per_seq(mlm_probability: float, max_seq_length: int) -> int:
    """Masked positions per row that every row of up to `max_seq_length` tokens fits in: the collator masks
    round(p x maskable tokens) <= ceil(p x max_seq_length). (Whole-word masking can overshoot by the
    rest of one long word; the collator then widens that batch's table.)"""
    return max(1, math.ceil(mlm_probability * max_seq_length - 1e-9))


class IndexedDataset(torch.utils.data.Dataset):
    """Adds each row's index (the masking key) and fetches whole batches in one Arrow read."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[int(index)], "index": int(index)}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        indices = [int(i) for i in indices]
        columns = self.dataset[indices]
        rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
        for row, index in zip(rows, indices, strict=True):
            row["index"] = index
        return rows


class PretrainingCollator:
    """Pads a batch (to a multiple of 8) and applies MLM masking; keeps NSP labels if present.
    `omit_full_attention_mask`: a batch without padding has no `attention_mask` (see the module docstring)."""

    def __init__(self, tokenizer, mlm_probability: float = 0.15, whole_word_masking: bool = False,
                 seed: int = 0, pad_to_multiple_of: int = 8, mlm_positions_per_row: int | None = None,
                 omit_full_attention_mask: bool = False, pack_to_length: int | None = None):
        self.pack_to_length = pack_to_length
        self.mlm_probability = mlm_probability
        self.omit_full_attention_mask = omit_full_attention_mask
        self.mlm_positions_per_row = mlm_positions_per_row
        self.whole_word_masking = whole_word_masking
        self.seed = seed
        self.epoch = 0
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_id = tokenizer.pad_token_id
        self.mask_id = tokenizer.mask_token_id
        vocab_size = len(tokenizer)
        special = np.zeros(vocab_size, dtype=bool)
        special[[i for i in tokenizer.all_special_ids if i < vocab_size]] = True
        self.special = special
        self.random_pool = np.flatnonzero(~special)  # random replacements are ordinary tokens
        continuation = np.zeros(vocab_size, dtype=bool)
        for token, token_id in tokenizer.get_vocab().items():
            if token.startswith("##") and token_id < vocab_size:
                continuation[token_id] = True
        self.continuation = continuation

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def mask_example(self, input_ids: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        candidates = np.flatnonzero(~self.special[input_ids])
        labels = np.full(input_ids.shape, IGNORE_INDEX, dtype=np.int64)
        if candidates.size == 0:
            return input_ids, labels
        n_mask = max(1, int(round(candidates.size * self.mlm_probability)))
        if self.whole_word_masking:
            chosen = self._whole_words(input_ids, candidates, n_mask, rng)
        else:
            chosen = np.sort(rng.choice(candidates, size=n_mask, replace=False))
        labels[chosen] = input_ids[chosen]
        masked = input_ids.copy()
        action = rng.random(chosen.size)
        masked[chosen[action < 0.8]] = self.mask_id
        to_random = chosen[(action >= 0.8) & (action < 0.9)]
        masked[to_random] = rng.choice(self.random_pool, size=to_random.size)
        return masked, labels

    def _whole_words(self, input_ids: np.ndarray, candidates: np.ndarray, n_mask: int,
                     rng: np.random.Generator) -> np.ndarray:
        # A word = a candidate position plus the ## continuation pieces that directly follow it.
        starts = [p for k, p in enumerate(candidates)
                  if not self.continuation[input_ids[p]] or k == 0 or candidates[k - 1] != p - 1]
        words, start_set = [], set(starts)
        for p in candidates:
            if p in start_set:
                words.append([p])
            else:
                words[-1].append(p)
        chosen: list[int] = []
        for w in rng.permutation(len(words)):
            if len(chosen) >= n_mask:
                break
            if len(chosen) + len(words[w]) > n_mask and chosen:
                continue  # a whole word would overshoot the budget; try a shorter one
            chosen.extend(words[w])
        return np.sort(np.asarray(chosen, dtype=np.int64))

    def position_table(self, labels: np.ndarray) -> dict[str, torch.Tensor]:
        """`mlm_positions` / `mlm_labels` [batch, P]: each row's masked positions in order, then padding
        slots (position 0, label IGNORE_INDEX, so they add nothing to the loss)."""
        selected = labels != IGNORE_INDEX
        counts = selected.sum(axis=1)
        width = max(self.mlm_positions_per_row, int(counts.max(initial=0)))  # a wider batch recompiles, never truncates
        positions = np.zeros((labels.shape[0], width), dtype=np.int64)
        mlm_labels = np.full((labels.shape[0], width), IGNORE_INDEX, dtype=np.int64)
        for row in range(labels.shape[0]):
            where = np.flatnonzero(selected[row])
            positions[row, :where.size] = where
            mlm_labels[row, :where.size] = labels[row, where]
        return {"mlm_positions": torch.from_numpy(positions), "mlm_labels": torch.from_numpy(mlm_labels)}

    def pack_rows(self, examples: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """Next-fit packing: keeps the seeded order, so the batch is a pure function of its examples."""
        rows: list[list[dict[str, Any]]] = [[]]
        used = 0
        for example in examples:
            n = len(example["input_ids"])
            if n > self.pack_to_length:
                raise ValueError(f"instance {example['index']} has {n} tokens, more than the packed row length "
                                 f"{self.pack_to_length}; rebuild the instances with this --max_seq_length")
            if rows[-1] and used + n > self.pack_to_length:
                rows.append([])
                used = 0
            rows[-1].append(example)
            used += n
        return rows

    def packed(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = self.pack_rows(examples)
        width = self.pack_to_length
        shape = (len(rows), width)
        input_ids = np.full(shape, self.pad_id, dtype=np.int64)
        labels = np.full(shape, IGNORE_INDEX, dtype=np.int64)
        token_type_ids = np.zeros(shape, dtype=np.int64)
        position_ids = np.zeros(shape, dtype=np.int64)
        sequence_ids = np.full(shape, -1, dtype=np.int64)
        per_row = max(len(r) for r in rows)
        cls_positions = np.full((len(rows), per_row), -1, dtype=np.int64)
        nsp_labels = np.full((len(rows), per_row), IGNORE_INDEX, dtype=np.int64)
        segment_starts = []
        for row, members in enumerate(rows):
            start = 0
            for slot, example in enumerate(members):
                ids = np.asarray(example["input_ids"], dtype=np.int64)
                n = ids.size
                masked, example_labels = self.mask_example(ids, example["index"])
                span = slice(start, start + n)
                input_ids[row, span], labels[row, span] = masked, example_labels
                token_type_ids[row, span] = example["token_type_ids"]
                position_ids[row, span] = np.arange(n)
                sequence_ids[row, span] = slot
                cls_positions[row, slot] = start
                segment_starts.append(row * width + start)
                if "next_sentence_label" in example:
                    nsp_labels[row, slot] = example["next_sentence_label"]
                start += n
            if start < width:  # the row's padding: a segment that attends to itself only
                segment_starts.append(row * width + start)
        cu_seqlens = np.asarray(segment_starts + [len(rows) * width], dtype=np.int32)
        batch = {name: torch.from_numpy(value) for name, value in (
            ("input_ids", input_ids), ("token_type_ids", token_type_ids), ("labels", labels),
            ("position_ids", position_ids), ("sequence_ids", sequence_ids), ("cls_positions", cls_positions),
            ("cu_seqlens", cu_seqlens))}
        if "next_sentence_label" in examples[0]:
            batch["next_sentence_label"] = torch.from_numpy(nsp_labels)
        if self.mlm_positions_per_row is not None:
            batch.update(self.position_table(labels))
        return batch

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.pack_to_length is not None:
            return self.packed(examples)
        longest = max(len(e["input_ids"]) for e in examples)
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch_size = len(examples)
        input_ids = np.full((batch_size, width), self.pad_id, dtype=np.int64)
        labels = np.full((batch_size, width), IGNORE_INDEX, dtype=np.int64)
        token_type_ids = np.zeros((batch_size, width), dtype=np.int64)
        attention_mask = np.zeros((batch_size, width), dtype=np.int64)
        for row, example in enumerate(examples):
            ids = np.asarray(example["input_ids"], dtype=np.int64)
            masked, example_labels = self.mask_example(ids, example["index"])
            n = ids.size
            input_ids[row, :n] = masked
            labels[row, :n] = example_labels
            token_type_ids[row, :n] = example["token_type_ids"]
            attention_mask[row, :n] = 1
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "token_type_ids": torch.from_numpy(token_type_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "labels": torch.from_numpy(labels),
        }
        if self.omit_full_attention_mask and attention_mask.all():  # a numpy array: no device involved
            del batch["attention_mask"]
        if self.mlm_positions_per_row is not None:
            batch.update(self.position_table(labels))
        if "next_sentence_label" in examples[0]:
            batch["next_sentence_label"] = torch.tensor([e["next_sentence_label"] for e in examples],
                                                        dtype=torch.long)
        return batch
