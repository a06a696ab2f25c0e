"""Which validations a run finished, so that a resumed run re-runs the one a kill interrupted, the final
weights are validated inside fit, and the train command knows whether they were."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerStatus

from zephyr_lightning.atomic import atomic_write
from zephyr_lightning.callbacks.run_checkpoint import checkpoint_folder

log = logging.getLogger(__name__)

RECORD_FILE = "validated.json"


class ValidationRecord(L.Callback):
    """Remembers the optimizer step of the last finished validation, and re-runs, when training resumes,
    a validation that was due at the checkpoint's step but did not finish.

    Checkpoints are written at the end of a training step, before the validation that may follow it, so
    a checkpoint cannot say whether that validation finished. Lightning assumes it did: killed during
    it (kill -9, or SIGTERM at that step), the resumed run would never validate that step, and its metrics
    and sample rows would be lost. So each checkpoint records whether a validation was due at its step,
    and each finished validation is recorded, as it ends, in ``validated.json`` beside the checkpoints
    (written atomically by global rank 0). A resumed run whose checkpoint owes a validation that file does
    not show as finished runs it before training on, with the weights and random state of that step, as
    the uninterrupted run did.

    Args:
        dirpath: where ``validated.json`` goes; default: the ModelCheckpoint's folder, else
            ``<default_root_dir>/checkpoints``.
    """

    def __init__(self, dirpath: str | Path | None = None) -> None:
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.last_step = -1
        self._due_at: int | None = None  # from the checkpoint resumed from

    def record_path(self, trainer: L.Trainer) -> Path:
        return checkpoint_folder(trainer, self.dirpath) / RECORD_FILE

    # ---- what a checkpoint carries ----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "_trainer", None)
        return {"last_step": self.last_step, "validation_due_at": self._validation_due(trainer)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_step = int(state_dict.get("last_step", -1))
        due = state_dict.get("validation_due_at")
        self._due_at = int(due) if due is not None else None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer  # state_dict() takes no arguments

    def _validation_due(self, trainer: L.Trainer | None) -> int | None:
        """The step whose validation is still to come when a checkpoint is written at the end of a training
        step (Lightning's own decision, taken the same way just after), else None."""
        if trainer is None or not trainer.training or trainer.sanity_checking:
            return None
        loop = trainer.fit_loop.epoch_loop
        if trainer.global_step <= self.last_step or not trainer.enable_validation:
            return None
        fetcher = trainer.fit_loop._data_fetcher
        try:
            due = fetcher is not None and loop._should_check_val_fx(fetcher)
        except Exception:  # a Lightning without this internal: resume as Lightning does
            return None
        return trainer.global_step if due else None

    # ---- the final weights are validated inside fit -------------------------------------------------

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # On the step that reaches max_steps with no validation there, ask Lightning to stop: it validates
        # before stopping (it does for any stop request), so every callback of the fit's end (the HF export
        # and its model card) sees the final weights' validation metrics.
        if 0 <= trainer.max_steps <= trainer.global_step and self.last_step < trainer.global_step \
                and not trainer.should_stop:
            log.info("step %d reaches max_steps: validating the final weights", trainer.global_step)
            trainer.should_stop = True

    # ---- recording finished validations -----------------------------------------------------------

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.last_step = trainer.global_step
        if trainer.is_global_zero:
            with atomic_write(self.record_path(trainer)) as f:
                json.dump({"step": self.last_step}, f)

    def _recorded_step(self, trainer: L.Trainer) -> int:
        path = self.record_path(trainer)
        try:
            step = int(json.loads(path.read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            step = -1
        # Every rank decides alike (only rank 0's file system view counts).
        return int(trainer.strategy.broadcast(step, src=0))

    # ---- resuming ---------------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        due, self._due_at = self._due_at, None
        if due is None or due != trainer.global_step or self._recorded_step(trainer) >= due:
            return
        log.warning("the validation at step %d did not finish before the run stopped: running it again", due)
        self.run_validation(trainer)

    @staticmethod
    def run_validation(trainer: L.Trainer) -> None:
        """One validation inside fit, as Lightning's training loop runs it between steps."""
        loop = trainer.fit_loop.epoch_loop
        val_loop = loop.val_loop
        val_loop.restarting = False  # a fresh validation, not the continuation of a half-done one
        first_loop_iter = trainer._logger_connector._first_loop_iter
        trainer.validating = True
        try:
            val_loop.run()
        finally:
            trainer.training = True
            trainer._logger_connector._first_loop_iter = first_loop_iter

    # ---- for the train command --------------------------------------------------------------------

    def stale(self, trainer: L.Trainer, datamodule: L.LightningDataModule) -> bool:
        """True when the weights at the end of fit were never validated (and there is something to validate)."""
        if trainer.state.status != TrainerStatus.FINISHED or trainer.limit_val_batches == 0:
            return False
        loaders = datamodule.val_dataloader()
        return bool(loaders) and trainer.global_step > self.last_step
