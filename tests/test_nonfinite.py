"""NonFiniteGuard: a NaN/inf loss or gradient stops the run naming the step and the batch, leaving the last
good checkpoint as the newest; or, in skip mode, the step is skipped (weights and optimizer untouched) and counted."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from tests.helpers import compose
from train import train
from zephyr_lightning import DPOModule
from zephyr_lightning.callbacks import NonFiniteError

RUN = [
    "+experiment=dpo", "logger=csv", "+data.max_train_samples=24", "data.batch_size=4", "+data.max_val_samples=4",
    "trainer.max_epochs=1", "~callbacks.sample_generation", "callbacks.model_checkpoint.every_n_train_steps=1",
]


@pytest.fixture
def poisoned_loss(monkeypatch):
    """Makes the loss NaN at the given optimizer steps; records each poisoned batch and the module."""
    seen: dict = {"steps": set(), "prompt_ids": [], "module": None}
    original = DPOModule.training_step

    def training_step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        seen["module"] = self
        if self.trainer.global_step + 1 in seen["steps"]:
            seen["prompt_ids"].append(list(batch["prompt_id"]))
            return loss * math.nan
        return loss

    monkeypatch.setattr(DPOModule, "training_step", training_step)
    return seen


class InfGradient(L.Callback):
    """Puts an inf into one gradient after backward at optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step + 1 == self.step:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = math.inf


def _checkpoint(run_dir, name="last.ckpt"):
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)


def test_nonfinite_loss_stops_naming_step_and_batch_and_keeps_last_good_checkpoint(tmp_path, poisoned_loss):
    poisoned_loss["steps"].add(3)
    with pytest.raises(NonFiniteError, match=r"non-finite loss and gradient at optimizer step 3 \(epoch 0\)") as err:
        train(compose(RUN, tmp_path))
    assert str(poisoned_loss["prompt_ids"][0]) in str(err.value)

    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["epoch00-step000002.ckpt", "last.ckpt"]  # nothing written at or after the bad step
    last = _checkpoint(tmp_path)
    assert last["global_step"] == 2
    module = poisoned_loss["module"]
    for name, value in module.model.state_dict().items():  # the bad step never reached the weights
        assert torch.isfinite(value).all()
        assert torch.equal(last["state_dict"][f"model.{name}"], value)
    assert not (tmp_path / "hf").exists()


def test_nonfinite_gradient_alone_is_caught(tmp_path):
    callback = ["+callbacks.inf._target_=tests.test_nonfinite.InfGradient", "+callbacks.inf.step=2"]
    with pytest.raises(NonFiniteError, match=r"non-finite gradient at optimizer step 2"):
        train(compose([*RUN, *callback], tmp_path))
    assert _checkpoint(tmp_path)["global_step"] == 1


def test_skip_mode_skips_and_counts_and_stops_when_diverged(tmp_path, poisoned_loss):
    poisoned_loss["steps"].add(3)
    metrics = train(compose([*RUN, "callbacks.nonfinite_guard.mode=skip"], tmp_path / "skip"))
    assert metrics["train/skipped_steps"] == 1
    final = _checkpoint(tmp_path / "skip")
    assert final["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in final["state_dict"].values())
    # AdamW counts the updates it applied: 5 of 6, the poisoned step left no trace in its state.
    steps = {float(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert steps == {5.0}
    assert final["callbacks"]["NonFiniteGuard"]["skipped_steps"] == 1

    poisoned_loss["steps"].update({4, 5, 6})
    with pytest.raises(NonFiniteError, match=r"3 bad steps in a row \(max_consecutive_skips=2\)"):
        train(compose([*RUN, "callbacks.nonfinite_guard.mode=skip", "callbacks.nonfinite_guard.max_consecutive_skips=2"],
                      tmp_path / "diverged"))
