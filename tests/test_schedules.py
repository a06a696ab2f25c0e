"""The learning rate at every optimizer step of a real run equals the handbook's schedules (transformers'
`get_scheduler`, what TRL and the alignment handbook step), checked against the formulas by hand."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from zephyr_lightning import DPOModule, OptimizerConfig, PreferenceDataModule
from zephyr_lightning.optim import build_optimizer


def _by_hand(schedule: str, step: int, total: int, warmup: int, min_lr_ratio: float = 0.0) -> float:
    """transformers' formulas, written out: linear warmup from 0, then linear / half-cosine decay."""
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1 - min_lr_ratio) * cosine


class _LearningRates(L.Callback):
    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.seen.append(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("schedule,warmup_ratio,min_lr_ratio", [("linear", 0.1, 0.0), ("cosine", 0.3, 0.0),
                                                                ("cosine", 0.1, 0.2), ("constant", 0.25, 0.0)])
def test_schedule_matches_the_formula_at_every_step(schedule, warmup_ratio, min_lr_ratio):
    param = torch.nn.Parameter(torch.zeros(2, 2))
    total = 23
    optim = OptimizerConfig(lr=1e-3, schedule=schedule, warmup_ratio=warmup_ratio, min_lr_ratio=min_lr_ratio)
    built = build_optimizer([("w", param)], optim, total)
    optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
    warmup = math.ceil(warmup_ratio * total)  # TrainingArguments.get_warmup_steps rounds up
    for step in range(total):
        expected = 1e-3 * _by_hand(schedule, step, total, warmup, min_lr_ratio)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-15), step
        optimizer.step()
        scheduler.step()


def test_lightning_steps_the_schedule_once_per_optimizer_step(tmp_path, tokenizer):
    """In a real run (gradient accumulation 2) the optimizer sees the formula's rate at each of its steps,
    starting at 0 (transformers' warmup; the old schedule started one step ahead)."""
    data = PreferenceDataModule("builtin:tiny_prefs", tokenizer, batch_size=1, max_length=48, max_prompt_length=24,
                                max_train_samples=12, max_val_samples=1, deduplicate="off")
    module = DPOModule("builtin:tiny-mistral", reference_free=True, optim=OptimizerConfig(lr=1e-3, warmup_ratio=0.4))
    rates = _LearningRates()
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False, max_epochs=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, accumulate_grad_batches=2, callbacks=[rates])
    trainer.fit(module, datamodule=data)
    total, warmup = 6, 3  # 12 pairs, 2 per optimizer step; ceil(0.4 * 6)
    assert rates.seen == pytest.approx([1e-3 * _by_hand("linear", s, total, warmup) for s in range(total)], abs=1e-15)
    assert rates.seen[0] == 0.0


def test_min_lr_ratio_belongs_to_the_cosine_schedule():
    with pytest.raises(ValueError, match=r"optim\.min_lr_ratio=0\.1: applies to the cosine schedule only"):
        OptimizerConfig(schedule="linear", min_lr_ratio=0.1)
