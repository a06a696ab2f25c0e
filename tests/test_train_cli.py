"""`python train.py +experiment=...` as a user runs it: a real process, the embedded default.

Time budgets are not asserted here (a busy machine would fail them): `benchmarks/default_commands.py`
times these commands against their budget.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _last_value(metrics_csv: Path, name: str) -> float:
    return _values(metrics_csv, name)[-1]


def _run(experiment: str, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "train.py", f"+experiment={experiment}", f"hydra.run.dir={run_dir}", "logger=csv", *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _values(metrics_csv: Path, name: str) -> list[float]:
    with open(metrics_csv) as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


def test_dpo_default_command_learns_the_preference(tmp_path):
    _run("dpo", tmp_path)
    metrics = next(tmp_path.glob("csv/**/metrics.csv"))
    accuracy = _last_value(metrics, "val/rewards/accuracies")
    assert accuracy > 0.5, f"val/rewards/accuracies={accuracy}"
    assert _last_value(metrics, "val/rewards/margins") > 0
    assert (tmp_path / "hf" / "model.safetensors").exists()
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "train.log").exists()


def test_sft_default_command_lowers_validation_loss_and_exports(tmp_path):
    _run("sft", tmp_path)
    losses = _values(next(tmp_path.glob("csv/**/metrics.csv")), "val/loss")
    assert len(losses) >= 4 and losses[-1] < 0.5 * losses[0], losses
    assert all(b <= a + 0.05 for a, b in zip(losses, losses[1:])), losses
    assert (tmp_path / "hf" / "model.safetensors").exists()


def test_a_run_that_stops_before_any_validation_is_validated_at_the_end(tmp_path):
    """max_steps=5 ends training before the epoch's validation: the run validates the final weights,
    reports the optimised metric and exits 0 (it used to train, export, then fail on a missing metric)."""
    result = _run("dpo", tmp_path, "trainer.max_steps=5", "callbacks.sample_generation.max_new_tokens=4")
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["status"] == "completed" and record["warnings"] == []
    assert record["optimized_metric"] == "val/rewards/accuracies" and record["value"] is not None
    assert "val/loss" in record["metrics"] and "train/loss" in record["metrics"]
    assert "step 5 reaches max_steps: validating the final weights" in result.stdout + result.stderr
    # Validated inside fit, so the export's model card reports the same final validation metrics.
    assert f"| `val/loss` | {record['metrics']['val/loss']:.6g} |" in (tmp_path / "hf" / "README.md").read_text()


# The cheapest real run: dSFT (no reference model), one optimizer step on four rows, one validation batch.
ONE_STEP = ("trainer.max_steps=1", "trainer.limit_val_batches=1", "+data.max_train_samples=4", "+data.max_val_samples=2",
            "~callbacks.sample_generation", "~callbacks.hf_export")
NEVER_LOGGED = "optimized_metric=val/does_not_exist"


def test_a_single_run_whose_optimized_metric_was_not_logged_succeeds_with_a_warning(tmp_path):
    """A run that trained is a success: the missing metric is a warning in result.json and the log, exit 0."""
    result = _run("sft", tmp_path, *ONE_STEP, NEVER_LOGGED)
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["status"] == "completed" and record["error"] is None and record["value"] is None
    assert record["optimized_metric"] == "val/does_not_exist" and "val/loss" in record["metrics"]
    assert record["warnings"] == [f"optimized_metric='val/does_not_exist' was not logged; logged: "
                                  f"{sorted(record['metrics'])}"]
    assert record["warnings"][0] in result.stdout + result.stderr


def test_a_sweep_trial_whose_optimized_metric_was_not_logged_is_recorded_as_failed(tmp_path):
    """In a multirun the sweeper needs the number: the trial is recorded as failed, and the sweep itself goes on
    (exit 0)."""
    from zephyr_lightning.sweeps.trials import collect_trials

    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "+experiment=sft", f"hydra.sweep.dir={tmp_path}", "logger=csv", *ONE_STEP,
         NEVER_LOGGED], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    [(name, trial)] = collect_trials(tmp_path)
    assert name == "0" and trial.status == "failed" and trial.value is None
    assert trial.error.startswith("KeyError: \"optimized_metric='val/does_not_exist' was not logged; logged: [")
    assert "val/loss" in trial.metrics  # it trained and validated; only the number the sweeper needs is missing
