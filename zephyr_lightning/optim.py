"""AdamW with a warmup + linear/cosine/constant schedule, shared by SFT and DPO.

The schedules are transformers' own (`transformers.get_scheduler`, what the alignment handbook's
trainers use), stepped once per optimizer step, so a run here follows the handbook's learning rate at
every step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from zephyr_lightning.arguments import Fraction, NonNegative, Positive, check_arguments, cross_check

Schedule = Literal["linear", "cosine", "constant"]
Betas = tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]]


def _min_lr_rule(arguments: dict) -> tuple[str, str] | None:
    if arguments.get("min_lr_ratio") and arguments.get("schedule") != "cosine":
        return "min_lr_ratio", f"applies to the cosine schedule only, not {arguments.get('schedule')!r}"
    return None


@cross_check(_min_lr_rule)
@dataclass
class OptimizerConfig:
    """Optimizer and learning-rate schedule settings.

    The paper's values: dSFT lr 2e-5, cosine, 10% warmup; dDPO lr 5e-7, linear, 10% warmup.
    ``warmup_ratio`` is a fraction of all optimizer steps of the run, rounded up (as transformers'
    ``TrainingArguments.get_warmup_steps`` does); ``min_lr_ratio`` is where the cosine schedule ends, as
    a fraction of ``lr`` (transformers' ``cosine_with_min_lr``).

    AdamW updates the parameters in their own dtype: train float32 weights (``model.dtype=float32``) and
    compute in bf16 with ``trainer.precision=bf16-mixed`` (fp32 master weights). Updating bf16 weights
    directly loses every update smaller than half a bf16 spacing (about 3e-5 for a weight of 0.01): at
    DPO's lr 5e-7 almost nothing changes. Config validation refuses that set-up unless
    ``allow_low_precision_updates`` says you know.
    """

    lr: Positive = 5e-7
    weight_decay: NonNegative = 0.0
    betas: Betas = (0.9, 0.999)
    eps: Positive = 1e-8
    schedule: Schedule = "linear"
    warmup_ratio: Fraction = 0.1
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0
    allow_low_precision_updates: bool = False

    def __post_init__(self) -> None:
        check_arguments(OptimizerConfig, vars(self), prefix="optim")
        self.betas = tuple(self.betas)


def warmup_steps(config: OptimizerConfig, total_steps: int) -> int:
    return math.ceil(config.warmup_ratio * total_steps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimizerConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """transformers' scheduler for ``config.schedule`` over ``total_steps`` optimizer steps."""
    from transformers import get_scheduler

    name = config.schedule
    if name == "cosine" and config.min_lr_ratio > 0:
        return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=warmup_steps(config, total_steps),
                             num_training_steps=total_steps, scheduler_specific_kwargs={"min_lr_rate": config.min_lr_ratio})
    if name == "constant":
        name = "constant_with_warmup"
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps(config, total_steps), num_training_steps=total_steps)


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
    """AdamW over the trainable parameters given, and a per-step schedule; a Lightning optimizer dict."""
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
    scheduler = build_scheduler(optimizer, config, max(1, int(total_steps)))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}
