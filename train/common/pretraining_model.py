"""BertForPreTraining from a BertConfig, and the objective module the loop trains.

`PretrainingObjective` wraps the Hugging Face model so that DDP/DeepSpeed see one module whose
forward returns per-example loss SUMS. The loop, not the model, decides the normalisation
(masked tokens of a whole accumulation window across all ranks). With the sparse head the MLM
prediction head (transform + 30k-way decoder) runs only at the ~15% masked positions; the
weights are the model's own, so `final/` stays a plain `BertForPreTraining` checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForPreTraining

from .masking import IGNORE_INDEX


def build_bert_config(model_args, vocab_size: int, tokenizer=None) -> BertConfig:
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        intermediate_size=model_args.intermediate_size,
        max_position_embeddings=model_args.max_position_embeddings,
        hidden_dropout_prob=model_args.hidden_dropout_prob,
        attention_probs_dropout_prob=model_args.attention_probs_dropout_prob,
        initializer_range=model_args.initializer_range,
    )
    if tokenizer is not None:
        config.pad_token_id = tokenizer.pad_token_id
    return config


def build_pretraining_model(config: BertConfig, attn_implementation: str = "sdpa") -> BertForPreTraining:
    # _from_config mutates the config it is given; keep the caller's intact.
    return BertForPreTraining._from_config(BertConfig.from_dict(config.to_dict()),
                                           attn_implementation=attn_implementation)


@dataclass
class PretrainingSums:
    """Per-example sums; the loop reduces them over micro-batches and ranks."""

    mlm_nll: torch.Tensor        # [B] summed negative log-likelihood of masked tokens (fp32)
    masked_tokens: torch.Tensor  # [B]
    nsp_nll: torch.Tensor        # [B] (zeros without NSP)
    nsp_correct: torch.Tensor    # [B]


class PretrainingObjective(nn.Module):
    def __init__(self, model: BertForPreTraining, sparse_mlm_head: bool = True, nsp: bool = True):
        super().__init__()
        self.model = model
        self.sparse_mlm_head = sparse_mlm_head
        self.nsp = nsp
        if not nsp:
            # Without NSP the pooler and NSP head get no gradient; freezing them keeps DDP from
            # waiting for gradients that never come. (They stay untrained: see the model card.)
            for module in (model.bert.pooler, model.cls.seq_relationship):
                if module is not None:
                    module.requires_grad_(False)

    @property
    def config(self):
        # DeepSpeed's "auto" ZeRO-3 bucket sizes are derived from model.config.hidden_size.
        return self.model.config

    def forward(self, input_ids, attention_mask, token_type_ids, labels, next_sentence_label=None):
        sequence_output, pooled_output = self.model.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            return_dict=False)[:2]
        batch_size = input_ids.shape[0]
        selected = labels != IGNORE_INDEX
        if self.sparse_mlm_head:
            rows = selected.nonzero(as_tuple=True)[0]
            logits = self.model.cls.predictions(sequence_output[selected])
            targets = labels[selected]
        else:
            logits = self.model.cls.predictions(sequence_output).flatten(0, 1)
            targets = labels.flatten()
            rows = torch.arange(batch_size, device=labels.device).repeat_interleave(labels.shape[1])
            keep = targets != IGNORE_INDEX
            logits, targets, rows = logits[keep], targets[keep], rows[keep]
        # Losses in fp32 whatever the autocast dtype: bf16 log-softmax over 30k classes is coarse.
        token_nll = F.cross_entropy(logits.float(), targets, reduction="none")
        mlm_nll = torch.zeros(batch_size, device=token_nll.device, dtype=torch.float32).index_add_(0, rows, token_nll)
        masked_tokens = selected.sum(dim=1)
        if self.nsp and next_sentence_label is not None:
            nsp_logits = self.model.cls.seq_relationship(pooled_output).float()
            nsp_nll = F.cross_entropy(nsp_logits, next_sentence_label, reduction="none")
            nsp_correct = (nsp_logits.argmax(dim=-1) == next_sentence_label).float()
        else:
            nsp_nll = torch.zeros(batch_size, device=mlm_nll.device)
            nsp_correct = torch.zeros(batch_size, device=mlm_nll.device)
        return PretrainingSums(mlm_nll, masked_tokens, nsp_nll, nsp_correct)
