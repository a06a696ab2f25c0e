"""Carry the global random generators through checkpoints, so that a resumed run draws the same
dropout masks (and any other global randomness) as an uninterrupted one."""

from __future__ import annotations

from typing import Any

import lightning as L

from zephyr_lightning.resume import capture_random_state, restore_random_state


class RandomStateCheckpoint(L.Callback):
    """Saves the torch (CPU, CUDA), numpy and Python generators with every checkpoint and restores them
    when training resumes.

    They are restored at the start of training rather than when the checkpoint is read, so that nothing
    Lightning does in between (building the model, the data loaders) moves them. The data order does not
    depend on them (see `zephyr_lightning.data.resumable`). Under several processes the checkpoint
    holds rank 0's generators and every rank gets those back; seeded alike, ranks draw alike anyway.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return capture_random_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            restore_random_state(self._pending)
            self._pending = None
