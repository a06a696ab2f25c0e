"""Mini-Zephyr: the whole recipe (dSFT, AIF, dDPO) at toy scale, on tasks a program can check.

    python train.py +experiment=zephyr_tiny            # 3 seeds, report in the run folder

- `tasks`: the task family (`TaskFamily`, `Task`), `parse_prompt` and `grade` (partial credit);
- `teacher`: writes the dSFT dialogues and the prompt sets (`write_teacher_data`);
- `judge`: `judge_score(prompt, response)`, the judge for `zephyr_lightning.aif.CallableJudge`;
- `evaluate`: both models on held-out prompts through the AIF generate and judge steps, win rates;
- `report`: report.md, results.json and the plots;
- `pipeline`: the Hydra glue `train.py` calls (imported on its own; the rest needs no Hydra).
"""

from zephyr_lightning.mini.evaluate import ModelScores, evaluate_models, read_scores, win_rate
from zephyr_lightning.mini.judge import judge_score, mini_judge
from zephyr_lightning.mini.report import SeedResult, parse_main_table, write_report
from zephyr_lightning.mini.tasks import (
    KINDS,
    STYLES,
    Grade,
    NotATaskError,
    Task,
    TaskFamily,
    grade,
    parse_prompt,
    sample_tasks,
)
from zephyr_lightning.mini.teacher import TeacherSummary, write_teacher_data

__all__ = [
    "KINDS",
    "STYLES",
    "Grade",
    "ModelScores",
    "NotATaskError",
    "SeedResult",
    "Task",
    "TaskFamily",
    "TeacherSummary",
    "evaluate_models",
    "grade",
    "judge_score",
    "mini_judge",
    "parse_main_table",
    "parse_prompt",
    "read_scores",
    "sample_tasks",
    "win_rate",
    "write_report",
    "write_teacher_data",
]
