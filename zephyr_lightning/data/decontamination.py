"""Keep evaluation prompts out of the training data.

A training row is contaminated when one of its texts (the prompt, or any user turn) matches a turn of an
evaluation question (MT-Bench, AlpacaEval or any list `zephyr_lightning.data.questions` reads):

- **exact**: the two texts are equal once normalised (`zephyr_lightning.data.normalize`: case,
  punctuation and spacing ignored);
- **n-gram**: at least ``threshold`` of the evaluation turn's distinct word n-grams (``ngram=13``, as the
  GPT-3 and Llama 2 contamination studies used) occur in one training row. An evaluation turn shorter
  than ``ngram`` words has no n-gram and is matched exactly only.

`EvalIndex` holds the evaluation side; `EvalIndex.find` checks a batch of training rows with numpy: the
words of a batch become ids in the evaluation vocabulary (a word the evaluation set never uses can be
part of no shared n-gram, so it becomes a separator), every window of ``ngram`` ids is hashed at once
(a polynomial hash over 64-bit integers), and only the windows whose hash is an evaluation n-gram's are
looked at in Python. 200k rows against 1k evaluation prompts: `benchmarks/decontamination.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from zephyr_lightning.arguments import PositiveInt
from zephyr_lightning.data.normalize import words

# Odd 64-bit multiplier of the window hash (any odd constant with mixed bits works; arithmetic wraps mod 2**64).
_BASE = np.uint64(0x9E3779B97F4A7C15)


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


def window_hashes(ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The hash of every window of ``n`` consecutive ids, and whether the window holds no 0 (a word outside
    the evaluation vocabulary, or the separator between texts)."""
    count = len(ids) - n + 1
    if count <= 0:
        return np.empty(0, np.uint64), np.empty(0, bool)
    values = ids.astype(np.uint64)
    hashes = np.zeros(count, np.uint64)
    for k in range(n):  # Horner's rule over the window, all windows at once (uint64 wraps around)
        hashes = hashes * _BASE + values[k : k + count]
    zeros = np.concatenate(([0], np.cumsum(ids == 0)))
    valid = zeros[n : n + count] == zeros[:count]
    return hashes, valid


class EvalIndex:
    """The evaluation turns, ready to match training rows against (see the module docstring)."""

    def __init__(self, texts: Sequence[EvalText], *, ngram: int = 13, threshold: float = 0.5) -> None:
        self.texts = list(texts)
        self.ngram = ngram
        self.threshold = threshold
        self.exact: dict[str, list[int]] = {}
        self.vocab: dict[str, int] = {}
        self.needed: list[int] = []  # per text: how many distinct n-grams make a match (0: too short)
        self.ngram_counts: list[int] = []
        by_hash: dict[int, list[int]] = {}
        for index, item in enumerate(self.texts):
            tokens = words(item.text)
            if tokens:
                self.exact.setdefault(" ".join(tokens), []).append(index)
            ids = np.array([self.vocab.setdefault(w, len(self.vocab) + 1) for w in tokens], dtype=np.int64)
            hashes, _ = window_hashes(ids, ngram)
            distinct = set(hashes.tolist())
            self.ngram_counts.append(len(distinct))
            self.needed.append(max(1, math.ceil(threshold * len(distinct) - 1e-9)) if distinct else 0)
            for value in distinct:
                by_hash.setdefault(value, []).append(index)
        self._by_hash = by_hash
        self._sorted_hashes = np.array(sorted(by_hash), dtype=np.uint64)

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
        found: list[dict[int, Match]] = [{} for _ in rows]
        owners: list[int] = []  # the row of each text that is long enough for n-grams
        starts: list[int] = []
        ids: list[int] = []
        get = self.vocab.get
        for row, texts in enumerate(rows):
            for text in texts:
                tokens = words(text)
                for index in self.exact.get(" ".join(tokens), ()):
                    found[row][index] = Match(index, "exact", 1.0)
                if len(tokens) >= self.ngram and self._by_hash:
                    owners.append(row)
                    starts.append(len(ids))
                    ids.extend(map(get, tokens, repeat(0)))
                    ids.append(0)  # texts never share a window
        if ids:
            self._ngram_matches(np.array(ids, dtype=np.int64), np.array(starts), owners, found)
        return [sorted(matches.values(), key=lambda m: m.eval_index) for matches in found]

    def _ngram_matches(self, ids: np.ndarray, starts: np.ndarray, owners: list[int], found: list[dict[int, Match]]) -> None:
        hashes, valid = window_hashes(ids, self.ngram)
        positions = np.flatnonzero(valid)
        candidates = hashes[positions]
        slots = np.searchsorted(self._sorted_hashes, candidates)
        slots[slots == len(self._sorted_hashes)] = 0
        hits = positions[self._sorted_hashes[slots] == candidates]
        if len(hits) == 0:
            return
        text_of_hit = np.searchsorted(starts, hits, side="right") - 1
        shared: dict[tuple[int, int], set[int]] = {}
        for position, text in zip(hits.tolist(), text_of_hit.tolist()):
            value = int(hashes[position])
            row = owners[text]
            for index in self._by_hash[value]:
                shared.setdefault((row, index), set()).add(value)
        kind = f"{self.ngram}-gram"
        for (row, index), values in shared.items():
            if index in found[row] or len(values) < self.needed[index]:
                continue
            found[row][index] = Match(index, kind, len(values) / self.ngram_counts[index])
