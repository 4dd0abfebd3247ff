"""--pack_sequences: whole instances packed into rows give the same MLM/NSP loss sums and gradients as the same
instances padded one per row (CPU, fp32, no dropout), and the collator packs deterministically, never splitting."""

import pytest
import torch
from transformers import BertConfig

from bench.common import SyntheticBertVocab, synthetic_nsp_instances
from train.common.config import ConfigError
from train.common.data.masking import IGNORE_INDEX, IndexedDataset, PretrainingCollator
from train.common.models import PretrainingObjective, build_pretraining_model

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
LENGTHS = (17, 9, 30, 12, 40, 6, 21)


@pytest.fixture(scope="module")
def vocab():
    return SyntheticBertVocab()


def _examples(vocab):
    data = IndexedDataset(synthetic_nsp_instances(len(LENGTHS), 40, vocab, seed=3))
    examples = data.__getitems__(list(range(len(LENGTHS))))
    return [{**e, "input_ids": e["input_ids"][:n], "token_type_ids": e["token_type_ids"][:n]}
            for e, n in zip(examples, LENGTHS, strict=True)]


def test_collator_packs_whole_instances_in_order(vocab):
    examples = _examples(vocab)
    collate = PretrainingCollator(vocab, seed=0, pack_to_length=48)
    batch = collate(examples)
    assert [len(r) for r in collate.pack_rows(examples)] == [2, 2, 2, 1]  # next fit: 17+9 | 30+12 | 40+6 | 21
    unpacked = PretrainingCollator(vocab, seed=0)(examples)
    cls, seq, pos = batch["cls_positions"], batch["sequence_ids"], batch["position_ids"]
    k = 0
    for row in range(cls.shape[0]):
        for slot in range(cls.shape[1]):
            start = int(cls[row, slot])
            if start < 0:
                assert batch["next_sentence_label"][row, slot] == IGNORE_INDEX
                continue
            n = LENGTHS[k]
            span = slice(start, start + n)
            assert pos[row, span].tolist() == list(range(n))  # positions restart per instance
            assert (seq[row, span] == slot).all() and int((seq[row] == slot).sum()) == n  # never split
            assert batch["input_ids"][row, span].tolist() == unpacked["input_ids"][k, :n].tolist()  # same masks
            assert batch["token_type_ids"][row, span].tolist() == unpacked["token_type_ids"][k, :n].tolist()
            assert batch["next_sentence_label"][row, slot] == unpacked["next_sentence_label"][k]
            k += 1
    assert k == len(LENGTHS)
    assert all(torch.equal(v, collate(examples)[key]) for key, v in batch.items())  # deterministic


@pytest.mark.parametrize("positions_per_row", [None, 6])
def test_packed_equals_padded_loss_and_gradients(vocab, positions_per_row):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), **TINY)
    objective = PretrainingObjective(build_pretraining_model(config)).train()
    examples = _examples(vocab)
    results = []
    for pack in (None, 48):
        batch = PretrainingCollator(vocab, seed=0, mlm_positions_per_row=positions_per_row,
                                    pack_to_length=pack)(examples)
        objective.zero_grad()
        sums = objective(**batch)
        (sums.mlm_nll.sum() + sums.nsp_nll.sum()).backward()
        grads = {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}
        results.append((sums.mlm_nll.sum(), sums.nsp_nll.sum(), sums.masked_tokens.sum(), sums.nsp_correct.sum(),
                        grads))
    (mlm_a, nsp_a, masked_a, correct_a, grads_a), (mlm_b, nsp_b, masked_b, correct_b, grads_b) = results
    torch.testing.assert_close(mlm_b, mlm_a, rtol=1e-5, atol=0)
    torch.testing.assert_close(nsp_b, nsp_a, rtol=1e-5, atol=0)
    assert masked_a == masked_b and correct_a == correct_b
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_packing_refuses_eager_attention(vocab):
    config = BertConfig(vocab_size=len(vocab), **TINY)
    objective = PretrainingObjective(build_pretraining_model(config, attn_implementation="eager"))
    batch = PretrainingCollator(vocab, seed=0, pack_to_length=48)(_examples(vocab))
    with pytest.raises(ConfigError, match="sdpa"):
        objective(**batch)


