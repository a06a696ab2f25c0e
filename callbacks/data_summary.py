"""Report what the DataModule did with every row: used, truncated, dropped, skipped as bad."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


class DataSummary(L.Callback):
    """Writes ``data_summary.json`` (per split: rows read, used, truncated, dropped and skipped, by
    reason, and the unreadable lines of local files), logs the counts to every logger
    (``data/<split>/<count>``) at the start of fit, and repeats a one-line summary when training ends,
    so skipped rows are visible in the run folder, the metrics and the end of the log.

    Needs a DataModule with a ``summary()`` method (`zephyr_lightning.data.base.ChatDataModule`);
    does nothing otherwise.

    Args:
        path: the JSON file; default ``<default_root_dir>/data_summary.json``.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.summary: dict[str, dict[str, Any]] = {}

    @staticmethod
    def metrics(summary: dict[str, dict[str, Any]]) -> dict[str, float]:
        out: dict[str, float] = {}
        for split, counts in summary.items():
            out[f"data/{split}/rows"] = counts["rows"]
            out[f"data/{split}/used"] = counts["used"]
            out[f"data/{split}/truncated"] = counts["truncated"]
            out[f"data/{split}/dropped"] = sum(counts["dropped"].values())
            out[f"data/{split}/skipped_bad"] = sum(counts["skipped_bad"].values())
        return out

    @staticmethod
    def describe(summary: dict[str, dict[str, Any]]) -> str:
        parts = []
        for split, c in summary.items():
            text = f"{split} ({c['split']}): {c['used']} of {c['rows']} rows used"
            details = [f"{c['truncated']} truncated"] if c["truncated"] else []
            details += [f"{n} dropped: {why}" for why, n in c["dropped"].items()]
            details += [f"{n} skipped: {why}" for why, n in c["skipped_bad"].items()]
            parts.append(text + (f" ({'; '.join(details)})" if details else ""))
        return "; ".join(parts)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "summary"):
            return
        self.summary = datamodule.summary()
        if not trainer.is_global_zero or not self.summary:
            return
        path = self.path or Path(trainer.default_root_dir) / "data_summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.summary, indent=2) + "\n")
        for logger in trainer.loggers:
            logger.log_metrics(self.metrics(self.summary), step=trainer.global_step)
        log.info("data: %s (details: %s)", self.describe(self.summary), path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.summary and trainer.is_global_zero:
            log.info("data summary: %s", self.describe(self.summary))
