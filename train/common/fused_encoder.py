"""BERT's encoder forward written out over the Hugging Face model's own weights (`--fused_encoder`).

What `BertModel(...)[:2]` computes, (sequence output, pooled output), as plain tensor code that torch.compile
can fuse, with no module or parameter of its own: `BertForPreTraining`'s Parameters, state-dict keys,
`save_pretrained`/`from_pretrained` and `final/` stay exactly as they are. Per layer:

* one QKV GEMM: query, key and value weights (and biases) concatenated at call time, [3H, H], in the order
  q, k, v; its output viewed as [B, S, 3, heads, head_size] gives HF's per-head q/k/v;
* torch.nn.functional.scaled_dot_product_attention with attn_mask=None when the batch has no padding (the
  flash / no-mask kernels) and a boolean key mask [B, 1, 1, S] otherwise (HF's bidirectional mask: padded keys
  are masked, padded queries still attend);
* packed rows (`--pack_sequences`: `position_ids`, `sequence_ids`, `cu_seqlens` from the collator): on a CUDA
  GPU with flash attention, in fp16/bf16, flash's varlen kernel over the flattened token stream
  (torch.ops.aten._flash_attention_forward with the collator's cu_seqlens, the op torch.nn.attention.varlen
  calls; called directly because varlen_attn has no attention dropout and BERT's is 0.1), no [S, S] mask at
  all; elsewhere (CPU, fp32) SDPA with the block-diagonal mask [B, 1, S, S] that the HF path uses too;
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
               dtype: torch.dtype, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    emb = bert.embeddings
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    x = emb.word_embeddings(input_ids) + emb.token_type_embeddings(token_type_ids)
    if position_ids is None:
        x = x + emb.position_embeddings.weight[: input_ids.shape[1]]
    else:  # packed rows: positions restart at every instance
        x = x + emb.position_embeddings(position_ids)
    return F.dropout(layer_norm(x, emb.LayerNorm, dtype), emb.dropout.p, bert.training)


def flash_varlen_usable(x: torch.Tensor, head_size: int) -> bool:
    """Whether flash's varlen kernel takes activations like x (in the compute dtype): a CUDA build with flash
    attention, an Ampere or newer GPU, fp16/bf16, a head size that is a multiple of 8 up to 256."""
    return (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and head_size % 8 == 0 and head_size <= 256
            and torch.backends.cuda.is_flash_attention_available()
            and torch.cuda.get_device_capability(x.device) >= (8, 0))


def packed_attention_kernel(x: torch.Tensor, head_size: int) -> str:
    """The attention a packed batch gets for activations like x: "flash_varlen" or "sdpa_block_diagonal"."""
    return "flash_varlen" if flash_varlen_usable(x, head_size) else "sdpa_block_diagonal"


def masked_attention(qkv: torch.Tensor, mask: torch.Tensor | None, dropout_p: float, scale: float) -> torch.Tensor:
    """qkv [B, S, 3, heads, head_size] -> context [B, S, hidden] through SDPA; mask None, [B, 1, 1, S] (keys) or
    [B, 1, S, S] (block-diagonal), True where attention is allowed."""
    batch, seq, _, heads, head_size = qkv.shape
    query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return context.transpose(1, 2).reshape(batch, seq, heads * head_size)


def varlen_attention(qkv: torch.Tensor, cu_seqlens: torch.Tensor, dropout_p: float, scale: float) -> torch.Tensor:
    """qkv [B, S, 3, heads, head_size] -> context [B, S, hidden], each segment of cu_seqlens (int32 offsets into the
    flattened B x S tokens) attending within itself only, through flash's varlen kernel (CUDA)."""
    batch, seq, _, heads, head_size = qkv.shape
    query, key, value = qkv.reshape(batch * seq, 3, heads, head_size).unbind(1)  # [T, heads, head_size] each
    # max_q / max_k: the row length bounds every segment, and a constant keeps torch.compile from specialising.
    context = torch.ops.aten._flash_attention_forward(query, key, value, cu_seqlens, cu_seqlens, seq, seq, dropout_p,
                                                      False, False, scale=scale)[0]
    return context.reshape(batch, seq, heads * head_size)


def encoder_layer(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None,
                  cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """One BertLayer: x [B, S, H] in the compute dtype -> the same. cu_seqlens: varlen attention instead of mask."""
    attention, training = layer.attention, layer.training
    q, k, v = attention.self.query, attention.self.key, attention.self.value
    heads, head_size = attention.self.num_attention_heads, attention.self.attention_head_size
    batch, seq, _ = x.shape
    qkv = F.linear(x, torch.cat([q.weight, k.weight, v.weight]), torch.cat([q.bias, k.bias, v.bias]))
    qkv = qkv.view(batch, seq, 3, heads, head_size)
    dropout_p, scale = attention.self.dropout.p if training else 0.0, attention.self.scaling
    if cu_seqlens is not None:
        context = varlen_attention(qkv, cu_seqlens, dropout_p, scale)
    else:
        context = masked_attention(qkv, mask, dropout_p, scale)
    out = attention.output
    x = bias_dropout_add_norm(F.linear(context, out.dense.weight), out.dense.bias, x, out.LayerNorm,
                              out.dropout.p, training)
    intermediate = layer.intermediate
    h = intermediate.intermediate_act_fn(F.linear(x, intermediate.dense.weight, intermediate.dense.bias))
    out = layer.output
    return bias_dropout_add_norm(F.linear(h, out.dense.weight), out.dense.bias, x, out.LayerNorm, out.dropout.p,
                                 training)


def fused_bert_forward(bert: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                       sequence_ids: torch.Tensor | None = None,
                       cu_seqlens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(sequence_output [B, S, H], pooled_output [B, H] or None) of `bert` (a BertModel), as
    `bert(input_ids, attention_mask, token_type_ids, return_dict=False)[:2]`; attention_mask None = no padding.
    Packed rows (sequence_ids given, see data/masking.py): attention within each instance only, per-instance
    position_ids, and no pooled output (the objective pools at each instance's [CLS])."""
    if _partitioned(bert.encoder.layer[0].attention.self.query.weight):
        raise ConfigError("--fused_encoder reads the encoder's weights directly, which DeepSpeed ZeRO-3 partitions; "
                          "use ZeRO-2 or DDP, or drop --fused_encoder")
    dtype = compute_dtype(bert.embeddings.word_embeddings.weight)
    x = embeddings(bert, input_ids, token_type_ids, dtype, position_ids)
    mask, varlen = None, None
    if sequence_ids is not None:
        head_size = bert.encoder.layer[0].attention.self.attention_head_size
        if cu_seqlens is not None and flash_varlen_usable(x, head_size):
            varlen = cu_seqlens
        else:  # padding (-1) attends to padding only, so no query row is fully masked (SDPA would give NaN)
            mask = (sequence_ids[:, :, None] == sequence_ids[:, None, :]).unsqueeze(1)
    elif attention_mask is not None:
        mask = attention_mask[:, None, None, :].bool()
    for layer in bert.encoder.layer:
        x = encoder_layer(layer, x, mask, varlen)
    if sequence_ids is not None:
        return x, None
    return x, bert.pooler(x) if bert.pooler is not None else None
