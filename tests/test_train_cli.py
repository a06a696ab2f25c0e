"""`python train.py +experiment=dpo` as a user runs it: a real process, the embedded default."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _last_value(metrics_csv: Path, name: str) -> float:
    return _values(metrics_csv, name)[-1]


def _run(experiment: str, run_dir: Path) -> float:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "train.py", f"+experiment={experiment}", f"hydra.run.dir={run_dir}", "logger=csv"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return time.monotonic() - start


def _values(metrics_csv: Path, name: str) -> list[float]:
    with open(metrics_csv) as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


def test_dpo_default_command_learns_the_preference(tmp_path):
    elapsed = _run("dpo", tmp_path)
    metrics = next(tmp_path.glob("csv/**/metrics.csv"))
    accuracy = _last_value(metrics, "val/rewards/accuracies")
    assert accuracy > 0.5, f"val/rewards/accuracies={accuracy}"
    assert _last_value(metrics, "val/rewards/margins") > 0
    assert (tmp_path / "hf" / "model.safetensors").exists()
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "train.log").exists()
    # The brief's budget is 3 minutes on 2 cores; leave room for a loaded CI machine.
    assert elapsed < 180, f"took {elapsed:.0f}s"


def test_sft_default_command_lowers_validation_loss_and_exports(tmp_path):
    elapsed = _run("sft", tmp_path)
    losses = _values(next(tmp_path.glob("csv/**/metrics.csv")), "val/loss")
    assert len(losses) >= 4 and losses[-1] < 0.5 * losses[0], losses
    assert all(b <= a + 0.05 for a, b in zip(losses, losses[1:])), losses
    assert (tmp_path / "hf" / "model.safetensors").exists()
    assert elapsed < 180, f"took {elapsed:.0f}s"
