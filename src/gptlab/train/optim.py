"""The optimizer and its schedule: AdamW (weight decay on matrices only), linear warmup then cosine decay."""

from __future__ import annotations

import math

import torch

from gptlab.model import GPT
from gptlab.params import LoopParams


def lr_at(step: int, p: LoopParams) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup over
    ``p.effective_warmup`` steps (``warmup_steps``, at most ``max_steps // 10``), then cosine
    decay from ``lr`` to ``min_lr`` at ``max_steps``."""
    warmup = p.effective_warmup
    if step < warmup:
        return p.lr * (step + 1) / warmup
    progress_ = min(1.0, (step - warmup) / max(1, p.max_steps - warmup))
    return p.min_lr + 0.5 * (p.lr - p.min_lr) * (1 + math.cos(math.pi * progress_))


def make_optimizer(model: GPT, p: LoopParams, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (dim >= 2: linear weights, embeddings) only; fused on CUDA."""
    params = {id(q): q for q in model.parameters() if q.requires_grad}.values()
    decay = [q for q in params if q.dim() >= 2]
    no_decay = [q for q in params if q.dim() < 2]
    groups = [{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=p.lr, betas=(p.beta1, p.beta2), **extra)
