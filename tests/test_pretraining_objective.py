"""The training objective: the sparse MLM head (position table or boolean index) and the dense head give
BertForPreTraining's own loss and gradients; --torch_compile compiles the whole objective as one graph."""

import pytest
import torch
from transformers import BertConfig

from bench.common import SyntheticBertVocab, synthetic_nsp_instances
from train.common.data.masking import IGNORE_INDEX, IndexedDataset, PretrainingCollator, max_predictions_per_seq
from train.common.models import PretrainingObjective, build_pretraining_model

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def vocab():
    return SyntheticBertVocab()


def _batch(vocab, positions_per_row, rows=6, seq=40):
    data = IndexedDataset(synthetic_nsp_instances(rows, seq, vocab, seed=2))
    examples = data.__getitems__(list(range(rows)))
    short = examples[1]  # one short row: fewer masked tokens and padding
    examples[1] = {**short, "input_ids": short["input_ids"][:17], "token_type_ids": short["token_type_ids"][:17]}
    return PretrainingCollator(vocab, seed=0, mlm_positions_per_row=positions_per_row)(examples)


def test_every_row_fits_the_position_table():
    # The collator masks max(1, round(p * maskable)) tokens, maskable <= max_seq_length.
    for p, length in ((0.15, 128), (0.15, 512), (0.2, 64), (0.15, 120), (0.01, 8)):
        width = max_predictions_per_seq(p, length)
        assert all(max(1, round(p * m)) <= width for m in range(1, length + 1)), (p, length)
    assert max_predictions_per_seq(0.15, 128) == 20 and max_predictions_per_seq(0.15, 512) == 77


def test_position_table_lists_each_rows_masked_tokens(vocab):
    batch = _batch(vocab, positions_per_row=max_predictions_per_seq(0.15, 40))
    positions, mlm_labels, labels = batch["mlm_positions"], batch["mlm_labels"], batch["labels"]
    assert positions.shape == mlm_labels.shape == (6, 6)  # fixed width, whatever the rows hold
    for row in range(6):
        where = (labels[row] != IGNORE_INDEX).nonzero().flatten()
        count = len(where)
        assert torch.equal(positions[row, :count], where)
        assert torch.equal(mlm_labels[row, :count], labels[row, where])
        assert (mlm_labels[row, count:] == IGNORE_INDEX).all() and (positions[row, count:] == 0).all()
    assert (labels[1] != IGNORE_INDEX).sum() < (labels[0] != IGNORE_INDEX).sum()
    # A row with more masked tokens than the table is wide (whole-word masking can overshoot) widens
    # that batch's table instead of losing tokens.
    narrow = _batch(vocab, positions_per_row=2)
    assert narrow["mlm_positions"].shape[1] == int((narrow["labels"] != IGNORE_INDEX).sum(1).max()) > 2
    assert "mlm_positions" not in _batch(vocab, positions_per_row=None)


def _loss(sums, nsp=True):
    loss = sums.mlm_nll.sum() / sums.masked_tokens.sum()
    return loss + sums.nsp_nll.mean() if nsp else loss


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_sparse_heads_give_the_models_own_loss_and_gradients(vocab):
    """Position table, boolean index and dense head: the loss of BertForPreTraining(labels=...) and the same
    gradients for every parameter (the decoder's included), so the sparse head changes speed, not training."""
    batch = _batch(vocab, positions_per_row=max_predictions_per_seq(0.15, 40))
    torch.manual_seed(0)
    model = build_pretraining_model(BertConfig(vocab_size=len(vocab), **TINY))
    reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"], labels=batch["labels"],
                      next_sentence_label=batch["next_sentence_label"]).loss
    reference.backward()
    expected = _grads(model)
    without_table = {k: v for k, v in batch.items() if k not in ("mlm_positions", "mlm_labels")}
    for name, sparse, inputs in (("position table", True, batch), ("boolean index", True, without_table),
                                 ("dense", False, batch)):
        model.zero_grad(set_to_none=True)
        objective = PretrainingObjective(model, sparse_mlm_head=sparse)
        sums = objective(**inputs)
        assert torch.equal(sums.masked_tokens, (batch["labels"] != IGNORE_INDEX).sum(1)), name
        loss = _loss(sums)
        torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6, msg=name)
        loss.backward()
        got = _grads(objective.model)
        assert got.keys() == expected.keys(), name
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-7, msg=f"{name}: {key}")


@pytest.mark.slow
def test_torch_compile_compiles_the_whole_objective_as_one_graph(vocab):
    """What --torch_compile does (model.compile() in place): with the position table there is no graph
    break (boolean indexing would break the graph at the head), the names stay those of the eager
    model, and the step gives the eager loss and gradients."""
    from torch._dynamo.utils import counters
    batch = _batch(vocab, positions_per_row=max_predictions_per_seq(0.15, 40))
    torch.manual_seed(0)
    eager = PretrainingObjective(build_pretraining_model(BertConfig(vocab_size=len(vocab), **TINY)))
    compiled = PretrainingObjective(build_pretraining_model(BertConfig(vocab_size=len(vocab), **TINY)))
    compiled.load_state_dict(eager.state_dict())
    names = [n for n, _ in compiled.named_parameters()]
    torch._dynamo.reset()
    counters.clear()
    compiled.compile()
    _loss(eager(**batch)).backward()
    loss = _loss(compiled(**batch))
    loss.backward()
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert [n for n, _ in compiled.named_parameters()] == names  # checkpoints and exports keep their keys
    torch.testing.assert_close(loss, _loss(eager(**batch)), rtol=1e-5, atol=1e-5)
    expected = _grads(eager)
    for key, grad in _grads(compiled).items():
        torch.testing.assert_close(grad, expected[key], rtol=1e-3, atol=1e-6, msg=key)
    torch._dynamo.reset()
