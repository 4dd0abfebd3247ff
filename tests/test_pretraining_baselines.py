"""The baselines beside every pretraining evaluation: a unigram model on the same fixed masks, NSP's majority rate."""

import math
from types import SimpleNamespace

import datasets
import pytest
import torch

from tests.conftest import reset_accelerate_state
from train.common.evaluation import baseline_notes, evaluate_pretraining, training_baselines

SPECIAL = [0, 1, 2]  # [PAD], [CLS], [SEP] in this toy vocabulary of 8


def toy_train_split():
    return datasets.Dataset.from_dict({"input_ids": [[1, 3, 3, 4, 2], [1, 5, 3, 2, 0]],
                                       "next_sentence_label": [1, 0]})


def test_unigram_is_add_one_smoothed_training_frequencies_without_special_tokens():
    baselines = training_baselines(toy_train_split(), 8, SPECIAL)
    counts = {3: 3, 4: 1, 5: 1, 6: 0, 7: 0}  # tokens 3..7; specials never are labels
    total = sum(c + 1 for c in counts.values())
    for token, count in counts.items():
        assert baselines.log_probs[token].item() == pytest.approx(math.log((count + 1) / total), rel=1e-12)
    assert all(baselines.log_probs[t].item() == float("-inf") for t in SPECIAL)


class ScoresNothing(torch.nn.Module):
    """Per-example sums as the pretraining objective returns them: NLL 2.0 per masked token, NSP always right."""

    def forward(self, labels, next_sentence_label, **_):
        masked = (labels != -100).sum(dim=1).float()
        return SimpleNamespace(mlm_nll=2.0 * masked, masked_tokens=masked, nsp_nll=torch.zeros(len(labels)),
                               nsp_correct=torch.ones(len(labels)))


def test_evaluation_reports_the_baselines_on_the_same_masked_positions():
    from accelerate import Accelerator
    reset_accelerate_state()
    accelerator = Accelerator(cpu=True)
    baselines = training_baselines(toy_train_split(), 8, SPECIAL)
    batches = [{"labels": torch.tensor([[-100, 5, -100, 6], [7, -100, -100, -100]]),
                "next_sentence_label": torch.tensor([1, 0])},
               {"labels": torch.tensor([[3, 3, -100, -100]]), "next_sentence_label": torch.tensor([1])}]
    result = evaluate_pretraining(ScoresNothing(), batches, accelerator, 3, nsp=True, baselines=baselines)
    lp = baselines.log_probs
    expected = math.exp(-(lp[5] + lp[6] + lp[7] + 2 * lp[3]).item() / 5)
    assert result["unigram_perplexity"] == pytest.approx(expected, rel=1e-6)  # per-example sums in float32
    assert result["perplexity"] == pytest.approx(math.exp(2.0))
    assert result["nsp_majority_accuracy"] == pytest.approx(2 / 3)  # labels 1, 0, 1: always "1" scores 2/3
    assert baseline_notes(dict(result, perplexity=expected / 2)) == []  # beats both baselines: nothing to say
    notes = baseline_notes(dict(result, perplexity=expected * 2, nsp_accuracy=0.66))
    assert len(notes) == 2 and "unigram" in notes[0] and "NSP is at chance" in notes[1]
    without = evaluate_pretraining(ScoresNothing(), batches, accelerator, 3, nsp=True)
    assert "unigram_perplexity" not in without  # analysis.perplexity's call: no training split there
