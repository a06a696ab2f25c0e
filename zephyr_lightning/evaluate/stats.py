"""The statistics of a judged evaluation, each by its textbook definition, on numpy.

- `win_rate`: wins plus half the ties, over all compared prompts (AlpacaEval's convention);
- `bootstrap_interval`: the percentile bootstrap interval of a mean, resampling whole clusters
  (a question's turns move together, since they share the question);
- `length_controlled_win_rate`: AlpacaEval 2's length control (Dubois et al. 2024, arXiv 2404.04475),
  for one model against one baseline;
- `cohen_kappa`: chance-corrected agreement of two raters on categories (Cohen 1960);
- `spearman`: rank correlation, ties given their average rank (Spearman 1904).

scipy and scikit-learn have these too; each is a few lines of numpy here, tested against hand-computed
cases, so the stage needs neither.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

OUTCOME_VALUE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def win_rate(outcomes: Sequence[str]) -> float:
    """``(wins + ties / 2) / n`` over ``win`` / ``tie`` / ``loss`` outcomes; NaN for none."""
    if not outcomes:
        return math.nan
    return sum(OUTCOME_VALUE[o] for o in outcomes) / len(outcomes)


def bootstrap_interval(
    values: Sequence[float],
    groups: Sequence[Hashable] | None = None,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``values`` at ``level``.

    Each resample draws as many clusters as there are, with replacement (``groups[i]`` names the cluster
    of ``values[i]``; without ``groups`` every value is its own cluster), and takes the mean of all the
    values of the drawn clusters. The interval is the ``(1 - level) / 2`` and ``(1 + level) / 2``
    quantiles of those means. Seeded: the same inputs give the same interval. NaNs for no values.
    """
    if not values:
        return math.nan, math.nan
    values = np.asarray(values, dtype=np.float64)
    if groups is None:
        sums, counts = values, np.ones_like(values)
    else:
        if len(groups) != len(values):
            raise ValueError(f"bootstrap_interval: {len(groups)} groups for {len(values)} values")
        index = {g: i for i, g in enumerate(dict.fromkeys(groups))}
        members = np.array([index[g] for g in groups])
        sums = np.bincount(members, weights=values, minlength=len(index))
        counts = np.bincount(members, minlength=len(index)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), size=(resamples, len(sums)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class LengthControl:
    """A length-controlled fit: the win rate at equal length, the raw one, and the fitted coefficients."""

    win_rate: float       # predicted preference at a zero length difference
    raw_win_rate: float   # mean preference, wins 1, ties 0.5, losses 0
    intercept: float      # log-odds of a win at equal length
    length_coef: float    # log-odds per unit of tanh(length difference / its standard deviation)
    n: int


def length_controlled_win_rate(
    preferences: Sequence[float],
    model_lengths: Sequence[float],
    baseline_lengths: Sequence[float],
    *,
    intercept_penalty: float = 1.0,
    length_penalty: float = 1e-4,
    max_iter: int = 100,
) -> LengthControl:
    """AlpacaEval 2's length-controlled win rate for one model against one baseline.

    A logistic regression of the preference (1 win, 0.5 tie, 0 loss: a soft label) on
    ``x = tanh(d / std(d))``, ``d`` = model length minus baseline length, as AlpacaEval 2 does it;
    the win rate at equal length is the fitted probability at ``x = 0``, ``sigmoid(intercept)``.
    (AlpacaEval 2 also fits an instruction-difficulty term, estimated across its whole leaderboard;
    with one model and one baseline there is nothing to estimate it from.)

    The fit maximises the soft-label log-likelihood minus ``intercept_penalty * a**2 / 2 +
    length_penalty * b**2 / 2`` by Newton's method with step halving. The intercept's penalty is a
    standard-normal prior on the log-odds at equal length (a model no better than the baseline until the
    data say otherwise; its pull fades as prompts accumulate). The length penalty is tiny: it only keeps
    the fit finite when the verdicts are fully determined by length (a judge that always prefers the
    longer answer), where the win rate at equal length then comes out near 0.5.
    """
    y = np.asarray(preferences, dtype=np.float64)
    d = np.asarray(model_lengths, dtype=np.float64) - np.asarray(baseline_lengths, dtype=np.float64)
    if y.size == 0:
        return LengthControl(math.nan, math.nan, math.nan, math.nan, 0)
    if d.shape != y.shape:
        raise ValueError(f"length_controlled_win_rate: {d.size} length differences for {y.size} preferences")
    spread = d.std(ddof=1) if d.size > 1 else 0.0
    x = np.tanh(d / spread) if spread > 0 else np.zeros_like(d)
    design = np.stack([np.ones_like(x), x], axis=1)
    penalty = np.diag([intercept_penalty, length_penalty])

    def objective(w: np.ndarray) -> float:
        z = design @ w
        # soft-label log-likelihood: y log s(z) + (1 - y) log s(-z), with log s(z) = -log(1 + e^-z)
        return float(-(y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)).sum() - 0.5 * w @ penalty @ w)

    w = np.zeros(2)
    current = objective(w)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        gradient = design.T @ (y - p) - penalty @ w
        hessian = (design.T * (p * (1 - p))) @ design + penalty
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-8:
            candidate = w + scale * step
            value = objective(candidate)
            if value >= current - 1e-12:
                break
            scale /= 2
        w, current = candidate, value
        if np.abs(scale * step).max() < 1e-10:
            break
    intercept, coef = float(w[0]), float(w[1])
    return LengthControl(1.0 / (1.0 + math.exp(-intercept)), float(y.mean()), intercept, coef, int(y.size))


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters' labels for the same items: ``(p_o - p_e) / (1 - p_e)``, where ``p_o``
    is the share of items they label alike and ``p_e`` the share expected by chance from each rater's
    own label frequencies. NaN for no items or when chance agreement is certain (``p_e = 1``)."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: {len(a)} and {len(b)} labels")
    n = len(a)
    if n == 0:
        return math.nan
    observed = sum(x == y for x, y in zip(a, b)) / n
    labels = set(a) | set(b)
    expected = sum((list(a).count(k) / n) * (list(b).count(k) / n) for k in labels)
    if expected >= 1.0:
        return math.nan
    return (observed - expected) / (1.0 - expected)


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, tied values sharing the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[order[j + 1]] == values[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the average ranks. NaN for fewer than two
    items or when either side is constant."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} and {len(y)} values")
    if len(x) < 2:
        return math.nan
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    if denominator == 0:
        return math.nan
    return float((rx * ry).sum() / denominator)
