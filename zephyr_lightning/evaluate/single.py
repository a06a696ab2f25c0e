"""Single-answer grading, MT-Bench's protocol (Zheng et al. 2023): the judge grades every turn of every
answer from 1 to 10, turn 2 with turn 1 in view, with the reference answers shown for the categories
whose questions have a checkable answer (math, reasoning, coding). A model's score is the mean over all
its graded turns; the report also gives the mean per turn and per category."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from zephyr_lightning.aif.judges import JudgeItem
from zephyr_lightning.data.questions import Question
from zephyr_lightning.evaluate.answers import ModelAnswers
from zephyr_lightning.evaluate.judging import JudgeSession

# The category of questions that have none.
UNCATEGORIZED = "none"
# The MT-Bench categories whose judge prompt carries the reference answer.
REFERENCE_CATEGORIES = ("math", "reasoning", "coding")


@dataclass(frozen=True)
class TurnScore:
    """One graded turn of one model's answer (``score`` None when the judgement failed)."""

    model: str
    question_id: str
    category: str | None
    turn: int
    score: float | None
    explanation: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def references_for(question: Question, turn: int, categories: Iterable[str] | None) -> tuple[str, ...]:
    """The reference answers the judge sees for ``turn``: the question's, up to that turn, when its category
    is one of ``categories`` (``None``: any question that has them); otherwise none."""
    if not question.reference:
        return ()
    if categories is not None and (question.category or "").lower() not in {c.lower() for c in categories}:
        return ()
    return tuple(question.reference[:turn])


def history_of(question: Question, answers: Sequence[str], turn: int) -> tuple[tuple[str, str], ...]:
    """The (user, assistant) turns before ``turn`` (1-based) of a model's conversation."""
    return tuple(zip(question.turns[: turn - 1], answers[: turn - 1]))


def grade_single(
    session: JudgeSession,
    questions: Sequence[Question],
    answers: Mapping[str, ModelAnswers],
    *,
    reference_categories: Iterable[str] | None = REFERENCE_CATEGORIES,
    show_progress: bool = True,
) -> list[TurnScore]:
    """Grade every answered turn of every model with one judge."""
    items, contexts, where = [], [], []
    for name, model in answers.items():
        for question in questions:
            given = model.answers.get(question.question_id, ())
            for turn in range(1, len(given) + 1):
                items.append(JudgeItem(
                    question.turns[turn - 1], given[turn - 1], question.question_id, name, kind="score",
                    history=history_of(question, given, turn),
                    references=references_for(question, turn, reference_categories),
                ))
                contexts.append({"part": "single", "model": name, "question_id": question.question_id, "turn": turn})
                where.append((name, question, turn))
    judgements = session.judge_items(items, contexts, part="single", show_progress=show_progress)
    return [
        TurnScore(name, question.question_id, question.category, turn, j.score if j.ok else None, j.rationale, j.error)
        for (name, question, turn), j in zip(where, judgements)
    ]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def summarize_scores(scores: Sequence[TurnScore]) -> dict[str, Any]:
    """One model's grades under one judge: ``score`` (mean over graded turns), ``turns`` and
    ``categories`` (means), ``graded`` and ``failed`` counts."""
    graded = [s for s in scores if s.score is not None]
    by_turn: dict[int, list[float]] = defaultdict(list)
    by_category: dict[str, list[float]] = defaultdict(list)
    for s in graded:
        by_turn[s.turn].append(s.score)
        by_category[s.category or UNCATEGORIZED].append(s.score)
    return {
        "score": _mean([s.score for s in graded]),
        "turns": {turn: _mean(v) for turn, v in sorted(by_turn.items())},
        "categories": {c: _mean(v) for c, v in sorted(by_category.items())},
        "graded": len(graded),
        "failed": len(scores) - len(graded),
    }
