"""Lightning's ModelCheckpoint for a run folder that resumed runs continue: what killed runs left behind is
cleared, and the retention rule (``save_top_k``) keeps holding after a resume."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint

from zephyr_lightning.atomic import remove_stale_staging

log = logging.getLogger(__name__)


class RunCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` (same arguments) for checkpoints in a run's own folder, which a resumed run
    (``resume=true``) writes into again.

    - At the start of fit, global rank 0 removes the staging files of checkpoint writes that a kill
      interrupted (``.last.ckpt.<random>.partial``, see `zephyr_lightning.checkpoint_io`): never read
      back, and as large as the model.
    - When a run resumes from a checkpoint of this folder, the checkpoints that the retention rule of the
      checkpoint's own state no longer keeps (left by a kill between writing a new checkpoint and
      removing the one it supersedes) are removed, and the checkpoint resumed from is itself subject to
      the rule. Lightning never deletes the file a run resumed from, so after a kill the superseded step
      checkpoint stayed forever. Files newer than the one resumed from are left alone (a user who went
      back to an older checkpoint decides about them), and so is ``save_top_k=-1`` (keep all).
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero and self.dirpath and _is_local_file_protocol(self.dirpath):
            remove_stale_staging(self.dirpath)

    def _in_own_folder(self, path: str | Path | None) -> bool:
        if not path or not self.dirpath or not _is_local_file_protocol(str(path)):
            return False
        return Path(self.dirpath).absolute() in Path(path).absolute().parents

    def _should_remove_checkpoint(self, trainer: L.Trainer, previous: str, current: str) -> bool:
        if super()._should_remove_checkpoint(trainer, previous, current):
            return True
        # Lightning spares the checkpoint a run resumed from; in this run's own folder it is one of the
        # run's checkpoints like any other.
        return previous != current and self._in_own_folder(previous) and Path(previous).exists()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        resumed = trainer.ckpt_path
        if not trainer.is_global_zero or self.save_top_k == -1 or not self._in_own_folder(resumed):
            return
        kept = {Path(p).absolute() for p in (self.best_model_path, self.last_model_path, resumed, *self.best_k_models) if p}
        kept.add((Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}").absolute())
        newest = Path(resumed).stat().st_mtime_ns
        for path in sorted(Path(self.dirpath).glob(f"*{self.FILE_EXTENSION}")):
            if path.name.startswith(".") or path.absolute() in kept or path.stat().st_mtime_ns > newest:
                continue
            log.info("removing %s: superseded before the run stopped (save_top_k=%d)", path, self.save_top_k)
            trainer.strategy.remove_checkpoint(path)


def checkpoint_folder(trainer: L.Trainer, dirpath: str | Path | None = None) -> Path:
    """Where a run's checkpoints live: ``dirpath`` if given, else the ModelCheckpoint's folder, else
    ``<default_root_dir>/checkpoints`` (Lightning's own default). Files that travel with the checkpoints
    (the pre-emption save, the validation record) go there too, so a resumed run finds them."""
    if dirpath is not None:
        return Path(dirpath)
    if isinstance(trainer.checkpoint_callback, ModelCheckpoint) and trainer.checkpoint_callback.dirpath:
        return Path(trainer.checkpoint_callback.dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"
