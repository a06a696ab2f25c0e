"""Hyper-parameter sweeps: checking W&B sweep files offline, and what each run of a sweep ended with.

    python -m zephyr_lightning.sweeps check sweeps/*.yaml           # every file against conf/
    python -m zephyr_lightning.sweeps check --run sweeps/dpo_beta_lr.yaml   # ...and run its command once

Importing this package needs no Hydra; the checker imports it when it composes configs.
"""

from zephyr_lightning.sweeps.check import (
    QUICK_RUN_OVERRIDES,
    SweepCheck,
    SweepRun,
    check_sweep_file,
    expand_command,
    run_sweep_command,
)
from zephyr_lightning.sweeps.trials import (
    COMPLETED,
    FAILED,
    RESULT_FILE,
    TrainingDiverged,
    TrialResult,
    collect_trials,
    nonfinite_losses,
    optimized_value,
    read_result,
    write_result,
    write_trials_table,
)

__all__ = [
    "COMPLETED",
    "FAILED",
    "QUICK_RUN_OVERRIDES",
    "RESULT_FILE",
    "SweepCheck",
    "SweepRun",
    "TrainingDiverged",
    "TrialResult",
    "check_sweep_file",
    "collect_trials",
    "expand_command",
    "nonfinite_losses",
    "optimized_value",
    "read_result",
    "run_sweep_command",
    "write_result",
    "write_trials_table",
]
