"""Pairwise comparison against a baseline, the AlpacaEval protocol with MT-Bench's position swap.

Every answered turn of a model is compared with the baseline's answer to the same turn, twice: once with
the model's answer shown first (as A) and once with the baseline's first. LLM judges prefer the first
position (Zheng et al. 2023), so a win counts only when both orders agree; any disagreement is a tie.

- win rate: (wins + ties / 2) / compared turns, with a 95% bootstrap interval that resamples questions
  (a question's turns move together);
- position-bias rate: share of compared turns whose verdict flips with the order (the model-level
  winner differs between the two orders); ``first_position_rate`` is the share of decisive single-order
  verdicts that chose position A (0.5: no lean);
- length-controlled win rate: AlpacaEval 2's regression of the outcome on the length difference,
  reported at equal length (`zephyr_lightning.evaluate.stats.length_controlled_win_rate`); lengths in
  characters, as AlpacaEval counts them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from zephyr_lightning.aif.judges import JudgeItem
from zephyr_lightning.data.questions import Question
from zephyr_lightning.evaluate.answers import ModelAnswers
from zephyr_lightning.evaluate.judging import JudgeSession
from zephyr_lightning.evaluate.single import REFERENCE_CATEGORIES, history_of, references_for
from zephyr_lightning.evaluate.stats import bootstrap_interval, length_controlled_win_rate, win_rate

MODEL, BASELINE, TIE = "model", "baseline", "tie"


@dataclass(frozen=True)
class PairOutcome:
    """One turn of one model compared with the baseline in both orders. ``first``: the verdict with the
    model shown as A; ``second``: with the baseline shown as A (``A`` / ``B`` / ``tie``; None: failed)."""

    model: str
    baseline: str
    question_id: str
    category: str | None
    turn: int
    first: str | None
    second: str | None
    model_length: int
    baseline_length: int

    @property
    def complete(self) -> bool:
        return self.first is not None and self.second is not None

    @property
    def winners(self) -> tuple[str, str]:
        """The winner of each order, named by side (`MODEL`, `BASELINE` or `TIE`)."""
        first = {"A": MODEL, "B": BASELINE}.get(self.first or "", TIE)
        second = {"A": BASELINE, "B": MODEL}.get(self.second or "", TIE)
        return first, second

    @property
    def flipped(self) -> bool:
        first, second = self.winners
        return self.complete and first != second

    @property
    def outcome(self) -> str | None:
        """``win`` / ``loss`` when both orders agree on the model / the baseline, else ``tie``; None when
        an order is missing."""
        if not self.complete:
            return None
        first, second = self.winners
        if first != second:
            return "tie"
        return {MODEL: "win", BASELINE: "loss", TIE: "tie"}[first]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": self.outcome, "flipped": self.flipped}


def compare_pairwise(
    session: JudgeSession,
    questions: Sequence[Question],
    answers: Mapping[str, ModelAnswers],
    baseline: str,
    *,
    reference_categories: Iterable[str] | None = REFERENCE_CATEGORIES,
    show_progress: bool = True,
) -> list[PairOutcome]:
    """Compare every model in ``answers`` but ``baseline`` with ``baseline``, turn by turn, in both orders."""
    base = answers[baseline]
    items, contexts, where = [], [], []
    for name, model in answers.items():
        if name == baseline:
            continue
        for question in questions:
            mine, theirs = model.answers.get(question.question_id, ()), base.answers.get(question.question_id, ())
            for turn in range(1, min(len(mine), len(theirs)) + 1):
                shared = dict(prompt=question.turns[turn - 1], prompt_id=question.question_id, kind="pairwise",
                              references=references_for(question, turn, reference_categories))
                ours, other = history_of(question, mine, turn), history_of(question, theirs, turn)
                items.append(JudgeItem(response=mine[turn - 1], response_b=theirs[turn - 1], history=ours,
                                       history_b=other, model=f"{name} vs {baseline}", **shared))
                items.append(JudgeItem(response=theirs[turn - 1], response_b=mine[turn - 1], history=other,
                                       history_b=ours, model=f"{baseline} vs {name}", **shared))
                context = {"part": "pairwise", "model": name, "baseline": baseline, "question_id": question.question_id,
                           "turn": turn}
                contexts += [{**context, "order": "model_first"}, {**context, "order": "baseline_first"}]
                where.append((name, question, turn, len(mine[turn - 1]), len(theirs[turn - 1])))
    judgements = session.judge_items(items, contexts, part="pairwise", show_progress=show_progress)
    outcomes = []
    for index, (name, question, turn, mine, theirs) in enumerate(where):
        first, second = judgements[2 * index], judgements[2 * index + 1]
        outcomes.append(PairOutcome(name, baseline, question.question_id, question.category, turn,
                                    first.verdict if first.ok else None, second.verdict if second.ok else None,
                                    mine, theirs))
    return outcomes


def summarize_pairwise(
    outcomes: Sequence[PairOutcome], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """One model against the baseline under one judge (see the module docstring for each number)."""
    complete = [o for o in outcomes if o.complete]
    results = [o.outcome for o in complete]
    values = [{"win": 1.0, "tie": 0.5, "loss": 0.0}[r] for r in results]
    low, high = bootstrap_interval(values, [o.question_id for o in complete], resamples=resamples, level=level, seed=seed)
    control = length_controlled_win_rate(values, [o.model_length for o in complete], [o.baseline_length for o in complete])
    decisive = [v for o in complete for v in (o.first, o.second) if v in ("A", "B")]
    by_turn: dict[int, list[str]] = defaultdict(list)
    for o in complete:
        by_turn[o.turn].append(o.outcome)
    return {
        "win_rate": win_rate(results),
        "ci_low": low,
        "ci_high": high,
        "lc_win_rate": control.win_rate,
        "length_coef": control.length_coef,
        "wins": results.count("win"),
        "ties": results.count("tie"),
        "losses": results.count("loss"),
        "compared": len(complete),
        "incomplete": len(outcomes) - len(complete),
        "position_bias_rate": sum(o.flipped for o in complete) / len(complete) if complete else math.nan,
        "first_position_rate": decisive.count("A") / len(decisive) if decisive else math.nan,
        "turns": {turn: win_rate(v) for turn, v in sorted(by_turn.items())},
        "mean_length": sum(o.model_length for o in complete) / len(complete) if complete else math.nan,
        "baseline_mean_length": sum(o.baseline_length for o in complete) / len(complete) if complete else math.nan,
    }
