"""Soak test of exact resume (not part of CI): kill training with SIGKILL at random steps, resume it, and
count how many runs end bit-identical to one uninterrupted run.

    python benchmarks/soak_resume.py                      # 20 cycles, the embedded dDPO default
    python benchmarks/soak_resume.py --experiment sft     # the embedded dSFT default (packed rows)
    python benchmarks/soak_resume.py --cycles 5 --kills 2 -- trainer.max_epochs=1 +model.config_overrides.attention_dropout=0.1

Each cycle starts a fresh run folder, SIGKILLs the process once the run has finished a randomly drawn
step (``--kills`` times, each resumed with ``resume=auto``: a run killed before its first checkpoint
starts over), lets the last resumption finish, then
compares with the uninterrupted run:
- weights and AdamW moments: bit-identical (``torch.equal``) or not, and the largest difference;
- the data: the prompt_ids of every optimizer step (a BatchRecord callback writes them), the resumed
  run's records replacing the killed run's for the steps it redid.

Arguments after ``--`` are passed to every ``train.py`` run (Hydra overrides). Timings depend on the
machine; the numbers that matter are the identical counts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BASE = [
    "logger=csv", "~callbacks.sample_generation", "~callbacks.hf_export", "optimized_metric=null",
    "+callbacks.record._target_=zephyr_lightning.callbacks.BatchRecord",
]
EXPERIMENT = "dpo"


def _command(run_dir: Path, every_n: int, extra: list[str]) -> list[str]:
    return [sys.executable, "train.py", f"+experiment={EXPERIMENT}", *BASE, f"hydra.run.dir={run_dir}",
            f"+callbacks.record.path={run_dir}/batches.jsonl", f"callbacks.model_checkpoint.every_n_train_steps={every_n}",
            *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "batches.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line being written when the process was killed
            out.append(json.loads(line))
    return out


def _run_to_end(command: list[str]) -> None:
    result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"run failed ({result.returncode}):\n{result.stderr[-3000:]}")


def _run_and_kill(command: list[str], run_dir: Path, step: int) -> int:
    """Start, SIGKILL once step ``step`` is recorded; return the last step recorded before the kill."""
    earlier = len(_records(run_dir))  # records of the runs before this one
    proc = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not any(r["step"] >= step for r in _records(run_dir)[earlier:]):
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended before step {step}:\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return max(r["step"] for r in _records(run_dir))


def _final_state(run_dir: Path) -> dict:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    tensors = dict(checkpoint["state_dict"])
    for index, state in checkpoint["optimizer_states"][0]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            tensors[f"optimizer.{index}.{name}"] = state[name]
    return {"step": checkpoint["global_step"], "tensors": tensors}


def _steps(run_dir: Path) -> dict[int, list[str]]:
    merged: dict[int, list[str]] = {}
    for record in _records(run_dir):
        merged[record["step"]] = record["prompt_ids"]
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="dpo", choices=["dpo", "sft"])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--kills", type=int, default=1, help="SIGKILLs (and resumptions) per cycle")
    parser.add_argument("--every-n", type=int, default=10, help="checkpoint every N optimizer steps")
    parser.add_argument("--seed", type=int, default=0, help="draws the kill steps")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed at the end")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args()
    global EXPERIMENT
    EXPERIMENT = args.experiment

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak_resume-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    start = time.monotonic()
    baseline_dir = workdir / "uninterrupted"
    _run_to_end(_command(baseline_dir, args.every_n, args.overrides))
    baseline, baseline_steps = _final_state(baseline_dir), _steps(baseline_dir)
    total = baseline["step"]
    print(f"uninterrupted run: {total} steps in {time.monotonic() - start:.0f} s "
          f"(overrides: {' '.join(args.overrides) or 'none'}; checkpoint every {args.every_n} steps)", flush=True)

    identical = same_data = 0
    for cycle in range(1, args.cycles + 1):
        t0 = time.monotonic()
        run_dir = workdir / f"cycle{cycle:02d}"
        kills = sorted(rng.sample(range(1, total), k=min(args.kills, total - 1)))
        reached = []
        for index, step in enumerate(kills):
            resume = ["resume=auto"] if index else []  # auto: killed before the first checkpoint -> start over
            reached.append(_run_and_kill(_command(run_dir, args.every_n, [*args.overrides, *resume]), run_dir, step))
        _run_to_end(_command(run_dir, args.every_n, [*args.overrides, "resume=auto"]))
        state = _final_state(run_dir)
        keys_match = state["tensors"].keys() == baseline["tensors"].keys()
        bitwise = keys_match and state["step"] == total and all(
            torch.equal(state["tensors"][k], baseline["tensors"][k]) for k in baseline["tensors"])
        difference = max((state["tensors"][k] - baseline["tensors"][k]).abs().max().item()
                         for k in baseline["tensors"]) if keys_match else float("inf")
        data = _steps(run_dir) == baseline_steps
        identical += bitwise
        same_data += data
        print(f"cycle {cycle:2d}: killed after step(s) {reached} (drawn {kills}); final step {state['step']}; "
              f"bit-identical={bitwise} max|diff|={difference:.3g} same data per step={data}; "
              f"{time.monotonic() - t0:.0f} s", flush=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)

    print(f"\n{identical}/{args.cycles} cycles ended bit-identical to the uninterrupted run (weights and AdamW "
          f"moments); {same_data}/{args.cycles} saw the same rows at every step; {time.monotonic() - start:.0f} s")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
