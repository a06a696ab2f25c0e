"""Logger factories with the project's defaults."""

from __future__ import annotations

import logging
import netrc
import os
import sys
from typing import Any

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)


def wandb_key_configured() -> bool:
    """True when W&B could authenticate: WANDB_API_KEY or a `wandb login` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_logger(
    project: str = "zephyr-lightning",
    save_dir: str = ".",
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    offline: bool | None = None,
    **kwargs: Any,
) -> WandbLogger:
    """A `WandbLogger` that runs offline when no API key is configured (``offline=None``).

    ``WANDB_MODE=disabled`` in the environment is respected (nothing is written).
    """
    if os.environ.get("WANDB_MODE") == "disabled":
        offline = False  # wandb.init reads WANDB_MODE itself; forcing offline would override it
    elif offline is None:
        offline = not wandb_key_configured()
    os.makedirs(save_dir, exist_ok=True)
    logger = WandbLogger(
        project=project, save_dir=save_dir, name=name, group=group, tags=list(tags or []), offline=offline, **kwargs
    )
    logger.zephyr_offline = offline
    return logger


def announce_offline_run(logger: WandbLogger) -> None:
    """One log line: where an offline run is written and how to upload it."""
    if not getattr(logger, "zephyr_offline", False):
        return
    run_dir = os.path.dirname(logger.experiment.dir)  # .../wandb/offline-run-<time>-<id>/files -> run folder
    log.info("W&B is offline (no API key): run written to %s; upload it with `wandb sync %s`", run_dir, run_dir)


def finish_wandb_run(failed: bool = False) -> None:
    """End this process's W&B run, if one is open, marked failed (exit code 1) when the job failed.

    Lightning's `WandbLogger` attaches to a run that is still open, so without this every job of a Hydra
    multirun after the first would log into the first job's run.
    """
    wandb = sys.modules.get("wandb")  # never imported: no run to end
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=1 if failed else 0)
