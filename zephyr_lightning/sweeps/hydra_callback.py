"""A Hydra callback that ends every multirun with a table of its trials.

Hydra loads it from ``hydra.callbacks`` in ``conf/train.yaml``; nothing in the library imports it, so
``import zephyr_lightning`` still needs no Hydra.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from zephyr_lightning.sweeps.trials import COMPLETED, collect_trials, describe_trials, write_trials_table

log = logging.getLogger("zephyr_lightning.sweeps")


class SweepSummary(Callback):
    """Pins the sweep's name at its start; at its end writes ``trials.csv`` into the sweep folder and logs
    one line per trial (status, optimised metric, the overrides that differ between trials)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra gives each trial a copy of this config's resolver cache. Resolving `sweep_name` here puts its
        # ${now:...} in that cache, so every trial sees the same timestamp and logs to the same W&B group,
        # even when a user's hydra.sweep.dir does not mention sweep_name.
        if "sweep_name" in config:
            log.info("sweep %s: trials under %s", config.sweep_name, config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        trials = collect_trials(sweep_dir)
        if not trials:
            return
        table = write_trials_table(sweep_dir, trials)
        for line in describe_trials(trials):
            log.info(line)
        failed = sum(result.status != COMPLETED for _, result in trials)
        log.info("%d trials, %d failed; table: %s", len(trials), failed, table)
