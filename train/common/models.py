"""The models: BertForPreTraining from a BertConfig and the objective module pretraining trains; for fine-tuning,
any BERT checkpoint (hub id or local folder, a pretraining run's final/ too) with its task head, the per-example
losses in fp32, and the parameter counts/diffs block of eval_results.json.

`PretrainingObjective` wraps the Hugging Face model so that DDP/DeepSpeed see one module whose
forward returns per-example loss SUMS. The loop, not the model, decides the normalisation
(masked tokens of a whole accumulation window across all ranks). With the sparse head the MLM
prediction head (transform + 30k-way decoder) runs only at the ~15% masked positions; the
weights are the model's own, so `final/` stays a plain `BertForPreTraining` checkpoint.

The masked positions come from the collator as a fixed-width table (`mlm_positions`, `mlm_labels`,
BERT's masked_lm_positions / ids): every shape is then known before the data is, there is no
device-to-host sync, and `--torch_compile` compiles the whole objective (encoder, heads and losses)
as one graph. Batches without the table (another collator) fall back to boolean indexing.

A batch without `attention_mask` has no padding (the collator's `omit_full_attention_mask`): the encoder gets
attention_mask=None, so SDPA may take its no-mask kernels and no mask is built or checked on the device.
A packed batch (`sequence_ids`, `position_ids`, `cls_positions`, `cu_seqlens`: see data/masking.py) runs the HF
encoder with a block-diagonal boolean mask [B, 1, S, S] through SDPA (checked here to match unpacked instances;
the eager attention does not read a boolean 4-D mask the same way, so packing is refused with it), or the fused
encoder with flash's varlen kernel on a GPU (the same mask elsewhere), and the pooler and NSP head at every
instance's [CLS]; the sums are then per row (several instances each).
`fused_encoder=True` runs the encoder as train/common/fused_encoder.py writes it, over the same weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch import nn
from transformers import BertConfig, BertForPreTraining

from .config import ConfigError
from .console import quiet_model_loading
from .data.loaders import TrainingDataError
from .data.masking import IGNORE_INDEX
from .fused_encoder import check_fused_encoder_supported, fused_bert_forward
from .tokenizer import load_tokenizer

logger = get_logger(__name__)


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
    def __init__(self, model: BertForPreTraining, sparse_mlm_head: bool = True, nsp: bool = True,
                 fused_encoder: bool = False, packed_batches: bool = False):
        super().__init__()
        self.model = model
        self.sparse_mlm_head = sparse_mlm_head
        self.nsp = nsp
        self.fused_encoder = fused_encoder
        if fused_encoder:
            check_fused_encoder_supported(model.bert)
        if packed_batches:  # refused before any data arrives; a packed batch checks again
            self._check_packing_supported()
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

    def forward(self, input_ids, token_type_ids, labels, next_sentence_label=None, mlm_positions=None,
                mlm_labels=None, attention_mask=None, position_ids=None, sequence_ids=None, cls_positions=None,
                cu_seqlens=None):
        # attention_mask None: no padding (the collator leaves the mask out of full batches).
        if sequence_ids is not None and self.fused_encoder:
            sequence_output, pooled_output = fused_bert_forward(
                self.model.bert, input_ids, token_type_ids, position_ids=position_ids, sequence_ids=sequence_ids,
                cu_seqlens=cu_seqlens)
        elif sequence_ids is not None:
            sequence_output = self._packed_encoder(input_ids, token_type_ids, position_ids, sequence_ids)
            pooled_output = None
        elif self.fused_encoder:
            sequence_output, pooled_output = fused_bert_forward(self.model.bert, input_ids, token_type_ids,
                                                                attention_mask)
        else:
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
        if self.nsp and next_sentence_label is not None and cls_positions is not None:
            nsp_nll, nsp_correct = self._packed_nsp(sequence_output, cls_positions, next_sentence_label)
        elif self.nsp and next_sentence_label is not None:
            nsp_logits = self.model.cls.seq_relationship(pooled_output).float()
            nsp_nll = F.cross_entropy(nsp_logits, next_sentence_label, reduction="none")
            nsp_correct = (nsp_logits.argmax(dim=-1) == next_sentence_label).float()
        else:
            nsp_nll = torch.zeros(batch_size, device=mlm_nll.device)
            nsp_correct = torch.zeros(batch_size, device=mlm_nll.device)
        return PretrainingSums(mlm_nll, masked_tokens, nsp_nll, nsp_correct)

    def _check_packing_supported(self) -> None:
        if self.fused_encoder:  # it builds its own attention (varlen or block-diagonal), whatever the HF setting
            return
        implementation = self.model.config._attn_implementation
        if implementation != "sdpa":
            raise ConfigError(f"--pack_sequences needs --attn_implementation sdpa (got {implementation!r}): its "
                              "block-diagonal mask is checked only with SDPA")

    def _packed_encoder(self, input_ids, token_type_ids, position_ids, sequence_ids):
        self._check_packing_supported()
        # Padding (-1) attends to padding only, so no query row is fully masked (SDPA would give NaN).
        mask = (sequence_ids[:, :, None] == sequence_ids[:, None, :]).unsqueeze(1)
        return self.model.bert(input_ids=input_ids, attention_mask=mask, token_type_ids=token_type_ids,
                               position_ids=position_ids, return_dict=False)[0]

    def _packed_nsp(self, sequence_output, cls_positions, next_sentence_label):
        """Per-row sums of NSP nll / correct over the row's instances; -1 slots add nothing."""
        present = cls_positions >= 0
        cls = sequence_output.gather(1, cls_positions.clamp(min=0).unsqueeze(-1).expand(
            -1, -1, sequence_output.shape[-1]))
        pooler = self.model.bert.pooler
        nsp_logits = self.model.cls.seq_relationship(pooler.activation(pooler.dense(cls))).float()
        nll = F.cross_entropy(nsp_logits.flatten(0, 1), next_sentence_label.flatten(), reduction="none",
                              ignore_index=IGNORE_INDEX).view_as(cls_positions)
        correct = (nsp_logits.argmax(dim=-1) == next_sentence_label) & present
        return nll.sum(dim=1), correct.float().sum(dim=1)

    @staticmethod
    def _token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # fp32 whatever the autocast dtype: a bf16 log-softmax over 30k classes is coarse. Ignored
        # targets (padding slots of the position table) give 0.
        return F.cross_entropy(logits.float(), targets, reduction="none", ignore_index=IGNORE_INDEX)


