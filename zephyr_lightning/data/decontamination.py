"""Keep evaluation prompts out of the training data.

A training row is contaminated when one of its texts (the prompt, or any user turn) matches a turn of an
evaluation question (MT-Bench, AlpacaEval or any list `zephyr_lightning.data.questions` reads):

- **exact**: the two texts are equal once normalised (`zephyr_lightning.data.normalize`: case,
  punctuation and spacing ignored);
- **n-gram**: at least ``threshold`` of the evaluation turn's distinct word n-grams (``ngram=13``, as the
  GPT-3 contamination study used) occur in one training row. An evaluation turn shorter
  than ``ngram`` words has no n-gram and is matched exactly only.

`EvalIndex` holds the evaluation side: every evaluation n-gram (a tuple of words) in a dict, so a training
row costs one lookup per n-gram of its texts, whatever the number of evaluation prompts. Splitting the text
into words is most of the time (200k rows against 1k evaluation prompts: `benchmarks/decontamination.py`;
a numpy version hashing all windows at once was no faster, so the plain one stays).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from zephyr_lightning.arguments import PositiveInt
from zephyr_lightning.data.normalize import words


class QuestionSource(BaseModel):
    """A file or hub data set of evaluation questions, read with `load_questions`; a plain string is its path."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Annotated[str, Field(min_length=1)]
    split: str = "train"
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class Decontamination(BaseModel):
    """What ``data.decontamination`` (and ``prompts.decontamination`` of the AIF command) holds.

    Args:
        questions: the evaluation question sources (paths, hub names or ``{path, split, name}``).
        ngram: words per n-gram.
        threshold: the share of an evaluation turn's distinct n-grams that one training row must contain
            to count as contaminated (a tiny value such as 1e-6: any shared n-gram, as GPT-3 did).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    questions: Annotated[list[QuestionSource], Field(min_length=1)]
    ngram: PositiveInt = 13
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.5


@dataclass(frozen=True)
class EvalText:
    """One turn of one evaluation question."""

    source: str
    question_id: str
    turn: int  # 1-based
    text: str


@dataclass(frozen=True)
class Match:
    """A training row that matches evaluation text ``eval_index`` (an index into `EvalIndex.texts`)."""

    eval_index: int
    kind: str  # "exact" or "<n>-gram"
    overlap: float  # share of the evaluation turn's n-grams found (1.0 for an exact match)


def ngrams(tokens: Sequence[str], n: int) -> Iterator[tuple[str, ...]]:
    """Every run of ``n`` consecutive words, as tuples (made by ``zip``, without a Python loop per word)."""
    return zip(*[tokens[k:] for k in range(n)])


class EvalIndex:
    """The evaluation turns, ready to match training rows against (see the module docstring)."""

    def __init__(self, texts: Sequence[EvalText], *, ngram: int = 13, threshold: float = 0.5) -> None:
        self.texts = list(texts)
        self.ngram = ngram
        self.threshold = threshold
        self.exact: dict[str, list[int]] = {}
        self.grams: dict[tuple[str, ...], list[int]] = {}  # an evaluation n-gram -> the texts that have it
        self.ngram_counts: list[int] = []  # per text: its distinct n-grams
        self.needed: list[int] = []  # per text: how many of them make a match (0: too short for any)
        for index, item in enumerate(self.texts):
            tokens = words(item.text)
            if tokens:
                self.exact.setdefault(" ".join(tokens), []).append(index)
            distinct = set(ngrams(tokens, ngram))
            self.ngram_counts.append(len(distinct))
            self.needed.append(max(1, math.ceil(threshold * len(distinct) - 1e-9)) if distinct else 0)
            for gram in distinct:
                self.grams.setdefault(gram, []).append(index)

    @classmethod
    def from_config(cls, config: Decontamination) -> EvalIndex:
        """Read every question source of ``config`` (each turn of each question is one evaluation text)."""
        from zephyr_lightning.data.questions import load_questions

        texts = [
            EvalText(source.path, question.question_id, turn, text)
            for source in config.questions
            for question in load_questions(source.path, source.split, name=source.name)
            for turn, text in enumerate(question.turns, start=1)
        ]
        return cls(texts, ngram=config.ngram, threshold=config.threshold)

    def __len__(self) -> int:
        return len(self.texts)

    def find(self, rows: Sequence[Sequence[str]]) -> list[list[Match]]:
        """For each training row (its texts: prompt, user turns), the evaluation texts it matches."""
        out = []
        grams, n = self.grams, self.ngram
        for texts in rows:
            found: dict[int, Match] = {}
            shared: dict[int, set[tuple[str, ...]]] = {}
            for text in texts:
                tokens = words(text)
                for index in self.exact.get(" ".join(tokens), ()):
                    found[index] = Match(index, "exact", 1.0)
                if len(tokens) < n or not grams:
                    continue
                for gram in [g for g in ngrams(tokens, n) if g in grams]:  # almost always empty
                    for index in grams[gram]:
                        shared.setdefault(index, set()).add(gram)
            for index, hits in shared.items():
                if index not in found and len(hits) >= self.needed[index]:
                    found[index] = Match(index, f"{n}-gram", len(hits) / self.ngram_counts[index])
            out.append(sorted(found.values(), key=lambda m: m.eval_index))
        return out
