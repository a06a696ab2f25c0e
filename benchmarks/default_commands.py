"""Time the README's embedded-default commands against their budget (not a test: a busy machine is slow).

    python benchmarks/default_commands.py            # dpo and sft, one run each
    python benchmarks/default_commands.py --runs 3   # best of three

Prints each command's wall-clock time and the budget the brief sets (3 minutes each on 2 CPU cores), and
exits 1 when a command fails. The ratio to the budget is what to read on a loaded machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = {"dpo": 180.0, "sft": 180.0}


def run(experiment: str) -> float:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.monotonic()
        result = subprocess.run([sys.executable, "train.py", f"+experiment={experiment}", f"hydra.run.dir={run_dir}",
                                 "logger=csv"], cwd=ROOT, env=env, capture_output=True, text=True)
        elapsed = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"{experiment}: failed\n{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--experiments", nargs="+", default=list(BUDGET_S))
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for experiment in args.experiments:
        best = min(run(experiment) for _ in range(args.runs))
        budget = BUDGET_S[experiment]
        print(f"python train.py +experiment={experiment}: {best:.1f} s (budget {budget:.0f} s, {best / budget:.2f}x)")


if __name__ == "__main__":
    main()
