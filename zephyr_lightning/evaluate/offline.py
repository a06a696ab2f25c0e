"""Programmatic judges for the offline default: functions `CallableJudge` takes, so that the whole stage
runs without a network or a GPU and every part of the report has numbers.

They are stand-ins, not judges of quality: `reference_score` checks an answer against the reference where
there is one (numbers and words it shares with it) and falls back to `heuristic_score` (substance, variety,
topic); `length_score` is a deliberately biased judge that rewards length alone, there to show what a
judge panel and the length-controlled win rate catch. Refusals are classified by
`zephyr_lightning.aif.judges.heuristic_refusal`.
"""

from __future__ import annotations

import re

from zephyr_lightning.aif.judges import heuristic_score

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def _overlap_f1(response: str, reference: str) -> float:
    """Token F1 of the response against the reference (as SQuAD scores answers)."""
    got, want = [w.lower() for w in _WORD.findall(response)], [w.lower() for w in _WORD.findall(reference)]
    if not got or not want:
        return 0.0
    common = sum(min(got.count(w), want.count(w)) for w in set(want))
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def reference_score(prompt: str, response: str, reference: str | None = None) -> float:
    """A 1-10 grade. With a reference: ``1 + 9 * (0.7 * correctness + 0.3 * quality)``, where correctness is
    the share of the reference's numbers the response contains (its token F1 against the reference when
    the reference has no numbers) and quality is `heuristic_score` scaled to [0, 1]. Without one:
    `heuristic_score`. Rounded to 2 decimals."""
    quality = heuristic_score(prompt, response)
    if not reference:
        return quality
    wanted = set(_NUMBER.findall(reference))
    if wanted:
        correctness = len(wanted & set(_NUMBER.findall(response))) / len(wanted)
    else:
        correctness = _overlap_f1(response, reference)
    return round(1.0 + 9.0 * (0.7 * correctness + 0.3 * (quality - 1.0) / 9.0), 2)


def length_score(prompt: str, response: str) -> float:
    """A 1-10 grade that rewards length alone: ``1 + 9 * min(words / 60, 1)``, rounded to 2 decimals."""
    return round(1.0 + 9.0 * min(len(_WORD.findall(response)) / 60.0, 1.0), 2)
