"""AdamW with BERT's weight-decay exclusions, and the warmup + decay schedule."""

from __future__ import annotations

import torch
from transformers import get_scheduler

FUSED_ADAMW_DEVICES = ("cuda", "cpu", "xpu")
NO_DECAY_SUFFIXES = ("bias", "LayerNorm.weight", "LayerNorm.bias", "layer_norm.weight", "layer_norm.bias")


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(NO_DECAY_SUFFIXES) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, opt_args, device: torch.device) -> torch.optim.AdamW:
    # The fused kernel updates every tensor in one pass instead of a chain of per-tensor ops: one launch per step
    # on GPUs, and on CPUs (torch >= 2.4) about a fifth of a bert-base step saved (bench/README.md).
    fused = device.type in FUSED_ADAMW_DEVICES
    return torch.optim.AdamW(parameter_groups(model, opt_args.weight_decay), lr=opt_args.learning_rate,
                             betas=(opt_args.adam_beta1, opt_args.adam_beta2), eps=opt_args.adam_epsilon,
                             fused=fused)


def build_scheduler(optimizer, opt_args, total_steps: int):
    """Stepped by the loop once per optimizer step (not passed to accelerator.prepare, which
    would step it once per process), so warmup and decay are counted in optimizer steps."""
    return get_scheduler(opt_args.lr_scheduler_type, optimizer,
                         num_warmup_steps=opt_args.num_warmup_steps(total_steps),
                         num_training_steps=total_steps)
