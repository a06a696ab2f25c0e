"""Evaluation questions in the formats people use, read into one shape: MT-Bench, AlpacaEval, plain lists.

The evaluation stage asks them; decontamination keeps them out of the training data. Both read them
here, so a question file that one accepts the other accepts too.

Formats (hub name, local file or folder, or ``builtin:<name>``; read with `load_split`):

- MT-Bench as FastChat ships it (``question.jsonl``): ``question_id``, ``category``, ``turns`` (a list of
  user turns), optionally ``reference`` (a reference answer per turn, for math, reasoning and coding);
- MT-Bench on the hub (``HuggingFaceH4/mt_bench_prompts``, split ``train``): ``prompt`` (the list of
  turns), ``prompt_id``, ``category``, ``reference``;
- AlpacaEval (``tatsu-lab/alpaca_eval``): ``instruction`` (one turn), ``dataset`` (read as the category);
- any list: a ``prompt``, ``question`` or ``instruction`` text column, optional ``id`` / ``category``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from zephyr_lightning.data.sources import BadRowError, load_split, prompt_id_of

TURN_COLUMNS = ("turns", "prompt", "question", "instruction")
ID_COLUMNS = ("question_id", "prompt_id", "id")
CATEGORY_COLUMNS = ("category", "dataset")
REFERENCE_COLUMNS = ("reference", "references", "reference_answer")


@dataclass(frozen=True)
class Question:
    """One evaluation question: its user turns in order (turn 2 is asked after the model's answer to
    turn 1), its category, and reference answers per turn where the benchmark gives them."""

    question_id: str
    turns: tuple[str, ...]
    category: str | None = None
    reference: tuple[str, ...] | None = None

    @property
    def first_turn(self) -> str:
        return self.turns[0]


def _first(row: dict[str, Any], columns: Sequence[str]) -> tuple[str | None, Any]:
    for column in columns:
        if row.get(column) not in (None, "", []):
            return column, row[column]
    return None, None


def _texts(value: Any, where: str, what: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise BadRowError(f"{where}: {what} must be text or a non-empty list of texts, got {type(value).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise BadRowError(f"{where}: {what} item {i} is empty or not text ({item!r:.60})")
    return tuple(items)


def question_from_row(row: dict[str, Any], where: str) -> Question:
    """A `Question` from one row of any of the formats above; `BadRowError` naming the row otherwise."""
    column, turns = _first(row, TURN_COLUMNS)
    if column is None:
        raise BadRowError(f"{where}: no question text; expected one of the columns {list(TURN_COLUMNS)}")
    turns = _texts(turns, where, repr(column))
    _, question_id = _first(row, ID_COLUMNS)
    _, category = _first(row, CATEGORY_COLUMNS)
    _, reference = _first(row, REFERENCE_COLUMNS)
    return Question(
        question_id=str(question_id) if question_id is not None else prompt_id_of(turns[0]),
        turns=turns,
        category=str(category) if category is not None else None,
        reference=_texts(reference, where, "reference") if reference is not None else None,
    )


def load_questions(source: str, split: str = "train", *, name: str | None = None, limit: int | None = None) -> list[Question]:
    """Every question of ``source`` (see the module docstring), in file order; ids must be unique."""
    rows = load_split(source, split, name=name)
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        where = f"{source} [{split}] row {index}"
        question = question_from_row(dict(row), where)
        if question.question_id in seen:
            raise BadRowError(f"{where}: question id {question.question_id!r} repeats row {seen[question.question_id]}")
        seen[question.question_id] = index
        questions.append(question)
        if limit is not None and len(questions) >= limit:
            break
    if not questions:
        raise ValueError(f"{source} [{split}]: no questions")
    return questions
