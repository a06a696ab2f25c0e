"""Mini-Zephyr: the whole recipe (dSFT, AIF, dDPO) at toy scale, on tasks a program can check, built
from the library's own commands.

    python -m recipes.mini_zephyr hydra.run.dir=outputs/mini       # 3 seeds, report in the run folder

- `tasks`: the task family (`TaskFamily`, `Task`), `parse_prompt` and `grade` (partial credit);
- `teacher`: writes the dSFT dialogues and the prompt sets (`write_teacher_data`);
- `judge`: `judge_score(prompt, response)`, the judge for `zephyr_lightning.aif.CallableJudge`;
- `report`: report.md, results.json and the plots over all seeds;
- `run`: the recipe's command; each stage is the library's train, AIF or evaluation command, its config
  composed from the library's config groups (``conf/mini_zephyr.yaml`` says with which overrides).
"""

from recipes.mini_zephyr.judge import judge_score, mini_judge
from recipes.mini_zephyr.report import ModelScores, SeedResult, parse_main_table, write_report
from recipes.mini_zephyr.tasks import (
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
from recipes.mini_zephyr.teacher import TeacherSummary, write_teacher_data

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
    "grade",
    "judge_score",
    "mini_judge",
    "parse_main_table",
    "parse_prompt",
    "sample_tasks",
    "write_report",
    "write_teacher_data",
]