def test_cu_seqlens_mark_every_instance_and_row_padding(vocab):
    batch = PretrainingCollator(vocab, seed=0, pack_to_length=48)(_examples(vocab))
    cu = batch["cu_seqlens"]
    assert cu.dtype == torch.int32  # flash's varlen kernel takes int32 offsets
    flat = batch["sequence_ids"].flatten()
    rows = torch.arange(batch["sequence_ids"].numel()) // batch["sequence_ids"].shape[1]
    # a segment starts wherever the row or the instance (padding counting as one) changes
    starts = [0] + [i for i in range(1, flat.numel()) if flat[i] != flat[i - 1] or rows[i] != rows[i - 1]]
    assert cu.tolist() == starts + [flat.numel()]
    # rows of 48: 17 + 9 + 22 padding | 30 + 12 + 6 padding | 40 + 6 + 2 padding | 21 + 27 padding
    assert (cu[1:] - cu[:-1]).tolist() == [17, 9, 22, 30, 12, 6, 40, 6, 2, 21, 27]


@pytest.mark.parametrize("positions_per_row", [None, 6])
def test_fused_encoder_packed_equals_hf_padded(vocab, positions_per_row):
    """--fused_encoder --pack_sequences on CPU (its block-diagonal SDPA fallback) against the HF encoder on the same
    instances padded one per row: the same sums and gradients, over the same parameters."""
    torch.manual_seed(0)
    model = build_pretraining_model(BertConfig(vocab_size=len(vocab), **TINY))
    hf, fused = PretrainingObjective(model).train(), PretrainingObjective(model, fused_encoder=True,
                                                                         packed_batches=True).train()
    examples = _examples(vocab)
    results = []
    for objective, pack in ((hf, None), (fused, 48)):
        batch = PretrainingCollator(vocab, seed=0, mlm_positions_per_row=positions_per_row,
                                    pack_to_length=pack)(examples)
        model.zero_grad()
        sums = objective(**batch)
        (sums.mlm_nll.sum() + sums.nsp_nll.sum()).backward()
        results.append((sums.mlm_nll.sum(), sums.nsp_nll.sum(), sums.nsp_correct.sum(),
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (mlm_a, nsp_a, correct_a, grads_a), (mlm_b, nsp_b, correct_b, grads_b) = results
    torch.testing.assert_close(mlm_b, mlm_a, rtol=1e-5, atol=0)
    torch.testing.assert_close(nsp_b, nsp_a, rtol=1e-5, atol=0)
    assert correct_a == correct_b and grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_packed_attention_takes_flash_varlen_only_where_it_runs():
    from train.common.fused_encoder import packed_attention_kernel
    assert packed_attention_kernel(torch.zeros(2, 4, dtype=torch.bfloat16), 64) == "sdpa_block_diagonal"  # CPU
    assert packed_attention_kernel(torch.zeros(2, 4), 64) == "sdpa_block_diagonal"


def test_varlen_attention_call_matches_the_flash_op_signature():
    """The varlen call's arguments against aten._flash_attention_forward's meta kernel (no GPU here: the numbers
    are compared with the block-diagonal path by bench/gpu_check.sh's packed variant on the GPU)."""
    from train.common.fused_encoder import varlen_attention
    qkv = torch.empty(3, 16, 3, 2, 32, device="meta", dtype=torch.bfloat16, requires_grad=True)
    cu = torch.tensor([0, 5, 16, 30, 48], dtype=torch.int32, device="meta")
    context = varlen_attention(qkv, cu, 0.1, 32 ** -0.5)
    assert context.shape == (3, 16, 64) and context.dtype == torch.bfloat16
