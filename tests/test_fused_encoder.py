"""The no-padding fast path (a full batch carries no attention_mask; the encoder then gets None) and
--fused_encoder (train/common/fused_encoder.py over BertForPreTraining's own weights): in fp32 without dropout
both give BertForPreTraining's loss and gradients, keep its parameters and checkpoints, and leave evaluation as
it was."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForPreTraining

from bench.common import SyntheticBertVocab, synthetic_nsp_instances
from tests.conftest import (
    assert_same_tensors,
    final_tensors,
    pretrain_args,
    read_jsonl,
    reset_accelerate_state,
    run_pretrain,
)
from train.common.data.masking import IGNORE_INDEX, IndexedDataset, PretrainingCollator, max_predictions_per_seq
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


def _loss(sums):
    return sums.mlm_nll.sum() / sums.masked_tokens.sum() + sums.nsp_nll.mean()


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _max_relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max().clamp(min=1e-30)).item()


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


@pytest.mark.parametrize("fused", [False, True], ids=["hf", "fused"])
@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_no_mask_gives_what_an_all_ones_mask_gives(vocab, fused, sparse):
    model = _model(vocab)
    objective = PretrainingObjective(model, sparse_mlm_head=sparse, fused_encoder=fused)
    without = objective(**_collate(vocab, _examples(vocab)))
    with_mask = objective(**_collate(vocab, _examples(vocab), omit=False))
    for name in ("mlm_nll", "masked_tokens", "nsp_nll", "nsp_correct"):
        torch.testing.assert_close(getattr(without, name), getattr(with_mask, name), rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_fused_encoder_gives_the_models_own_loss_and_gradients(vocab, padded, sparse):
    """fp32, dropout 0: the loss of BertForPreTraining(labels=...) and the gradient of every parameter within
    1e-5 relative (to the tensor's largest entry; measured: a few 1e-7), with the mask (padded batch) and
    without (full batch)."""
    batch = _collate(vocab, _examples(vocab, short_row=1 if padded else None))
    assert ("attention_mask" in batch) == padded
    model = _model(vocab)
    reference = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                      token_type_ids=batch["token_type_ids"], labels=batch["labels"],
                      next_sentence_label=batch["next_sentence_label"]).loss
    reference.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)
    objective = PretrainingObjective(model, sparse_mlm_head=sparse, fused_encoder=True)
    sums = objective(**batch)
    assert torch.equal(sums.masked_tokens, (batch["labels"] != IGNORE_INDEX).sum(1))
    loss = _loss(sums)
    assert abs(loss.item() - reference.item()) <= 1e-5 * abs(reference.item())
    loss.backward()
    got = _grads(objective.model)
    assert got.keys() == expected.keys() and len(got) == len(list(model.parameters()))
    for key in expected:
        if key.endswith("attention.self.key.bias"):
            # Exactly 0 in exact arithmetic (it shifts each query's scores by a constant, which softmax ignores):
            # both sides hold rounding noise only.
            assert max(got[key].abs().max(), expected[key].abs().max()) < 1e-9, key
        else:
            assert _max_relative(got[key], expected[key]) <= 1e-5, (key, _max_relative(got[key], expected[key]))


def test_fused_encoder_keeps_the_parameters_and_checkpoints(vocab, tmp_path):
    """No parameter or buffer of its own: the same state-dict keys as BertForPreTraining's, and a
    save_pretrained -> from_pretrained round trip gives the same model (same sums)."""
    model = _model(vocab)
    fused = PretrainingObjective(model, fused_encoder=True)
    plain = PretrainingObjective(_model(vocab), fused_encoder=False)
    assert list(fused.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in plain.named_parameters()]
    fresh = BertForPreTraining(BertConfig(vocab_size=len(vocab), **TINY))
    assert list(model.state_dict()) == list(fresh.state_dict())
    model.save_pretrained(tmp_path / "saved")
    assert set(load_file(str(tmp_path / "saved" / "model.safetensors"))) <= set(fresh.state_dict())
    loaded, info = BertForPreTraining.from_pretrained(tmp_path / "saved", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    batch = _collate(vocab, _examples(vocab, short_row=1))
    model.eval()
    before = fused(**batch)
    after = PretrainingObjective(loaded.eval(), fused_encoder=True)(**batch)
    assert torch.equal(before.mlm_nll, after.mlm_nll) and torch.equal(before.nsp_nll, after.nsp_nll)


def test_fused_encoder_in_bf16_autocast_runs_in_bf16(vocab):
    """Under autocast the residual stream is in the autocast dtype (HF's is fp32); the loss stays near."""
    from train.common.fused_encoder import fused_bert_forward
    model = _model(vocab)
    batch = _collate(vocab, _examples(vocab, short_row=1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sequence, pooled = fused_bert_forward(model.bert, batch["input_ids"], batch["token_type_ids"],
                                              batch["attention_mask"])
        fused = _loss(PretrainingObjective(model, fused_encoder=True)(**batch))
        hf = _loss(PretrainingObjective(model)(**batch))
    assert sequence.dtype == pooled.dtype == torch.bfloat16
    assert abs(fused.item() - hf.item()) <= 1e-2 * hf.item()


def test_fused_encoder_refuses_what_it_does_not_write_out(vocab):
    from train.common.config import ConfigError
    model = _model(vocab)
    model.bert.encoder.layer[0].attention.self.query.weight.ds_id = 7  # what DeepSpeed ZeRO-3 partitioning adds
    with pytest.raises(ConfigError, match="ZeRO-3 partitions; use ZeRO-2 or DDP, or drop --fused_encoder"):
        PretrainingObjective(model, fused_encoder=True)(**_collate(vocab, _examples(vocab)))
    model = _model(vocab)
    model.activation_checkpointing_enable()  # gradient_checkpointing_enable, deprecated in transformers 5
    with pytest.raises(ConfigError, match="gradient checkpointing"):
        PretrainingObjective(model, fused_encoder=True)


@pytest.mark.slow
def test_fused_objective_compiles_without_graph_breaks(vocab):
    """--fused_encoder --torch_compile: one graph per mask kind (none / padded), no graph break, the eager loss."""
    from torch._dynamo.utils import counters
    eager = PretrainingObjective(_model(vocab), fused_encoder=True)
    compiled = PretrainingObjective(_model(vocab), fused_encoder=True)
    torch._dynamo.reset()
    counters.clear()
    compiled.compile()
    for short_row in (None, 1):
        batch = _collate(vocab, _examples(vocab, short_row=short_row))
        torch.testing.assert_close(_loss(compiled(**batch)), _loss(eager(**batch)), rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch._dynamo.reset()


@pytest.mark.slow
def test_fused_encoder_trains_and_exports_like_the_hf_encoder(corpus_dir, tmp_path):
    """A real run of train/pretrain.py with --fused_encoder: the losses, evaluation and exported weights of the
    HF-encoder run (fp32, dropout off), the same final/ keys, and padding_fraction in the training records."""
    options = ("--hidden_dropout_prob", "0", "--attention_probs_dropout_prob", "0", "--max_train_steps", "3",
               "--logging_steps", "1", "--checkpointing_steps", "none")
    runs = {name: tmp_path / name for name in ("hf", "fused")}
    assert run_pretrain(pretrain_args(corpus_dir, runs["hf"], *options)) == 0
    assert run_pretrain(pretrain_args(corpus_dir, runs["fused"], *options, "--fused_encoder")) == 0
    lines = {k: read_jsonl(v / "metrics.jsonl") for k, v in runs.items()}
    for hf, fused in zip(lines["hf"], lines["fused"], strict=True):
        for key in ("loss", "mlm_loss", "nsp_loss", "perplexity", "padding_fraction"):
            if key in hf:
                assert fused[key] == pytest.approx(hf[key], rel=1e-5), (key, hf, fused)
    train = [line for line in lines["fused"] if "split" not in line]
    assert len(train) == 3 and all(0.0 <= line["padding_fraction"] < 1.0 for line in train)
    assert_same_tensors(final_tensors(runs["hf"]), final_tensors(runs["fused"]), exact=False, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_mode_reaches_model_compile(corpus_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(PretrainingObjective, "compile", lambda self, *args, **kwargs: calls.append((args, kwargs)))
    assert run_pretrain(pretrain_args(corpus_dir, tmp_path / "run", "--max_train_steps", "1", "--torch_compile",
                                      "--torch_compile_mode", "max-autotune-no-cudagraphs",
                                      "--checkpointing_steps", "none")) == 0
    assert calls == [((), {"mode": "max-autotune-no-cudagraphs"})]
