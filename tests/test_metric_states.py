"""Epoch metric totals in checkpoints: what is saved is the whole job's total (summed over processes), and a
resumed job's epoch value equals the value of the same batches seen without interruption."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchmetrics

from zephyr_lightning.metrics import TokenNLL, load_metric_states, metric_states
from zephyr_lightning.modules.base import EPOCH_METRIC_STATES

# What each of 2 ranks sees before the checkpoint, and after the resume.
BEFORE = {0: [torch.tensor([-1.0, -2.0]), torch.tensor([-0.5])], 1: [torch.tensor([-3.0, -1.5, -0.25])]}
AFTER = {0: [torch.tensor([-2.0])], 1: [torch.tensor([-4.0, -0.75])]}


def _metrics() -> dict[str, torchmetrics.Metric]:
    return {"train/loss_epoch": TokenNLL(), "train/rewards/margins_epoch": torchmetrics.MeanMetric()}


def _update(metrics, batches) -> None:
    for batch in batches:
        metrics["train/loss_epoch"].update(batch)
        metrics["train/rewards/margins_epoch"].update(-batch)


def _expected() -> dict[str, float]:
    every = torch.cat([b for r in (0, 1) for b in BEFORE[r] + AFTER[r]])
    return {"train/loss_epoch": float(-every.double().mean()), "train/rewards/margins_epoch": float(-every.mean())}


def _rank(rank: int, init_file: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        first = _metrics()
        _update(first, BEFORE[rank])
        saved = metric_states(first)  # every rank calls it; all get the job's totals
        resumed = _metrics()
        load_metric_states(resumed, saved, holder=rank == 0)
        _update(resumed, AFTER[rank])
        out[rank] = ({name: float(metric.compute()) for name, metric in resumed.items()},
                     float(saved["train/loss_epoch"]["tokens"]))
    finally:
        dist.destroy_process_group()


def test_saved_totals_cover_every_rank_and_resume_to_the_uninterrupted_value(tmp_path):
    with mp.Manager() as manager:
        out = manager.dict()
        # fork: the workers inherit the imported modules instead of importing them again (seconds each)
        mp.start_processes(_rank, args=(str(tmp_path / "init"), out), nprocs=2, join=True, start_method="fork")
        results = dict(out)
    expected = _expected()
    for rank in (0, 1):
        values, saved_tokens = results[rank]
        assert saved_tokens == 6  # the tokens of both ranks before the checkpoint
        for name, value in expected.items():
            assert value == pytest.approx(values[name], rel=1e-6), (rank, name)


@pytest.mark.parametrize("stage_module", ["sft", "dpo"])
def test_modules_save_their_training_epoch_metrics_under_their_logged_names(stage_module):
    from zephyr_lightning import DPOModule, SFTModule

    module = (SFTModule if stage_module == "sft" else DPOModule)("builtin:tiny-mistral")
    train = module.epoch_metrics("train")
    assert train and set(train) <= set(module.logged_metrics())
    assert set(module.epoch_metrics("val")) <= set(module.logged_metrics())
    for metric in train.values():
        metric.update(torch.tensor([-1.0, -3.0]))
    checkpoint: dict = {"state_dict": {}}
    module.on_save_checkpoint(checkpoint)
    values = {name: float(metric.compute()) for name, metric in train.items()}

    fresh = (SFTModule if stage_module == "sft" else DPOModule)("builtin:tiny-mistral")
    fresh.on_load_checkpoint(checkpoint)
    assert {name: float(m.compute()) for name, m in fresh.epoch_metrics("train").items()} == values
    assert set(checkpoint[EPOCH_METRIC_STATES]) == set(train)
    torch.save(checkpoint, os.devnull)  # plain tensors: loadable with weights_only=True
