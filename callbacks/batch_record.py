"""Record which rows every training step saw (an audit of the data order; used by the resume tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L


class BatchRecord(L.Callback):
    """Appends one JSON line per training batch to ``path``: ``{"step", "epoch", "batch_idx",
    "prompt_ids"}``, where ``step`` is the optimizer step the batch belongs to (1-based). Each line is
    flushed as it is written, so a killed run's file holds every batch it finished.
    Rank 0 records its own batches only.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._step_at_batch_start = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero or not isinstance(batch, dict):
            return
        record = {
            "step": self._step_at_batch_start + 1,  # every micro-batch of an accumulated step says the same
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "prompt_ids": list(batch.get("prompt_id", [])),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