class FinetuneModelError(RuntimeError):
    """The checkpoint to fine-tune cannot be used; the message names it and says what to do."""


def load_model_for_task(model_args, auto_class, seed: int, **task_config):
    """(model, tokenizer, load_report) for `auto_class` (AutoModelForSequenceClassification, ...).

    The seed is set right before loading so that the new head's initialisation depends on --seed only.
    load_report = {"source", "newly_initialized": [...], "dropped": [...], "mismatched": [...]}."""
    from transformers import AutoConfig

    name = model_args.model_name_or_path
    hint = ("give a local folder written by save_pretrained (config.json + weights, e.g. a pretraining run's final/) "
            "or a hub id such as bert-base-uncased (needs the Hub or its local cache)")
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        raise FinetuneModelError(f"model {name!r}: no such local folder; {hint}")
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=model_args.trust_remote_code, **task_config)
    except (OSError, ValueError) as err:
        raise FinetuneModelError(f"model {name!r} could not be loaded ({' '.join(str(err).split())[:300]}); "
                                 f"{hint}") from None
    for key, value in model_args.config_overrides().items():
        setattr(config, key, value)
    tokenizer = load_tokenizer(model_args.tokenizer_name or name, model_args.trust_remote_code)
    if len(tokenizer) > config.vocab_size:
        raise FinetuneModelError(f"tokenizer {model_args.tokenizer_name or name!r} has {len(tokenizer)} tokens but "
                                 f"model {name!r} embeds only {config.vocab_size}; use the tokenizer saved with the "
                                 "model (leave --tokenizer_name unset)")
    set_seed(seed)
    if model_args.random_init:
        # The control arm: nothing learned is loaded, so every tensor is "newly initialised" by design.
        model = auto_class.from_config(config, attn_implementation=model_args.attn_implementation,
                                       trust_remote_code=model_args.trust_remote_code)
        report = {"source": f"random init (config and tokenizer of {name})", "architecture": type(model).__name__,
                  "random_init": True, "dropped": [], "mismatched": [],
                  # module paths, two levels deep: short enough for the model card, and the head is among them
                  "newly_initialized": sorted({".".join(n.split(".")[:2]) for n, _ in model.named_parameters()})}
        if model_args.torch_compile:
            getattr(model, model.base_model_prefix).compile()
        return model, tokenizer, report
    try:
        with quiet_model_loading():  # its key table would bury our lines; the summary line below says what counts
            model, info = auto_class.from_pretrained(name, config=config, output_loading_info=True,
                                                     attn_implementation=model_args.attn_implementation,
                                                     trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError) as err:
        raise FinetuneModelError(f"model {name!r}: could not load weights as {auto_class.__name__}: "
                                 f"{' '.join(str(err).split())[:300]}") from None
    report = {"source": str(name), "architecture": type(model).__name__,
              "newly_initialized": sorted(info.get("missing_keys", ())),
              "dropped": sorted(info.get("unexpected_keys", ())),
              "mismatched": sorted(str(k) for k in info.get("mismatched_keys", ()))}
    fresh = [k for k in report["newly_initialized"] if k.startswith(model.base_model_prefix + ".")]
    encoder = [k for k in fresh if ".pooler." not in k]  # a checkpoint saved without pooler gets a new one
    if len(fresh) > len(encoder):
        logger.warning(f"model {name!r} has no pooler: it is newly initialised and trained with the head",
                       main_process_only=True)
    if encoder:
        raise FinetuneModelError(f"model {name!r}: {len(encoder)} encoder tensors are missing from the checkpoint "
                                 f"(e.g. {encoder[:3]}); it is not a {config.model_type} checkpoint this script "
                                 "can fine-tune")
    logger.info(load_summary(report), main_process_only=True)
    if model_args.torch_compile:
        getattr(model, model.base_model_prefix).compile()  # in place: parameter names stay unchanged
    return model, tokenizer, report


