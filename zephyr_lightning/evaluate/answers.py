"""The models' answers to the evaluation questions: generated turn by turn, or read from a file.

A generator (`zephyr_lightning.aif.generators`: a local model or an OpenAI-compatible server) answers
each question's turns in order, and turn 2 is asked after the model's *own* answer to turn 1, as
MT-Bench does. Every answer is appended (and fsynced) to ``<name>.turns.jsonl`` as it comes, keyed by
the conversation it continues, so a run killed at any point regenerates nothing on restart; the
settings that shaped the answers are kept beside it (``<name>.turns.settings.json``: sampling, chat
format, and for a local folder its weight files' sizes and times) and a restart with other settings, or
another model at the same path, is refused. When a model is done, ``<name>.jsonl`` holds one row per question.

An `AnswerFile` stands in for a model whose answers already exist: this stage's own ``<name>.jsonl``,
FastChat's MT-Bench ``model_answer`` files, AlpacaEval's model outputs, or any rows with a question id
or text and an answer column. That is how a baseline is usually given.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from zephyr_lightning.aif.generate import check_settings
from zephyr_lightning.aif.generators import Generator
from zephyr_lightning.aif.io import JsonlWriter, iter_jsonl, repair_truncated_tail, write_jsonl_atomic
from zephyr_lightning.data.questions import Question
from zephyr_lightning.data.sources import BadRowError, load_split

log = logging.getLogger(__name__)

ID_COLUMNS = ("question_id", "prompt_id", "id")
TEXT_COLUMNS = ("instruction", "prompt", "question", "turns")
ANSWER_COLUMNS = ("answers", "output", "answer", "response", "completion")


@dataclass
class ModelAnswers:
    """One model's answers: question id -> its answers in turn order (fewer than the question's turns
    when a turn could not be generated; none when the first failed)."""

    model: str
    answers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    failed: int = 0       # turns that could not be generated this run (retried on the next)
    missing: int = 0      # questions an answer file has no answer for
    source: str = ""

    def turn(self, question_id: str, turn: int) -> str | None:
        """The answer to ``turn`` (1-based), or None."""
        given = self.answers.get(question_id, ())
        return given[turn - 1] if len(given) >= turn else None


class AnswerFile:
    """Answers that already exist, in a file or a hub data set (read with `load_split`).

    Rows are matched to questions by ``question_id`` / ``prompt_id`` / ``id``, else by the text of the
    first turn (``instruction``, ``prompt``, ``question`` or ``turns[0]``). The answer is ``answers`` (a list
    per turn, this stage's format), FastChat's ``choices[0].turns``, or a text ``output`` (AlpacaEval),
    ``answer``, ``response`` or ``completion``.

    Args:
        path: the file, folder or hub data set.
        split: the split of a folder or hub data set.
        name: how reports name this model (default: the file's stem).
    """

    def __init__(self, path: str, *, split: str = "train", name: str | None = None) -> None:
        self.path = str(path)
        self.split = split
        self.name = name or Path(self.path).stem

    def __repr__(self) -> str:
        return f"AnswerFile({self.path!r})"

    def read(self, questions: Sequence[Question]) -> ModelAnswers:
        by_id = {q.question_id: q for q in questions}
        by_text = {q.first_turn.strip(): q for q in questions}
        found: dict[str, tuple[str, ...]] = {}
        for index, row in enumerate(load_split(self.path, self.split)):
            where = f"{self.path} row {index}"
            question = _match(dict(row), by_id, by_text)
            if question is None:
                continue
            found[question.question_id] = _answer_turns(dict(row), where)
        missing = [q.question_id for q in questions if q.question_id not in found]
        if len(missing) == len(questions):
            raise ValueError(
                f"{self.path}: no row matches any question (by {list(ID_COLUMNS)} or the first turn's text); "
                f"first question id: {questions[0].question_id!r}"
            )
        if missing:
            log.warning("%s: no answer for %d of %d questions (e.g. %s)", self.path, len(missing), len(questions), missing[:3])
        return ModelAnswers(self.name, found, missing=len(missing), source=self.path)


def _match(row: dict[str, Any], by_id: Mapping[str, Question], by_text: Mapping[str, Question]) -> Question | None:
    for column in ID_COLUMNS:
        if row.get(column) is not None and str(row[column]) in by_id:
            return by_id[str(row[column])]
    for column in TEXT_COLUMNS:
        value = row.get(column)
        text = value[0] if isinstance(value, list) and value else value
        if isinstance(text, str) and text.strip() in by_text:
            return by_text[text.strip()]
    return None


def _answer_turns(row: dict[str, Any], where: str) -> tuple[str, ...]:
    choices = row.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) and "turns" in choices[0]:
        value: Any = choices[0]["turns"]
    else:
        value = next((row[c] for c in ANSWER_COLUMNS if row.get(c) is not None), None)
    turns = [value] if isinstance(value, str) else value
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        raise BadRowError(f"{where}: no answer text; expected one of {list(ANSWER_COLUMNS)} or choices[0].turns")
    return tuple(turns)


def weights_stamp(source: Generator) -> dict[str, list[int]] | None:
    """Size and modification time of a local model folder's weight files, so that answers of an older model
    at the same path (a retrained export) are never taken for the current model's; None for other sources."""
    spec = getattr(source, "spec", None)
    folder = Path(str(getattr(spec, "name_or_path", "")))
    if spec is None or not folder.is_dir():
        return None
    files = sorted(p for pattern in ("*.safetensors", "*.bin", "*.pt") for p in folder.glob(pattern))
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}


def conversation_key(messages: Sequence[Mapping[str, str]]) -> str:
    return hashlib.sha256(json.dumps([dict(m) for m in messages], ensure_ascii=False).encode("utf-8")).hexdigest()


def _generate_turns(
    questions: Sequence[Question], generator: Generator, shard: Path, max_turns: int | None, show_progress: bool,
    close: bool,
) -> tuple[dict[str, list[str]], int]:
    repair_truncated_tail(shard)
    done = {row["key"]: row["answer"] for row in iter_jsonl(shard)} if shard.exists() else {}
    answers: dict[str, list[str]] = {q.question_id: [] for q in questions}
    conversations: dict[str, list[dict[str, str]]] = {q.question_id: [] for q in questions}
    alive = {q.question_id for q in questions}
    failed = 0
    turns = max(len(q.turns) for q in questions)
    if max_turns is not None:
        turns = min(turns, max_turns)
    started = False
    try:
        with JsonlWriter(shard) as writer:
            for turn in range(1, turns + 1):
                asked = [q for q in questions if q.question_id in alive and len(q.turns) >= turn]
                for q in asked:
                    conversations[q.question_id].append({"role": "user", "content": q.turns[turn - 1]})
                todo = [q for q in asked if conversation_key(conversations[q.question_id]) not in done]
                if todo and not started:
                    generator.setup()
                    started = True
                with tqdm(total=len(todo), desc=f"answer {generator.name} turn {turn}", unit="question",
                          disable=not show_progress or not todo) as bar:
                    for start in range(0, len(todo), generator.batch_size):
                        batch = todo[start : start + generator.batch_size]
                        results = generator.generate([conversations[q.question_id] for q in batch], 1)
                        if len(results) != len(batch):
                            raise RuntimeError(f"{generator.name}: returned {len(results)} results for {len(batch)} prompts")
                        for q, result in zip(batch, results):
                            if isinstance(result, Exception):
                                continue  # counted below; retried on the next run
                            key = conversation_key(conversations[q.question_id])
                            done[key] = result[0]
                            writer.write({"key": key, "question_id": q.question_id, "turn": turn, "answer": result[0]})
                        bar.update(len(batch))
                for q in asked:
                    key = conversation_key(conversations[q.question_id])
                    if key not in done:
                        failed += 1
                        alive.discard(q.question_id)  # a later turn needs this answer
                        log.warning("%s: question %s turn %d failed (retried on the next run)", generator.name, q.question_id, turn)
                        continue
                    answers[q.question_id].append(done[key])
                    conversations[q.question_id].append({"role": "assistant", "content": done[key]})
    finally:
        if close:
            generator.close()
    return answers, failed


def answer_questions(
    questions: Sequence[Question],
    source: Generator | AnswerFile,
    folder: str | Path,
    name: str,
    *,
    max_turns: int | None = None,
    show_progress: bool = True,
    close: bool = True,
) -> ModelAnswers:
    """``name``'s answers to ``questions``: generated by ``source`` turn by turn (resumable, see the module
    docstring) or read from an `AnswerFile`; written to ``folder/<name>.jsonl`` either way. ``close=False``
    keeps a local model loaded for a next call."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(source, AnswerFile):
        result = source.read(questions)
        result.model = name
        if max_turns is not None:
            result.answers = {k: v[:max_turns] for k, v in result.answers.items()}
    else:
        shard = folder / f"{name}.turns.jsonl"
        check_settings(shard, {**source.settings(), "max_turns": max_turns, "weights": weights_stamp(source)})
        answers, failed = _generate_turns(questions, source, shard, max_turns, show_progress, close)
        result = ModelAnswers(name, {k: tuple(v) for k, v in answers.items() if v}, failed=failed,
                              source=f"generated by {source.name}")
    rows = (
        {"question_id": q.question_id, "category": q.category, "turns": list(q.turns), "model": name,
         "answers": list(result.answers[q.question_id])}
        for q in questions
        if q.question_id in result.answers
    )
    write_jsonl_atomic(folder / f"{name}.jsonl", rows)
    log.info("%s: answers to %d of %d questions (%s)%s", name, len(result.answers), len(questions), result.source,
             f"; {result.failed} turns failed, rerun to fill them in" if result.failed else "")
    return result
