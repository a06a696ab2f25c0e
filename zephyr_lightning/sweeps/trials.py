"""What one run of a sweep ended with, written into its run folder, and the table of a whole sweep.

Every run of ``train.py`` writes ``result.json`` into its run folder: the status (``completed``,
``failed`` or ``preempted``), the optimised metric and its value, every final metric, the error of a failed run and the
command-line overrides that made the run. A sweep's folder then holds one per trial, whichever sweeper
(Optuna, basic grid) or agent ran them, and `write_trials_table` gathers them into ``trials.csv``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zephyr_lightning.atomic import atomic_write

RESULT_FILE = "result.json"
TRIALS_TABLE = "trials.csv"
COMPLETED = "completed"
FAILED = "failed"
PREEMPTED = "preempted"  # stopped by SIGTERM/SIGUSR1 after saving a checkpoint; resume=true continues it


class TrainingDiverged(RuntimeError):
    """A run ended with a non-finite loss or optimised metric: its numbers mean nothing.

    ``metrics`` holds the run's final metrics, so that a record of the failure can keep them.
    """

    def __init__(self, message: str, metrics: Mapping[str, float] | None = None) -> None:
        super().__init__(message)
        self.metrics = dict(metrics or {})


def nonfinite_losses(metrics: Mapping[str, float]) -> dict[str, float]:
    """The final losses (``<stage>/loss``, ``<stage>/loss_epoch``) that are NaN or infinite.

    Other metrics can stay finite after a divergence (DPO's reward accuracy is 0.0 on NaN rewards), so a
    run is judged by its losses, not by the metric a sweep optimises.
    """
    return {
        name: value
        for name, value in metrics.items()
        if name.rsplit("/", 1)[-1] in ("loss", "loss_epoch") and not math.isfinite(value)
    }


def optimized_value(metrics: Mapping[str, float], name: str) -> float:
    """The value of the optimised metric ``name``; an error naming the logged metrics if it was not logged,
    `TrainingDiverged` if it is not finite."""
    if name not in metrics:
        raise KeyError(f"optimized_metric={name!r} was not logged; logged: {sorted(metrics)}")
    value = float(metrics[name])
    if not math.isfinite(value):
        raise TrainingDiverged(f"optimized_metric {name}={value}", metrics)
    return value


def _json_number(value: float) -> float | str:
    # JSON has no NaN or infinity; strings keep them readable (float("nan") reads them back).
    return value if math.isfinite(value) else str(value)


@dataclass
class TrialResult:
    """One run's outcome, as stored in its ``result.json``."""

    status: str
    optimized_metric: str | None = None
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    overrides: list[str] = field(default_factory=list)
    wandb_group: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        data = asdict(self)
        data["metrics"] = {k: _json_number(v) for k, v in sorted(self.metrics.items())}
        if self.value is not None:
            data["value"] = _json_number(self.value)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrialResult:
        data = json.loads(text)
        data["metrics"] = {k: float(v) for k, v in data.get("metrics", {}).items()}
        if data.get("value") is not None:
            data["value"] = float(data["value"])
        return cls(**data)


def write_result(run_dir: str | os.PathLike, result: TrialResult) -> Path:
    """Write ``result.json`` into ``run_dir`` (through a temporary file, so a reader never sees half)."""
    path = Path(run_dir) / RESULT_FILE
    with atomic_write(path) as f:
        f.write(result.to_json() + "\n")
    return path


def read_result(run_dir: str | os.PathLike) -> TrialResult:
    path = Path(run_dir) / RESULT_FILE
    try:
        return TrialResult.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"{path}: not a readable trial result ({error})") from error


def _trial_sort_key(path: Path) -> tuple[int, str]:
    # Hydra names trial folders 0, 1, ..., 10: numeric order, not string order.
    name = path.parent.name
    return (int(name), name) if name.isdigit() else (1 << 62, name)


def collect_trials(sweep_dir: str | os.PathLike) -> list[tuple[str, TrialResult]]:
    """``(trial folder name, result)`` for each trial folder under ``sweep_dir``, in trial order.

    A trial folder without ``result.json`` (a trial killed before it could write one) is reported as failed.
    """
    sweep_dir = Path(sweep_dir)
    found = sorted((p / RESULT_FILE for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=_trial_sort_key)
    trials = []
    for path in found:
        if path.exists():
            trials.append((path.parent.name, read_result(path.parent)))
        else:
            trials.append((path.parent.name, TrialResult(status=FAILED, error="no result.json: the run was killed")))
    return trials


def write_trials_table(sweep_dir: str | os.PathLike, trials: Iterable[tuple[str, TrialResult]] | None = None) -> Path:
    """Write ``trials.csv`` (one row per trial: folder, status, metric, value, overrides, error) into ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    trials = collect_trials(sweep_dir) if trials is None else list(trials)
    path = sweep_dir / TRIALS_TABLE
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "status", "metric", "value", "overrides", "error"])
        for name, result in trials:
            writer.writerow([
                name, result.status, result.optimized_metric or "",
                "" if result.value is None else repr(result.value),
                " ".join(result.overrides), result.error or "",
            ])
    return path


def describe_trials(trials: Iterable[tuple[str, TrialResult]]) -> list[str]:
    """One log line per trial, naming only the overrides that differ between trials (the swept ones):
    ``trial 3: completed val/loss=1.2345 (optim.lr=1e-05)``."""
    trials = list(trials)
    seen: dict[str, set[str]] = {}
    for _, result in trials:
        for override in result.overrides:
            key, _, value = override.partition("=")
            seen.setdefault(key, set()).add(value)
    varying = {key for key, values in seen.items() if len(values) > 1}
    lines = []
    for name, result in trials:
        swept = [o for o in result.overrides if o.partition("=")[0] in varying]
        where = f" ({' '.join(swept)})" if swept else ""
        if result.status == COMPLETED and result.value is not None:
            lines.append(f"trial {name}: completed {result.optimized_metric}={result.value:.6g}{where}")
        elif result.status == COMPLETED:
            lines.append(f"trial {name}: completed{where}")
        else:
            error = " ".join((result.error or "").split())  # one line per trial, however long the error
            lines.append(f"trial {name}: FAILED: {error}{where}")
    return lines
