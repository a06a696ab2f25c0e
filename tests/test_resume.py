"""Exact resume: a run SIGKILLed mid-epoch and resumed ends with the weights of an uninterrupted run and
sees every example exactly as often; a run stopped at a validation (SIGTERM as the step that owes it
ends, kill -9 while it runs) reports the same epoch and validation metrics as an uninterrupted one once
resumed; what a killed run left half-written is cleared and the retention rule holds after the resume;
pre-emption signals save, record `preempted` and stop; resume finds the checkpoint."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import Dataset

from tests.helpers import compose
from train import train
from zephyr_lightning.callbacks import Preempted
from zephyr_lightning.data.resumable import ResumableDataLoader
from zephyr_lightning.resume import (
    capture_random_state,
    find_latest_checkpoint,
    resolve_ckpt_path,
    restore_random_state,
)

ROOT = Path(__file__).resolve().parent.parent
# 24 pairs in batches of 4: 6 steps per epoch, 2 epochs; validation twice per epoch; a checkpoint every
# 2 steps; dropout on, so the global random state must be restored too.
SMALL_RUN = [
    "+experiment=dpo", "logger=csv", "+data.max_train_samples=24", "data.batch_size=4", "+data.max_val_samples=4",
    "data.eval_batch_size=4", "trainer.max_epochs=2", "trainer.val_check_interval=0.5",
    "~callbacks.sample_generation", "~callbacks.hf_export", "callbacks.model_checkpoint.every_n_train_steps=2",
    "+model.config_overrides.attention_dropout=0.2",
]
RECORD = ["+callbacks.record._target_=zephyr_lightning.callbacks.BatchRecord"]


def _start(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    args = [sys.executable, "train.py", *SMALL_RUN, f"hydra.run.dir={run_dir}", *RECORD,
            f"+callbacks.record.path={run_dir}/batches.jsonl", *extra]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "batches.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _finish(proc: subprocess.Popen) -> None:
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]


def _kill_after_step(proc: subprocess.Popen, run_dir: Path, step: int, signum: int) -> None:
    deadline = time.monotonic() + 300
    while not any(r["step"] >= step for r in _records(run_dir)):
        assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signum)
    proc.communicate(timeout=300)


def _state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """SMALL_RUN from start to end, without interruption: what every interrupted run must end up with."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    _finish(_start(run_dir))
    return run_dir


def _metric_rows(run_dir: Path) -> list[dict[str, float]]:
    """Every logged row of every CSV logger version of the run (a resumed run writes a new version)."""
    rows = []
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path) as f:
            rows += [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    return rows


def _epoch_and_validation_metrics(run_dir: Path) -> dict[tuple[str, int], float]:
    """``(name, step)`` -> value of every validation metric and every training epoch metric; a value logged
    again at the same step (by the resumed run) replaces the earlier one."""
    out: dict[tuple[str, int], float] = {}
    for row in _metric_rows(run_dir):
        for name, value in row.items():
            if name.startswith("val/") or (name.startswith("train/") and name.endswith("_epoch")):
                out[(name, int(row["step"]))] = value
    return out


def _assert_same_metrics(uninterrupted: Path, resumed: Path) -> None:
    expected, got = _epoch_and_validation_metrics(uninterrupted), _epoch_and_validation_metrics(resumed)
    assert sorted(got) == sorted(expected), sorted(set(expected) ^ set(got))
    for key, value in expected.items():
        assert math.isclose(got[key], value, rel_tol=1e-5, abs_tol=1e-7), (key, value, got[key])
    final = json.loads((resumed / "result.json").read_text())["metrics"]
    baseline = json.loads((uninterrupted / "result.json").read_text())["metrics"]
    for name, value in baseline.items():
        if name.startswith("val/") or name.endswith("_epoch"):
            assert math.isclose(final[name], value, rel_tol=1e-5, abs_tol=1e-7), (name, value, final[name])


def _check_exact_resume(uninterrupted: Path, interrupted: Path, *extra: str) -> dict:
    """SIGKILL a run mid-epoch and resume it; require the weights, AdamW state, schedule and data of the
    ``uninterrupted`` run with the same overrides. Returns the final checkpoint."""

    first = _start(interrupted, *extra)
    _kill_after_step(first, interrupted, 3, signal.SIGKILL)  # mid-epoch 0, between checkpoints or not
    assert first.returncode == -signal.SIGKILL
    killed_at = max(r["step"] for r in _records(interrupted))
    resumed_from = torch.load(find_latest_checkpoint(interrupted / "checkpoints"), weights_only=True)["global_step"]
    assert 2 <= resumed_from <= killed_at < 12
    _finish(_start(interrupted, "resume=true", *extra))

    a, b = _state(uninterrupted), _state(interrupted)
    assert a["global_step"] == b["global_step"] == 12
    # Bit-for-bit (measured: a max abs difference of 0.0 for the full and the LoRA run), not merely close.
    assert a["state_dict"].keys() == b["state_dict"].keys()
    unequal = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not unequal, unequal[:3]
    for s, t in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values(), strict=True):
        assert torch.equal(s["exp_avg"], t["exp_avg"]) and torch.equal(s["exp_avg_sq"], t["exp_avg_sq"])
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == 12

    # The data each step saw: the resumed run's records replace the killed run's for the steps it redid.
    baseline = {r["step"]: r["prompt_ids"] for r in _records(uninterrupted)}
    merged: dict[int, list[str]] = {}
    for r in _records(interrupted):
        merged[r["step"]] = r["prompt_ids"]
    assert merged == baseline
    seen = Counter(pid for ids in merged.values() for pid in ids)
    assert len(seen) == 24 and set(seen.values()) == {2}  # every pair exactly once per epoch
    return a