def load_summary(report: dict) -> str:
    """One line for transformers' load report: what is new (the task head), what was left out (other heads)."""
    def heads(keys):  # modules, two levels deep: cls.predictions.transform.dense.weight -> cls.predictions
        return ", ".join(sorted({".".join(key.split(".")[:-1][:2]) or key for key in keys})) or "none"
    line = (f"model {report['source']} loaded as {report['architecture']}: newly initialised "
            f"{heads(report['newly_initialized'])}; not used {len(report['dropped'])} tensors "
            f"({heads(report['dropped'])})")
    if report["mismatched"]:
        line += f"; re-initialised for a shape mismatch {len(report['mismatched'])} ({report['mismatched'][:2]})"
    return line


def check_max_seq_length(model, max_seq_length: int, source: str) -> None:
    """Windows longer than the model's position table would fail deep inside the embedding lookup."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and max_seq_length > positions:
        raise ConfigError(f"--max_seq_length {max_seq_length} is longer than model {source!r} can take "
                          f"(max_position_embeddings {positions}); pass --max_seq_length {positions} or less")


def from_hub(load: Callable, name: str, *args, local_hint: str):
    """Run a hub dataset loader; failures that are not format errors (offline, unknown name, permissions) become
    one clear error saying which local files to give instead."""
    from .data.squad import SquadFormatError
    from .data.sst import SSTFormatError
    try:
        return load(name, *args)
    except (SSTFormatError, SquadFormatError):
        raise
    except Exception as err:  # the user's next step is the same whatever the cause
        cause = " ".join(str(err).split())[:200]
        raise TrainingDataError(f"could not load the hub dataset {name!r} ({type(err).__name__}: {cause}). "
                                f"Offline? {local_hint}") from None


def require_trained_head(report: dict, head_prefix: str) -> None:
    """--do_train false evaluates a model as it is: a head initialised just now would score noise."""
    fresh = [k for k in report["newly_initialized"] if k.startswith(head_prefix)]
    if fresh:
        raise FinetuneModelError(f"model {report['source']!r} has no trained {head_prefix} head ({fresh} would be "
                                 "newly initialised): --do_train false needs a fine-tuned model, e.g. the final/ "
                                 "folder of a fine-tuning run")


def parameter_block(before_source: str, after, trust_remote_code: bool = False) -> dict:
    """metrics.params.parameter_summary(checkpoint before, fine-tuned model after) for eval_results.json."""
    from metrics.params import ParamsError, parameter_summary

    try:
        return parameter_summary(before_source, after)
    except ParamsError:
        # Pickled or remote-code checkpoints: count the original architecture as loaded by transformers.
        import transformers
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained(before_source, trust_remote_code=trust_remote_code)
        architecture = getattr(transformers, (config.architectures or ["AutoModel"])[0], transformers.AutoModel)
        return parameter_summary(architecture.from_pretrained(before_source), after)


def classification_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] cross-entropy per example, in fp32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def masked_span_logits(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Padding is never an answer: with dynamic padding, leaving it in the softmax would make a feature's loss
    depend on the batch it landed in."""
    return logits.float().masked_fill(attention_mask == 0, torch.finfo(torch.float32).min)


def span_nll(start_logits, end_logits, start_positions, end_positions) -> torch.Tensor:
    """[B] (CE(start) + CE(end)) / 2 per feature (BERT's SQuAD loss before the batch mean)."""
    return (F.cross_entropy(start_logits, start_positions, reduction="none")
            + F.cross_entropy(end_logits, end_positions, reduction="none")) / 2
