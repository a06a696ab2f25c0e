"""Judged evaluation: MT-Bench-style single-answer grading, AlpacaEval-style pairwise comparison with
position swap and length control, a judge panel, and a safety probe.

    python -m zephyr_lightning.evaluate                         # the offline default: every part, tiny models
    python -m zephyr_lightning.evaluate models=local judges=openai hydra.run.dir=DIR

The command composes `conf/eval/` with Hydra (`zephyr_lightning.cli.evaluate`); everything here takes plain
Python arguments and works without Hydra. Models answer through the AIF generators
(`zephyr_lightning.aif.generators`) or from a file (`AnswerFile`); judges are any
`zephyr_lightning.aif.judges.Judge`, asked through their on-disk cache.

- `answers`: multi-turn answering (turn 2 after the model's own turn 1), resumable; answers from files;
- `judging`: one judge's cache for a run (every judgement cached as it arrives, failures counted);
- `single`, `pairwise`, `safety`: the three parts; `panel`: agreement between judges;
- `stats`: win rate, bootstrap interval, length control, Cohen's kappa, Spearman;
- `run`: `run_evaluation`, all of it; `report`: summary.json, results.json, report.md, plots, logger tables;
- `offline`: the programmatic judges of the offline default.
"""

from zephyr_lightning.evaluate.answers import AnswerFile, ModelAnswers, answer_questions
from zephyr_lightning.evaluate.judging import JudgeSession, JudgingCounts
from zephyr_lightning.evaluate.pairwise import PairOutcome, compare_pairwise, summarize_pairwise
from zephyr_lightning.evaluate.panel import agreement
from zephyr_lightning.evaluate.report import draw_plots, log_results, write_report
from zephyr_lightning.evaluate.run import EvalResults, Evaluation, run_evaluation
from zephyr_lightning.evaluate.safety import (
    RefusalCall,
    SafetyPrompts,
    load_safety_prompts,
    probe_safety,
    summarize_safety,
)
from zephyr_lightning.evaluate.single import REFERENCE_CATEGORIES, TurnScore, grade_single, summarize_scores
from zephyr_lightning.evaluate.stats import (
    LengthControl,
    bootstrap_interval,
    cohen_kappa,
    length_controlled_win_rate,
    spearman,
    win_rate,
)

__all__ = [
    "REFERENCE_CATEGORIES",
    "AnswerFile",
    "EvalResults",
    "Evaluation",
    "JudgeSession",
    "JudgingCounts",
    "LengthControl",
    "ModelAnswers",
    "PairOutcome",
    "RefusalCall",
    "SafetyPrompts",
    "TurnScore",
    "agreement",
    "answer_questions",
    "bootstrap_interval",
    "cohen_kappa",
    "compare_pairwise",
    "draw_plots",
    "grade_single",
    "length_controlled_win_rate",
    "load_safety_prompts",
    "log_results",
    "probe_safety",
    "run_evaluation",
    "spearman",
    "summarize_pairwise",
    "summarize_safety",
    "summarize_scores",
    "win_rate",
    "write_report",
]
