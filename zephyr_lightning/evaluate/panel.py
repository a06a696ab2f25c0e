"""Agreement within a judge panel: several judges judge the same answers, and each pair of judges is
compared on what both judged. This is how a user checks the critique that GPT-4 favours models distilled
from it: a second judge of another family should agree with it about as well as it agrees with itself.

- pairwise verdicts (win / tie / loss of each compared turn): Cohen's kappa;
- single-answer scores (each graded turn): Spearman's rank correlation;
- safety classifications (refused or not): Cohen's kappa.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

from zephyr_lightning.evaluate.pairwise import PairOutcome
from zephyr_lightning.evaluate.safety import RefusalCall
from zephyr_lightning.evaluate.single import TurnScore
from zephyr_lightning.evaluate.stats import cohen_kappa, spearman


def _shared(a: Mapping[Any, Any], b: Mapping[Any, Any]) -> tuple[list[Any], list[Any]]:
    keys = [k for k in a if k in b]
    return [a[k] for k in keys], [b[k] for k in keys]


def agreement(
    scores: Mapping[str, Sequence[TurnScore]],
    pairs: Mapping[str, Sequence[PairOutcome]],
    refusals: Mapping[str, Sequence[RefusalCall]],
) -> list[dict[str, Any]]:
    """One row per pair of judges (in panel order): each statistic and the number of items it is over."""
    judges = list(dict.fromkeys([*scores, *pairs, *refusals]))
    score_of = {j: {(s.model, s.question_id, s.turn): s.score for s in scores.get(j, ()) if s.score is not None} for j in judges}
    outcome_of = {j: {(o.model, o.question_id, o.turn): o.outcome for o in pairs.get(j, ()) if o.complete} for j in judges}
    refused_of = {j: {(c.model, c.question_id): c.refused for c in refusals.get(j, ()) if c.refused is not None} for j in judges}
    rows = []
    for a, b in combinations(judges, 2):
        sa, sb = _shared(score_of[a], score_of[b])
        pa, pb = _shared(outcome_of[a], outcome_of[b])
        ra, rb = _shared(refused_of[a], refused_of[b])
        rows.append({
            "judges": [a, b],
            "score_spearman": spearman(sa, sb), "scores": len(sa),
            "pairwise_kappa": cohen_kappa(pa, pb), "pairwise_agreement": _share_equal(pa, pb), "verdicts": len(pa),
            "refusal_kappa": cohen_kappa(ra, rb), "refusals": len(ra),
        })
    return rows


def _share_equal(a: Sequence[Any], b: Sequence[Any]) -> float:
    return sum(x == y for x, y in zip(a, b)) / len(a) if a else float("nan")
