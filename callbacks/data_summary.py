"""Report what the DataModule did with every row: used, truncated, dropped, skipped as bad, removed
(filters, duplicates, contamination), per split and per mixture source."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


class DataSummary(L.Callback):
    """Writes ``data_summary.json`` (per split: rows read, used, truncated, dropped, skipped and removed,
    by reason, and the unreadable lines of local files; per mixture source the same; per split, the
    duplicates ``data.deduplicate`` kept, by kind; the cleaning settings; what decontamination read and found), the DataModule's other reports beside it
    (``decontamination.jsonl``: every training row that matched an evaluation prompt, with the question's
    id), logs the counts to every logger (``data/<split>/<count>``, ``data/<split>/sources/<source>/<count>``)
    at the start of fit, and repeats a one-line summary when training ends, so skipped rows are visible in
    the run folder, the metrics and the end of the log.

    Needs a DataModule with a ``summary()`` method (`zephyr_lightning.data.base.ChatDataModule`);
    does nothing otherwise.

    Args:
        path: the JSON file; default ``<default_root_dir>/data_summary.json``.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.summary: dict[str, dict[str, Any]] = {}

    @staticmethod
    def splits(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The per-split entries of a summary (those with a ``rows`` count)."""
        return {k: v for k, v in summary.items() if isinstance(v, dict) and "rows" in v}

    @staticmethod
    def metrics(summary: dict[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        for split, counts in DataSummary.splits(summary).items():
            out[f"data/{split}/rows"] = counts["rows"]
            out[f"data/{split}/used"] = counts["used"]
            out[f"data/{split}/truncated"] = counts["truncated"]
            out[f"data/{split}/dropped"] = sum(counts["dropped"].values())
            out[f"data/{split}/skipped_bad"] = sum(counts["skipped_bad"].values())
            out[f"data/{split}/removed"] = sum(counts.get("removed", {}).values())
            out[f"data/{split}/duplicates_kept"] = sum(counts.get("duplicates_kept", {}).values())
        for source in summary.get("mixture", []):
            name = re.sub(r"[^\w.-]+", "_", str(source["path"])).strip("_")
            for split, counts in source.items():
                if isinstance(counts, dict) and "rows" in counts:
                    for count in ("rows", "used"):
                        out[f"data/{split}/sources/{name}/{count}"] = counts[count]
                    out[f"data/{split}/sources/{name}/removed"] = sum(counts["removed"].values())
        return out

    @staticmethod
    def describe(summary: dict[str, Any]) -> str:
        parts = []
        for split, c in DataSummary.splits(summary).items():
            text = f"{split} ({c['split']}): {c['used']} of {c['rows']} rows used"
            details = [f"{c['truncated']} truncated"] if c["truncated"] else []
            details += [f"{n} dropped: {why}" for why, n in c["dropped"].items()]
            details += [f"{n} skipped: {why}" for why, n in c["skipped_bad"].items()]
            details += [f"{n} removed: {why}" for why, n in c.get("removed", {}).items()]
            details += [f"{n} kept: {kind}" for kind, n in c.get("duplicates_kept", {}).items()]
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
        reports = datamodule.reports() if hasattr(datamodule, "reports") else {}
        for name, records in reports.items():
            (path.parent / name).write_text("".join(json.dumps(record) + "\n" for record in records))
        for logger in trainer.loggers:
            logger.log_metrics(self.metrics(self.summary), step=trainer.global_step)
        log.info("data: %s (details: %s)", self.describe(self.summary), path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.summary and trainer.is_global_zero:
            log.info("data summary: %s", self.describe(self.summary))
