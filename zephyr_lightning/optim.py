"""AdamW with a warmup + linear/cosine/constant schedule, shared by SFT and DPO."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

SCHEDULES = ("linear", "cosine", "constant")


@dataclass
class OptimizerConfig:
    """Optimizer and learning-rate schedule settings.

    The paper's values: dSFT lr 2e-5, cosine, 10% warmup; dDPO lr 5e-7, linear, 10% warmup.
    ``warmup_ratio`` is a fraction of all optimizer steps of the run; ``min_lr_ratio`` is where the
    cosine and linear schedules end, as a fraction of ``lr``.
    """

    lr: float = 5e-7
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "linear"
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule={self.schedule!r} is not one of {list(SCHEDULES)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def _param_groups(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    # Biases and norm weights are not decayed (the usual transformer practice).
    decay, no_decay = [], []
    for name, param in named_params:
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    named_params: Iterable[tuple[str, nn.Parameter]], config: OptimizerConfig, total_steps: int
) -> dict:
    """AdamW over the trainable parameters given, and a per-step LambdaLR; a Lightning optimizer dict."""
    groups = _param_groups(named_params, config.weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError("no trainable parameters were given to the optimizer")
    first = groups[0]["params"][0] if groups[0]["params"] else groups[1]["params"][0]
    optimizer = torch.optim.AdamW(
        groups,
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        fused=first.is_cuda or None,
    )
    total_steps = max(1, int(total_steps))
    warmup_steps = math.ceil(config.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps, warmup_steps, config.schedule, config.min_lr_ratio),
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}
