"""BertForPreTraining from a BertConfig, and the objective module the loop trains.

`PretrainingObjective` wraps the Hugging Face model so that DDP/DeepSpeed see one module whose
forward returns per-example loss SUMS. The loop, not the model, decides the normalisation
(masked tokens of a whole accumulation window across all ranks). With the sparse head the MLM
prediction head (transform + 30k-way decoder) runs only at the ~15% masked positions; the
weights are the model's own, so `final/` stays a plain `BertForPreTraining` checkpoint.

The masked positions come from the collator as a fixed-width table (`mlm_positions`, `mlm_labels`,
BERT's masked_lm_positions / ids): every shape is then known before the data is, there is no
device-to-host sync, and `--torch_compile` compiles the whole objective (encoder, heads and losses)
as one graph. Batches without the table (another collator) fall back to boolean indexing.
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

    def forward(self, input_ids, attention_mask, token_type_ids, labels, next_sentence_label=None,
                mlm_positions=None, mlm_labels=None):
        sequence_output, pooled_output = self.model.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            return_dict=False)[:2]
        batch_size = input_ids.shape[0]
        masked_tokens = (labels != IGNORE_INDEX).sum(dim=1)
        if self.sparse_mlm_head and mlm_positions is not None:
            # [B, P] positions -> [B, P, H] hidden states; padding slots carry IGNORE_INDEX labels.
            hidden = sequence_output.gather(1, mlm_positions.unsqueeze(-1).expand(-1, -1, sequence_output.shape[-1]))
            mlm_nll = self._token_nll(self.model.cls.predictions(hidden).flatten(0, 1),
                                      mlm_labels.flatten()).view_as(mlm_labels).sum(dim=1)
        else:
            rows = torch.arange(batch_size, device=labels.device).repeat_interleave(labels.shape[1])
            targets = labels.flatten()
            keep = targets != IGNORE_INDEX
            if self.sparse_mlm_head:
                logits = self.model.cls.predictions(sequence_output.flatten(0, 1)[keep])
            else:
                logits = self.model.cls.predictions(sequence_output).flatten(0, 1)[keep]
            token_nll = self._token_nll(logits, targets[keep])
            mlm_nll = torch.zeros(batch_size, device=token_nll.device, dtype=torch.float32).index_add_(
                0, rows[keep], token_nll)
        if self.nsp and next_sentence_label is not None:
            nsp_logits = self.model.cls.seq_relationship(pooled_output).float()
            nsp_nll = F.cross_entropy(nsp_logits, next_sentence_label, reduction="none")
            nsp_correct = (nsp_logits.argmax(dim=-1) == next_sentence_label).float()
        else:
            nsp_nll = torch.zeros(batch_size, device=mlm_nll.device)
            nsp_correct = torch.zeros(batch_size, device=mlm_nll.device)
        return PretrainingSums(mlm_nll, masked_tokens, nsp_nll, nsp_correct)

    @staticmethod
    def _token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # fp32 whatever the autocast dtype: a bf16 log-softmax over 30k classes is coarse. Ignored
        # targets (padding slots of the position table) give 0.
        return F.cross_entropy(logits.float(), targets, reduction="none", ignore_index=IGNORE_INDEX)