def test_sigkilled_run_resumes_to_the_same_weights_and_data(tmp_path, uninterrupted):
    _check_exact_resume(uninterrupted, tmp_path / "b")


def test_sigkilled_lora_run_resumes_exactly_from_adapter_only_checkpoints(tmp_path):
    """LoRA with dropout (0.05) on top of attention dropout: the checkpoint holds the adapters alone, the base is
    rebuilt from its source, and the resumed run still ends bit-for-bit where the uninterrupted one did."""
    _finish(_start(tmp_path / "a", "model/peft=lora"))
    final = _check_exact_resume(tmp_path / "a", tmp_path / "b", "model/peft=lora")
    assert final["state_dict"] and all(".lora_A." in k or ".lora_B." in k for k in final["state_dict"])


class _KillDuringValidation(L.Callback):
    """SIGKILLs this process in the middle of the validation after optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def test_stops_at_validations_resume_to_the_same_metrics_without_leftovers(tmp_path, uninterrupted):
    """One run stopped twice, each time at a validation, then resumed to the end.

    1. SIGTERM during step 3, after which a validation is due (val_check_interval=0.5: steps 3, 6, 9, 12):
       the step's checkpoint is written, result.json says `preempted`, and the run stops before that
       validation.
    2. Resumed, it runs the validation of step 3, then is SIGKILLed in the middle of the validation after
       step 6 (the end of epoch 0, just after the step-6 checkpoint). As a kill during a checkpoint write
       would, a staging file, a stale last.ckpt and a never-removed step checkpoint are left behind.
    3. Resumed again, it validates step 6 again, reports epoch 0's training metrics, removes the leftovers,
       keeps save_top_k=1 (the step checkpoint it resumed from goes once superseded) and finishes.

    Every `val/*` and `train/*_epoch` value, by step, and the final weights equal the uninterrupted run's.
    """
    first = _start(tmp_path, *_signal_at(3, signal.SIGTERM))
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["status"] == "preempted" and "stopped by SIGTERM at step 3" in record["error"]
    assert not any(name.startswith("val/") for name, _ in _epoch_and_validation_metrics(tmp_path))

    second = _start(tmp_path, "resume=true", "+callbacks.kill._target_=tests.test_resume._KillDuringValidation",
                    "+callbacks.kill.step=6")
    second.communicate(timeout=300)
    assert second.returncode == -signal.SIGKILL
    assert ("val/loss", 2) in _epoch_and_validation_metrics(tmp_path)  # step 3's validation (logged at step 2)
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["epoch00-step000006.ckpt", "last.ckpt"]
    os.utime(checkpoints / "last.ckpt", (1, 1))  # as if the kill had come while last.ckpt was rewritten...
    (checkpoints / ".last.ckpt.k9x2ab7q.partial").write_bytes(b"half a checkpoint")  # ... leaving this
    shutil.copy(checkpoints / "epoch00-step000006.ckpt", checkpoints / "epoch00-step000004.ckpt")
    os.utime(checkpoints / "epoch00-step000004.ckpt", (2, 2))  # a step checkpoint never removed
    (tmp_path / ".result.json.3fj29dkq.partial").write_text("{")

    _finish(_start(tmp_path, "resume=true"))
    _assert_same_metrics(uninterrupted, tmp_path)
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch01-step000012.ckpt", "last.ckpt", "validated.json"]
    assert not list(tmp_path.glob(".*.partial"))
    a, b = _state(uninterrupted), _state(tmp_path)
    assert max((a["state_dict"][k] - b["state_dict"][k]).abs().max().item() for k in a["state_dict"]) < 1e-6


class _SignalAtStep(L.Callback):
    """Sends this process a signal while step ``step`` is running, as a cluster would."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step - 1:
            os.kill(os.getpid(), self.signum)


