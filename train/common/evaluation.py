"""Evaluation passes. Masked-LM: perplexity = exp(sum of masked-token NLL / number of masked tokens), beside
the unigram and NSP-majority baselines. Fine-tuning: `evaluate_outputs` gathers per-example outputs in order.

One implementation for the pretraining loop and `python -m analysis.perplexity`. Masks are fixed
by the collator's seed, per-example sums are gathered with `gather_for_metrics` (which drops the
samples duplicated to even out the last batch), and totals are summed in float64. Never
exp(mean of per-batch means) and never exp(MLM + NSP).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .console import eval_batches
from .data.loaders import model_inputs


class EvaluationCountError(RuntimeError):
    pass


@dataclass
class Baselines:
    """What a model that learnt nothing but word frequencies scores on the same fixed masks: a unigram model
    (token frequencies of the training instances, add-one smoothed over the non-special vocabulary). NSP's
    baseline, the best constant answer on the evaluated split (its majority label's rate), needs no training."""
    log_probs: torch.Tensor  # [vocab] float64; special tokens never are labels (-inf)


def training_baselines(train_split, vocab_size: int, special_ids) -> Baselines:
    import numpy as np
    try:
        tokens = train_split.data.column("input_ids").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    except AttributeError:  # not an Arrow dataset (the benchmarks' synthetic columns)
        tokens = np.concatenate([np.asarray(train_split[i]["input_ids"]) for i in range(len(train_split))])
    counts = np.bincount(tokens.astype(np.int64), minlength=vocab_size).astype(np.float64)
    special = np.zeros(vocab_size, dtype=bool)
    special[list(special_ids)] = True
    counts[special] = 0.0
    smoothed = np.where(special, 0.0, counts + 1.0)
    with np.errstate(divide="ignore"):  # log(0) = -inf for the special tokens is intended, not worth a warning
        return Baselines(torch.from_numpy(np.log(smoothed / smoothed.sum())))


@torch.no_grad()
def evaluate_pretraining(model, dataloader, accelerator, expected_examples: int, nsp: bool,
                         progress: bool = False, baselines: Baselines | None = None) -> dict[str, float | None]:
    was_training = model.training
    model.eval()
    gathered = []
    log_probs = baselines.log_probs.to(accelerator.device) if baselines is not None else None
    for batch in eval_batches(dataloader, progress, accelerator.is_main_process, "eval"):
        sums = model(**batch)
        columns = [sums.mlm_nll.float(), sums.masked_tokens.float(), sums.nsp_nll.float(), sums.nsp_correct.float()]
        if log_probs is not None:  # the same masked positions the model was scored on
            labels = batch["labels"]
            masked = labels != -100
            columns.append(torch.where(masked, -log_probs[labels.clamp(min=0)], 0.0).sum(dim=1).float())
            columns.append(batch["next_sentence_label"].float() if nsp and "next_sentence_label" in batch
                           else torch.zeros_like(columns[0]))
        per_example = torch.stack(columns, dim=1)
        gathered.append(accelerator.gather_for_metrics(per_example).to("cpu", torch.float64))
    if was_training:
        model.train()
    width = 6 if baselines is not None else 4
    table = torch.cat(gathered) if gathered else torch.zeros(0, width, dtype=torch.float64)
    if table.shape[0] != expected_examples:
        raise EvaluationCountError(f"evaluated {table.shape[0]} examples but the split has {expected_examples}: "
                                   "the distributed sampler padded or dropped samples")
    return summarize_pretraining_eval(table, nsp)


def summarize_pretraining_eval(table: torch.Tensor, nsp: bool) -> dict[str, float | None]:
    """table: float64 [N, 4] of per-example (mlm_nll_sum, masked_tokens, nsp_nll, nsp_correct), or [N, 6] with
    the baselines' (unigram_nll_sum, next_sentence_label)."""
    nll, masked = table[:, 0].sum().item(), table[:, 1].sum().item()
    examples = table.shape[0]
    mlm_loss = nll / masked if masked else float("nan")
    result = {
        "mlm_loss": mlm_loss,
        "perplexity": math.exp(mlm_loss) if masked else float("nan"),
        "nsp_loss": table[:, 2].sum().item() / examples if nsp and examples else None,
        "nsp_accuracy": table[:, 3].sum().item() / examples if nsp and examples else None,
        "masked_tokens": int(masked),
        "num_examples": examples,
    }
    if table.shape[1] == 6:
        result["unigram_perplexity"] = math.exp(table[:, 4].sum().item() / masked) if masked else float("nan")
        positive = table[:, 5].sum().item() / examples if nsp and examples else None
        result["nsp_majority_accuracy"] = max(positive, 1.0 - positive) if positive is not None else None
    return result


def baseline_notes(result: dict) -> list[str]:
    """Plain words when the model has not beaten what word frequencies or a constant answer give."""
    notes = []
    if result.get("unigram_perplexity") is not None and not result["perplexity"] < result["unigram_perplexity"]:
        notes.append(f"MLM does not beat the unigram baseline: perplexity {result['perplexity']:.1f} vs "
                     f"{result['unigram_perplexity']:.1f} from training-split token frequencies on the same masks")
    if result.get("nsp_majority_accuracy") is not None and result.get("nsp_accuracy") is not None \
            and result["nsp_accuracy"] <= result["nsp_majority_accuracy"] + 0.02:
        notes.append(f"NSP is at chance: accuracy {result['nsp_accuracy']:.3f} vs "
                     f"{result['nsp_majority_accuracy']:.3f} always giving the majority answer")
    return notes


class EvalCollector:
    """Gathers per-example outputs across ranks (gather_for_metrics drops the samples the sampler repeated to even
    out the last batch) and returns them in dataset order, checking that each example came back exactly once."""

    def __init__(self, accelerator, expected: int):
        self.accelerator, self.expected = accelerator, expected
        self.parts: dict[str, list[np.ndarray]] = {}

    def add(self, index: torch.Tensor, **outputs: torch.Tensor) -> None:
        padded = {k: self.accelerator.pad_across_processes(v, dim=1, pad_index=float("-inf")) if v.dim() > 1 else v
                  for k, v in outputs.items()}
        gathered = self.accelerator.gather_for_metrics({"index": index, **padded})
        for key, value in gathered.items():
            self.parts.setdefault(key, []).append(value.detach().float().cpu().numpy() if key != "index"
                                                  else value.cpu().numpy())

    def result(self) -> dict[str, np.ndarray]:
        index = np.concatenate(self.parts.get("index", [np.zeros(0, dtype=np.int64)]))
        if len(index) != self.expected or not np.array_equal(np.sort(index), np.arange(self.expected)):
            raise EvaluationCountError(f"evaluation gathered {len(index)} outputs for a split of {self.expected} "
                                       "examples (each exactly once expected): the distributed sampler padded or "
                                       "dropped samples")
        out = {}
        for key, parts in self.parts.items():
            if key == "index":
                continue
            width = max((p.shape[1] for p in parts), default=0) if parts[0].ndim > 1 else None
            if width is not None:
                parts = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=-np.inf) for p in parts]
            values = np.concatenate(parts)
            ordered = np.empty_like(values)
            ordered[index] = values
            out[key] = ordered
        return out


@torch.no_grad()
def evaluate_outputs(model, dataloader, accelerator, expected: int,
                     outputs_fn: Callable[[Any, dict], dict[str, torch.Tensor]],
                     progress: bool = False) -> dict[str, np.ndarray]:
    """One pass over an evaluation loader: outputs_fn(model outputs, batch) -> per-example tensors, returned in
    dataset order for all `expected` examples on every rank."""
    was_training = model.training
    model.eval()
    collector = EvalCollector(accelerator, expected)
    for batch in eval_batches(dataloader, progress, accelerator.is_main_process, "eval"):
        collector.add(batch["index"], **outputs_fn(model(**model_inputs(batch)), batch))
    if was_training:
        model.train()
    return collector.result()
