"""Continuing a run: which checkpoint to resume from, and the global random state a checkpoint carries.

Lightning restores the model, optimizer, LR schedulers, loop counters and (through
`zephyr_lightning.data.resumable`) the position in the training data. It does not restore the global
random generators, which dropout draws from; `capture_random_state` / `restore_random_state` do, in a
form that loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zephyr_lightning.errors import InvalidValue, MissingFile

log = logging.getLogger(__name__)

RESUME_CHOICES = (False, True, "auto")


def find_latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest ``*.ckpt`` in ``folder`` (by modification time; ``last.ckpt`` wins a tie), or None.

    Half-written files never match: checkpoints are written under a hidden temporary name and renamed
    when complete (`zephyr_lightning.checkpoint_io.SafeCheckpointIO`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = [p for p in folder.glob("*.ckpt") if p.is_file() and not p.name.startswith(".")]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"))


def ckpt_choice_errors(ckpt_path: Any, resume: Any) -> list[Exception]:
    """What is wrong with a ``ckpt_path`` / ``resume`` pair, seen without looking for checkpoints; each
    error names the key and the value (``resume='yes': must be true, false or auto``).

    `resolve_ckpt_path` raises the first; config validation (`zephyr_lightning.validation`) reports
    them all before anything is loaded.
    """
    errors: list[Exception] = []
    if resume not in RESUME_CHOICES:
        errors.append(InvalidValue(f"resume={resume!r}: must be true, false or auto"))
        resume = False
    if ckpt_path in (None, "", "last"):
        return errors
    if not isinstance(ckpt_path, str):
        errors.append(InvalidValue(f"ckpt_path={ckpt_path!r}: must be a file path, last, or null"))
    elif resume:
        errors.append(InvalidValue(
            f"ckpt_path={ckpt_path!r}: conflicts with resume={resume} (both choose a checkpoint); set one of them"
        ))
    elif not Path(ckpt_path).is_file():
        errors.append(MissingFile(f"ckpt_path={ckpt_path!r}: no such checkpoint file"))
    return errors


def resolve_ckpt_path(ckpt_path: str | None, resume: bool | str, checkpoint_dir: str | Path) -> str | None:
    """The checkpoint a run starts from.

    - ``ckpt_path=PATH``: that file (it must exist);
    - ``ckpt_path=last`` or ``resume=true``: the newest checkpoint in ``checkpoint_dir`` (the run
      folder's ``checkpoints/``); an error naming the folder when there is none;
    - ``resume=auto``: the same, but a fresh start when there is none (one command for the first start
      and every restart of a pre-emptible job);
    - neither: None (a fresh start).
    """
    errors = ckpt_choice_errors(ckpt_path, resume)
    if errors:
        raise errors[0]
    if ckpt_path not in (None, "", "last"):
        return str(Path(ckpt_path))
    if ckpt_path != "last" and not resume:
        return None
    checkpoint_dir = Path(checkpoint_dir)
    latest = find_latest_checkpoint(checkpoint_dir)
    if latest is not None:
        log.info("resuming from %s", latest)
        return str(latest)
    if resume == "auto" and ckpt_path != "last":
        log.info("resume=auto: no checkpoint in %s, starting from scratch", checkpoint_dir)
        return None
    asked = "ckpt_path=last" if ckpt_path == "last" else "resume=true"
    raise MissingFile(
        f"{asked}: no checkpoint in {checkpoint_dir}. Point hydra.run.dir at the folder of the run to continue "
        "(each run gets a new timestamped folder otherwise), or use resume=auto to start fresh when there is none."
    )


def capture_random_state() -> dict[str, Any]:
    """The global generators of torch (CPU and every CUDA device), numpy and Python, as plain data."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy's state holds an ndarray, which weights_only loading refuses: keep it as a tensor.
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }


def restore_random_state(state: dict[str, Any]) -> None:
    """Set the global generators back to a `capture_random_state` result."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("torch_cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    elif cuda:
        log.warning("the checkpoint holds %d CUDA generator states; this process sees %d devices: not restored",
                    len(cuda), torch.cuda.device_count() if torch.cuda.is_available() else 0)
    numpy_state = state["numpy"]
    np.random.set_state((
        numpy_state["kind"],
        numpy_state["keys"].numpy().astype(np.uint32),
        numpy_state["position"],
        numpy_state["has_gauss"],
        numpy_state["cached_gaussian"],
    ))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