def _signal_at(step: int, signum: int) -> list[str]:
    return ["+callbacks.signal._target_=tests.test_resume._SignalAtStep", f"+callbacks.signal.step={step}",
            f"+callbacks.signal.signum={int(signum)}"]


def test_preemption_signals_save_the_step_and_stop(tmp_path):
    one_epoch = [o for o in SMALL_RUN[:-1] if not o.startswith(("trainer.max_epochs", "trainer.val_check_interval"))]
    one_epoch.append("trainer.max_epochs=1")
    handlers_before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    for resume, step, signum in ((False, 3, signal.SIGUSR1), (True, 5, signal.SIGTERM)):
        with pytest.raises(Preempted) as stop:
            train(compose([*one_epoch, f"resume={resume}", *_signal_at(step, signum)], tmp_path))
        assert stop.value.code == 128 + signum and stop.value.step == step
        assert _state(tmp_path)["global_step"] == step  # the step under way finished and was saved
        assert {s: signal.getsignal(s) for s in handlers_before} == handlers_before  # handlers given back
    assert not (tmp_path / "hf").exists()

    train(compose([*one_epoch, "resume=true"], tmp_path))
    assert _state(tmp_path)["global_step"] == 6


class _Rows(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> int:
        return index


def _batches(loader, epoch: int, count: int | None = None) -> list[list[int]]:
    loader.sampler.set_epoch(epoch)
    out = []
    for batch in loader:
        out.append(batch.tolist())
        if count is not None and len(out) == count:
            break
    return out


def test_loader_resumes_mid_epoch_in_the_same_order():
    full = [_batches(ResumableDataLoader(_Rows(), batch_size=3, seed=5), epoch) for epoch in (0, 1)]
    assert full[0] != full[1] and sorted(sum(full[0], [])) == list(range(10))

    loader = ResumableDataLoader(_Rows(), batch_size=3, seed=5)
    assert _batches(loader, 1, count=2) == full[1][:2]
    state = loader.state_dict()
    assert (state["epoch"], state["batches"], state["epoch_batches"]) == (1, 2, 4)

    fresh = ResumableDataLoader(_Rows(), batch_size=3, seed=5)
    fresh.load_state_dict(state)
    assert _batches(fresh, 1) == full[1][2:]  # the rest of epoch 1, nothing repeated or lost
    assert _batches(fresh, 2) == _batches(ResumableDataLoader(_Rows(), batch_size=3, seed=5), 2)

    moved_on = ResumableDataLoader(_Rows(), batch_size=3, seed=5)
    moved_on.load_state_dict(state)
    assert _batches(moved_on, 2) == _batches(ResumableDataLoader(_Rows(), batch_size=3, seed=5), 2)


def test_loader_refuses_a_changed_layout_mid_epoch():
    loader = ResumableDataLoader(_Rows(), batch_size=3, seed=5)
    _batches(loader, 0, count=1)
    with pytest.raises(ValueError, match=r"batch_size 3 -> 2"):
        ResumableDataLoader(_Rows(), batch_size=2, seed=5).load_state_dict(loader.state_dict())
    _batches(loader, 0)  # a finished epoch: any layout may follow
    ResumableDataLoader(_Rows(), batch_size=2, seed=5).load_state_dict(loader.state_dict())


def test_random_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    state = capture_random_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save({"state": state}, tmp_path / "rng.pt")
    restore_random_state(torch.load(tmp_path / "rng.pt", weights_only=True)["state"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_resolve_ckpt_path(tmp_path):
    folder = tmp_path / "checkpoints"
    assert resolve_ckpt_path(None, False, folder) is None
    with pytest.raises(FileNotFoundError, match=rf"resume=true: no checkpoint in {folder}"):
        resolve_ckpt_path(None, True, folder)
    with pytest.raises(FileNotFoundError, match=rf"ckpt_path=last: no checkpoint in {folder}"):
        resolve_ckpt_path("last", False, folder)
    assert resolve_ckpt_path(None, "auto", folder) is None
    folder.mkdir()
    older, newer = folder / "epoch00-step000002.ckpt", folder / "last.ckpt"
    older.write_bytes(b"a")
    newer.write_bytes(b"b")
    os.utime(older, (1, 1))
    (folder / ".last.ckpt.partial-123").write_bytes(b"half")  # an interrupted write is never chosen
    assert resolve_ckpt_path(None, True, folder) == str(newer)
    assert resolve_ckpt_path("last", False, folder) == str(newer)
    assert resolve_ckpt_path(None, "auto", folder) == str(newer)
    assert resolve_ckpt_path(str(older), False, folder) == str(older)
    with pytest.raises(ValueError, match="both choose a checkpoint"):
        resolve_ckpt_path(str(older), True, folder)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        resolve_ckpt_path(str(folder / "nope.ckpt"), False, folder)
