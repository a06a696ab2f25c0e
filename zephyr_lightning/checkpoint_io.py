"""Checkpoint files that are either complete or absent, and that load without running pickled code.

Lightning's default writer stages a checkpoint in the system temporary folder (and in memory) and moves
it into place; when that folder is on another file system (a node-local /tmp, checkpoints on shared
storage) the move is a copy, and a kill during it leaves a truncated checkpoint under the real name.
`SafeCheckpointIO` writes beside the target under a hidden name, flushes it to disk and renames it, which
is atomic on one file system. Loading always uses ``torch.load(weights_only=True)``: tensors and plain
data only, so a tampered checkpoint cannot execute code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol, get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from zephyr_lightning.atomic import atomic_write


class SafeCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` with atomic local writes and ``weights_only=True`` loading (always)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(str(path)):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        # Staged under a hidden name without the .ckpt suffix: never mistaken for a checkpoint by
        # `find_latest_checkpoint`.
        with atomic_write(path, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(
        self,
        path: str | Path,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError(
                f"{path}: SafeCheckpointIO loads checkpoints with weights_only=True only (plain data and tensors); "
                "a checkpoint that needs pickled objects must not be trusted"
            )
        fs = get_filesystem(path)
        if not fs.exists(path):
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        with fs.open(path, "rb") as f:
            return torch.load(f, map_location=map_location, weights_only=True)
