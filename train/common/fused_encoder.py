"""BERT's encoder forward written out over the Hugging Face model's own weights (`--fused_encoder`).

What `BertModel(...)[:2]` computes, (sequence output, pooled output), as plain tensor code that torch.compile
can fuse, with no module or parameter of its own: `BertForPreTraining`'s Parameters, state-dict keys,
`save_pretrained`/`from_pretrained` and `final/` stay exactly as they are. Per layer:

* one QKV GEMM: query, key and value weights (and biases) concatenated at call time, [3H, H], in the order
  q, k, v; its output viewed as [B, S, 3, heads, head_size] gives HF's per-head q/k/v;
* torch.nn.functional.scaled_dot_product_attention with attn_mask=None when the batch has no padding (the
  flash / no-mask kernels) and a boolean key mask [B, 1, 1, S] otherwise (HF's bidirectional mask: padded keys
  are masked, padded queries still attend);
* attention output and FFN output: GEMM without bias, then bias + dropout + residual + LayerNorm written plainly
  (one elementwise/reduction chain for the compiler);
* activations (the residual stream included) in the autocast dtype; LayerNorm statistics in fp32.

HF's modules under autocast keep the residual stream in fp32 (LayerNorm outputs fp32); this keeps it in the
autocast dtype, half the memory traffic. In fp32 the two give the same loss and gradients (tests/
test_fused_encoder.py: 1e-5 relative). Meant for GPUs with --torch_compile, and off until measured faster.

Not supported (refused by `check_fused_encoder_supported` or at the first forward): decoders / cross-attention,
gradient checkpointing, and DeepSpeed ZeRO-3, whose partitioned weights are gathered only when their own
module's forward runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError


def check_fused_encoder_supported(bert: nn.Module) -> None:
    config = bert.config
    if config.is_decoder or config.add_cross_attention:
        raise ConfigError("--fused_encoder writes out BERT's bidirectional encoder only (no decoder, no "
                          "cross-attention); drop --fused_encoder")
    if any(getattr(module, "gradient_checkpointing", False) for module in bert.modules()):
        raise ConfigError("--fused_encoder does not do gradient checkpointing; drop one of the two")


def _partitioned(weight: torch.Tensor) -> bool:
    return getattr(weight, "ds_id", None) is not None  # DeepSpeed ZeRO-3: gathered only inside its module


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype activations run in: autocast's where it is on for x's device, else x's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm, dtype: torch.dtype) -> torch.Tensor:
    """LayerNorm with fp32 statistics and affine (whatever the weights' dtype), returned in `dtype`."""
    return F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps).to(dtype)


def bias_dropout_add_norm(y: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, norm: nn.LayerNorm,
                          p: float, training: bool) -> torch.Tensor:
    """LayerNorm(dropout(y + bias) + residual): HF's BertSelfOutput/BertOutput after their dense layer's GEMM."""
    y = F.dropout(y + bias.to(y.dtype), p, training) + residual
    return layer_norm(y, norm, residual.dtype)


def embeddings(bert: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
               dtype: torch.dtype) -> torch.Tensor:
    emb = bert.embeddings
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    x = emb.word_embeddings(input_ids) + emb.token_type_embeddings(token_type_ids)
    x = x + emb.position_embeddings.weight[: input_ids.shape[1]]
    return F.dropout(layer_norm(x, emb.LayerNorm, dtype), emb.dropout.p, bert.training)


def encoder_layer(layer: nn.Module, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """One BertLayer: x [B, S, H] in the compute dtype -> the same."""
    attention, training = layer.attention, layer.training
    q, k, v = attention.self.query, attention.self.key, attention.self.value
    heads, head_size = attention.self.num_attention_heads, attention.self.attention_head_size
    batch, seq, hidden = x.shape
    qkv = F.linear(x, torch.cat([q.weight, k.weight, v.weight]), torch.cat([q.bias, k.bias, v.bias]))
    query, key, value = qkv.view(batch, seq, 3, heads, head_size).permute(2, 0, 3, 1, 4).unbind(0)
    context = F.scaled_dot_product_attention(
        query, key, value, attn_mask=key_mask, dropout_p=attention.self.dropout.p if training else 0.0,
        scale=attention.self.scaling)
    context = context.transpose(1, 2).reshape(batch, seq, hidden)
    out = attention.output
    x = bias_dropout_add_norm(F.linear(context, out.dense.weight), out.dense.bias, x, out.LayerNorm,
                              out.dropout.p, training)
    intermediate = layer.intermediate
    h = intermediate.intermediate_act_fn(F.linear(x, intermediate.dense.weight, intermediate.dense.bias))
    out = layer.output
    return bias_dropout_add_norm(F.linear(h, out.dense.weight), out.dense.bias, x, out.LayerNorm, out.dropout.p,
                                 training)


def fused_bert_forward(bert: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(sequence_output [B, S, H], pooled_output [B, H] or None) of `bert` (a BertModel), as
    `bert(input_ids, attention_mask, token_type_ids, return_dict=False)[:2]`; attention_mask None = no padding."""
    if _partitioned(bert.encoder.layer[0].attention.self.query.weight):
        raise ConfigError("--fused_encoder reads the encoder's weights directly, which DeepSpeed ZeRO-3 partitions; "
                          "use ZeRO-2 or DDP, or drop --fused_encoder")
    dtype = compute_dtype(bert.embeddings.word_embeddings.weight)
    key_mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
    x = embeddings(bert, input_ids, token_type_ids, dtype)
    for layer in bert.encoder.layer:
        x = encoder_layer(layer, x, key_mask)
    return x, bert.pooler(x) if bert.pooler is not None else None
