"""Masked-LM evaluation: perplexity = exp(sum of masked-token NLL / number of masked tokens).

One implementation for the pretraining loop and `python -m analysis.perplexity`. Masks are fixed
by the collator's seed, per-example sums are gathered with `gather_for_metrics` (which drops the
samples duplicated to even out the last batch), and totals are summed in float64. Never
exp(mean of per-batch means) and never exp(MLM + NSP).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .console import eval_batches


class EvaluationCountError(RuntimeError):
    pass


@torch.no_grad()
def evaluate_pretraining(model, dataloader, accelerator, expected_examples: int, nsp: bool,
                         progress: bool = False) -> dict[str, Optional[float]]:
    was_training = model.training
    model.eval()
    gathered = []
    for batch in eval_batches(dataloader, progress, accelerator.is_main_process, "eval"):
        sums = model(**batch)
        per_example = torch.stack([sums.mlm_nll.float(), sums.masked_tokens.float(), sums.nsp_nll.float(),
                                   sums.nsp_correct.float()], dim=1)
        gathered.append(accelerator.gather_for_metrics(per_example).to("cpu", torch.float64))
    if was_training:
        model.train()
    table = torch.cat(gathered) if gathered else torch.zeros(0, 4, dtype=torch.float64)
    if table.shape[0] != expected_examples:
        raise EvaluationCountError(f"evaluated {table.shape[0]} examples but the split has {expected_examples}: "
                                   "the distributed sampler padded or dropped samples")
    return summarize_pretraining_eval(table, nsp)


def summarize_pretraining_eval(table: torch.Tensor, nsp: bool) -> dict[str, Optional[float]]:
    """table: float64 [N, 4] of per-example (mlm_nll_sum, masked_tokens, nsp_nll, nsp_correct)."""
    nll, masked = table[:, 0].sum().item(), table[:, 1].sum().item()
    examples = table.shape[0]
    mlm_loss = nll / masked if masked else float("nan")
    return {
        "mlm_loss": mlm_loss,
        "perplexity": math.exp(mlm_loss) if masked else float("nan"),
        "nsp_loss": table[:, 2].sum().item() / examples if nsp and examples else None,
        "nsp_accuracy": table[:, 3].sum().item() / examples if nsp and examples else None,
        "masked_tokens": int(masked),
        "num_examples": examples,
    }
