"""Save a checkpoint and stop cleanly when the cluster pre-empts the job (SIGTERM, SIGUSR1)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from zephyr_lightning.callbacks.run_checkpoint import checkpoint_folder

log = logging.getLogger(__name__)


class Preempted(SystemExit):
    """Training stopped on a signal after saving a checkpoint. Exit status 128 + the signal number, as a
    shell reports a process ended by that signal, so ``&&``-chained stages do not go on."""

    def __init__(self, signum: int, step: int, path: Path) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.step = step
        self.path = path

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name} at step {self.step}; checkpoint: {self.path}"


class PreemptionCheckpoint(Checkpoint):
    """On SIGTERM or SIGUSR1, finish the optimizer step in progress, write ``last.ckpt`` and stop.

    Lightning alone does neither on a machine without SLURM: SIGTERM ends fit without a checkpoint and
    SIGUSR1 kills the process. Here the signal only sets a flag; the checkpoint is written at the end of
    the current optimizer step (never mid-accumulation), so it resumes exactly, and then `Preempted` is
    raised (exit status 128 + signal). Under several processes the flag is shared at each step, so every
    rank saves and stops together even if only one was signalled.

    Also writes ``last.ckpt`` at the end of training when the step checkpoints did not already cover the
    final step, so ``last.ckpt`` always holds the newest state.

    A `Checkpoint` callback, so Lightning runs it after the ordinary callbacks (every one of them sees
    the last batch before training stops); use it beside a ``ModelCheckpoint``, which Lightning then
    does not add by itself.

    Args:
        signals: names of the signals to handle (SLURM: ``#SBATCH --signal=USR1@120`` sends SIGUSR1
            two minutes before the time limit).
        dirpath: where ``last.ckpt`` goes; default: the ModelCheckpoint's folder, else
            ``<default_root_dir>/checkpoints``.
        save_on_train_end: write ``last.ckpt`` after the final step if it is not saved yet.
    """

    def __init__(
        self,
        signals: list[str] | tuple[str, ...] = ("SIGTERM", "SIGUSR1"),
        dirpath: str | Path | None = None,
        save_on_train_end: bool = True,
    ) -> None:
        self.signals = [signal.Signals[name] if isinstance(name, str) else signal.Signals(name) for name in signals]
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.save_on_train_end = save_on_train_end
        self.received: int | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._step_at_batch_start = -1
        self._last_saved_step = -1

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only a flag: saving inside a handler could interrupt a half-done optimizer step.
        self.received = signum

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        return checkpoint_folder(trainer, self.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Installed here, after Lightning registered its own SIGTERM handler at the end of set-up, so that
        # ours replaces it while training runs (Lightning's would stop without saving).
        if threading.current_thread() is not threading.main_thread():
            log.warning("not on the main thread: SIGTERM/SIGUSR1 will not save a checkpoint")
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._step_at_batch_start:
            return  # mid gradient accumulation: no optimizer step completed, no consistent state to save
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        signum = self.received if self.received is not None else int(signal.SIGTERM)
        path = self.checkpoint_path(trainer)
        log.warning("received %s: saving %s at step %d", signal.Signals(signum).name, path, trainer.global_step)
        trainer.save_checkpoint(path, weights_only=False)  # the full training state, not weights alone
        self._last_saved_step = trainer.global_step
        self._restore_handlers()
        log.warning("stopped at step %d after %s; continue with resume=true and the same hydra.run.dir",
                    trainer.global_step, signal.Signals(signum).name)
        raise Preempted(signum, trainer.global_step, path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()
        if not self.save_on_train_end or trainer.fast_dev_run or trainer.global_step == 0:
            return
        saved = {self._last_saved_step}
        saved |= {getattr(cb, "_last_global_step_saved", -1) for cb in trainer.checkpoint_callbacks}
        if trainer.global_step not in saved:
            trainer.save_checkpoint(self.checkpoint_path(trainer), weights_only=False)
            self._last_saved_step = trainer.global_step

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()
