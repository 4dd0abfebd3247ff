"""The no-padding fast path: a full batch carries no attention_mask, the encoder then gets None, and the sums and
evaluation are what they were with the mask."""

import pytest
import torch
from transformers import BertConfig

from bench.common import SyntheticBertVocab, synthetic_nsp_instances
from tests.conftest import reset_accelerate_state
from train.common.data.masking import IndexedDataset, PretrainingCollator, max_predictions_per_seq
from train.common.models import PretrainingObjective, build_pretraining_model

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
SEQ = 40  # a multiple of 8: full-length rows make a batch without padding


@pytest.fixture(scope="module")
def vocab():
    return SyntheticBertVocab()


def _examples(vocab, rows=6, short_row=None, seed=2):
    examples = IndexedDataset(synthetic_nsp_instances(rows, SEQ, vocab, seed=seed)).__getitems__(list(range(rows)))
    if short_row is not None:
        short = examples[short_row]
        examples[short_row] = {**short, "input_ids": short["input_ids"][:17],
                               "token_type_ids": short["token_type_ids"][:17]}
    return examples


def _collate(vocab, examples, omit=True):
    return PretrainingCollator(vocab, seed=0, mlm_positions_per_row=max_predictions_per_seq(0.15, SEQ),
                               omit_full_attention_mask=omit)(examples)


def _model(vocab, seed=0):
    torch.manual_seed(seed)
    return build_pretraining_model(BertConfig(vocab_size=len(vocab), **TINY))


def test_collator_leaves_the_mask_out_of_full_batches_only(vocab):
    full = _collate(vocab, _examples(vocab))
    assert "attention_mask" not in full
    with_mask = _collate(vocab, _examples(vocab), omit=False)
    assert with_mask["attention_mask"].all()
    assert full.keys() == with_mask.keys() - {"attention_mask"}
    for key in full:
        assert torch.equal(full[key], with_mask[key]), key
    padded = _collate(vocab, _examples(vocab, short_row=1))
    assert not padded["attention_mask"][1].all() and padded["attention_mask"][0].all()
    # Rows all of one length that is not a multiple of 8 are padded to one: the mask stays.
    cut = [{**e, "input_ids": e["input_ids"][:37], "token_type_ids": e["token_type_ids"][:37]}
           for e in _examples(vocab)]
    assert _collate(vocab, cut)["attention_mask"][:, 37:].eq(0).all()


def test_the_signal_survives_a_prepared_dataloader_and_evaluation_is_unaffected(vocab):
    """Through accelerate's DataLoader wrapper (send_to_device): a full batch arrives without the mask, a padded
    one with it; evaluate_pretraining gives the same numbers as with the mask always there."""
    from accelerate import Accelerator

    from train.common.evaluation import evaluate_pretraining
    examples = _examples(vocab, rows=8, short_row=5)
    reset_accelerate_state()
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(PretrainingObjective(_model(vocab)))
    results = {}
    for omit in (True, False):
        collator = PretrainingCollator(vocab, seed=0, mlm_positions_per_row=max_predictions_per_seq(0.15, SEQ),
                                       omit_full_attention_mask=omit)
        loader = accelerator.prepare(torch.utils.data.DataLoader(examples, batch_size=4, collate_fn=collator))
        batches = list(loader)
        assert [("attention_mask" in b) for b in batches] == ([False, True] if omit else [True, True])
        assert batches[1]["attention_mask"][1].sum() == 17
        results[omit] = evaluate_pretraining(model, loader, accelerator, len(examples), nsp=True)
    assert results[True] == pytest.approx(results[False], rel=1e-12)
    reset_accelerate_state()


def test_interval_stats_count_padding_without_the_mask(vocab):
    """pretrain.batch_stats: a batch without the mask counts every slot as a token; padded_tokens is each batch's
    rows x width, so padding_fraction = 1 - tokens / padded_tokens. A checkpoint's pending sums from before
    padded_tokens resume as unpadded."""
    from train.common.models import PretrainingSums
    from train.pretrain import STATS, batch_stats, pending_of
    zeros = torch.zeros(6)
    sums = PretrainingSums(zeros, zeros, zeros, zeros)
    full = dict(zip(STATS, batch_stats(_collate(vocab, _examples(vocab)), sums).tolist(), strict=True))
    assert full["tokens"] == full["padded_tokens"] == 6 * SEQ and full["sum_len_sq"] == 6 * SEQ ** 2
    padded = dict(zip(STATS, batch_stats(_collate(vocab, _examples(vocab, short_row=1)), sums).tolist(), strict=True))
    assert padded["tokens"] == 5 * SEQ + 17 and padded["padded_tokens"] == 6 * SEQ and padded["sequences"] == 6
    old = [1.0, 2.0, 3.0, 4.0, 50.0, 60.0]  # STATS without padded_tokens
    assert pending_of(old) == [*old, 50.0] and pending_of(None) is None and pending_of([*old, 70.0]) == [*old, 70.0]


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_no_mask_gives_what_an_all_ones_mask_gives(vocab, sparse):
    model = _model(vocab)
    objective = PretrainingObjective(model, sparse_mlm_head=sparse)
    without = objective(**_collate(vocab, _examples(vocab)))
    with_mask = objective(**_collate(vocab, _examples(vocab), omit=False))
    for name in ("mlm_nll", "masked_tokens", "nsp_nll", "nsp_correct"):
        torch.testing.assert_close(getattr(without, name), getattr(with_mask, name), rtol=1e-6, atol=1e-6, msg=name)
