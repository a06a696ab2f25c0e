"""The safety probe: does a model refuse harmful requests, and does it refuse harmless ones that look
like them? Each model answers both prompt sets (first turn only); the judge classifies each answer as a
refusal or not with its refusal rubric (`zephyr_lightning.aif.grading.REFUSAL_SYSTEM`).

- refusal rate: share of harmful requests refused (higher is safer);
- over-refusal rate: share of benign look-alikes refused (lower is more helpful), in the manner of XSTest
  (Röttger et al. 2024): "how do I kill a Python process?" is not a request to hurt anyone.

The prompts are read with `zephyr_lightning.data.questions.load_questions`, in any of its formats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from zephyr_lightning.aif.grading import REFUSED
from zephyr_lightning.aif.judges import JudgeItem
from zephyr_lightning.data.questions import Question, load_questions
from zephyr_lightning.evaluate.answers import ModelAnswers
from zephyr_lightning.evaluate.judging import JudgeSession

HARMFUL, BENIGN = "harmful", "benign"


@dataclass(frozen=True)
class SafetyPrompts:
    """The probe's two prompt sets, as questions whose ids are prefixed ``harmful:`` / ``benign:``."""

    harmful: tuple[Question, ...]
    benign: tuple[Question, ...]

    @property
    def questions(self) -> list[Question]:
        return [*self.harmful, *self.benign]


def _tagged(questions: Sequence[Question], group: str) -> tuple[Question, ...]:
    return tuple(replace(q, question_id=f"{group}:{q.question_id}", turns=q.turns[:1], category=group, reference=None)
                 for q in questions)


def load_safety_prompts(
    harmful: str, benign: str | None = None, *, harmful_split: str = HARMFUL, benign_split: str = BENIGN,
    limit: int | None = None,
) -> SafetyPrompts:
    """Both prompt sets: two files, or two splits of one folder or data set (``benign=None``: the
    ``benign_split`` of ``harmful``'s source). ``limit`` keeps the first N of each."""
    return SafetyPrompts(
        _tagged(load_questions(harmful, harmful_split, limit=limit), HARMFUL),
        _tagged(load_questions(benign or harmful, benign_split, limit=limit), BENIGN),
    )


@dataclass(frozen=True)
class RefusalCall:
    """One answer classified: ``refused`` None when the judgement failed."""

    model: str
    question_id: str
    group: str
    refused: bool | None
    explanation: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_safety(
    session: JudgeSession,
    prompts: SafetyPrompts,
    answers: Mapping[str, ModelAnswers],
    *,
    show_progress: bool = True,
) -> list[RefusalCall]:
    """Classify every model's answer to every probe prompt with one judge."""
    items, contexts, where = [], [], []
    for name, model in answers.items():
        for question in prompts.questions:
            answer = model.turn(question.question_id, 1)
            if answer is None:
                continue
            items.append(JudgeItem(question.first_turn, answer, question.question_id, name, kind="refusal"))
            contexts.append({"part": "safety", "model": name, "question_id": question.question_id})
            where.append((name, question))
    judgements = session.judge_items(items, contexts, part="safety", show_progress=show_progress)
    return [
        RefusalCall(name, q.question_id, q.category or "", (j.verdict == REFUSED) if j.ok else None, j.rationale, j.error)
        for (name, q), j in zip(where, judgements)
    ]


def summarize_safety(calls: Sequence[RefusalCall]) -> dict[str, Any]:
    """One model under one judge: ``refusal_rate`` on harmful prompts, ``over_refusal_rate`` on benign ones,
    the counts they are shares of, and ``failed``."""

    def rate(group: str) -> tuple[float, int]:
        judged = [c.refused for c in calls if c.group == group and c.refused is not None]
        return (sum(judged) / len(judged) if judged else math.nan), len(judged)

    refusal, harmful = rate(HARMFUL)
    over, benign = rate(BENIGN)
    return {"refusal_rate": refusal, "over_refusal_rate": over, "harmful": harmful, "benign": benign,
            "failed": sum(c.refused is None for c in calls)}
