"""The evaluation's statistics against their definitions, on cases small enough to compute by hand."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from zephyr_lightning.evaluate.pairwise import PairOutcome, summarize_pairwise
from zephyr_lightning.evaluate.stats import (
    average_ranks,
    bootstrap_interval,
    cohen_kappa,
    length_controlled_win_rate,
    spearman,
    win_rate,
)


def test_win_rate_counts_ties_as_half():
    assert win_rate(["win", "win", "tie", "loss"]) == pytest.approx((2 + 0.5) / 4)
    assert math.isnan(win_rate([]))


def test_cohen_kappa_of_the_textbook_two_by_two_table():
    # 50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15.
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    # p_o = 35/50 = 0.7; A says yes 25/50, B 30/50: p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = 0.2 / 0.5
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_kappa_three_labels_and_the_edges():
    a = ["win", "win", "tie", "loss", "loss", "win"]
    b = ["win", "tie", "tie", "loss", "win", "win"]
    p_o = Fraction(4, 6)
    p_e = Fraction(3, 6) * Fraction(3, 6) + Fraction(1, 6) * Fraction(2, 6) + Fraction(2, 6) * Fraction(1, 6)
    assert cohen_kappa(a, b) == pytest.approx(float((p_o - p_e) / (1 - p_e)))
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa(["win", "loss"], ["loss", "win"]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa(["tie"] * 4, ["tie"] * 4))  # chance agreement is certain: undefined
    assert math.isnan(cohen_kappa([], []))


def test_spearman_without_ties_is_one_minus_six_sum_d_squared():
    x, y = [10, 20, 30, 40, 50], [1, 3, 2, 5, 4]
    # ranks of y: 1 3 2 5 4, d = 0 -1 1 -1 1, sum d^2 = 4: 1 - 6 * 4 / (5 * 24) = 0.8
    assert spearman(x, y) == pytest.approx(0.8)
    assert spearman(x, x[::-1]) == pytest.approx(-1.0)


def test_spearman_with_ties_uses_average_ranks():
    x, y = [1, 2, 3, 4, 5], [5, 6, 7, 8, 7]
    assert list(average_ranks(y)) == [1.0, 2.0, 3.5, 5.0, 3.5]
    rx, ry = np.array([1, 2, 3, 4, 5.0]), np.array([1, 2, 3.5, 5, 3.5])
    dx, dy = rx - 3, ry - 3  # both mean 3
    expected = (dx * dy).sum() / math.sqrt((dx**2).sum() * (dy**2).sum())  # 8 / sqrt(10 * 9.5)
    assert expected == pytest.approx(8 / math.sqrt(95))
    assert spearman(x, y) == pytest.approx(expected)
    assert math.isnan(spearman([1, 2, 3], [4, 4, 4]))


def _exact_bootstrap_quantiles(values, level):
    """Every one of the n**n equally likely resamples, enumerated: the exact bootstrap distribution."""
    n = len(values)
    means = sorted(Fraction(sum(c), n) for c in itertools.product([Fraction(v) for v in values], repeat=n))
    probs = {}
    for m in means:
        probs[m] = probs.get(m, 0) + Fraction(1, len(means))
    cdf, support = Fraction(0), []
    for m in sorted(probs):
        support.append((m, cdf, cdf + probs[m]))
        cdf += probs[m]
    out = []
    for q in ((1 - level) / 2, (1 + level) / 2):
        m, below, upto = next(s for s in support if s[2] > Fraction(q).limit_denominator(1000))
        # The Monte Carlo quantile lands on m for sure only if q is well inside m's probability mass.
        assert below + Fraction(1, 100) < q < upto - Fraction(1, 100), "pick values whose quantiles are clear"
        out.append(float(m))
    return out


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution():
    values = [0.0, 0.5, 1.0, 1.0, 1.0]
    low, high = bootstrap_interval(values, resamples=40000, level=0.9, seed=1)
    assert [low, high] == pytest.approx(_exact_bootstrap_quantiles(values, 0.9))
    # Seeded: the same interval again.
    assert bootstrap_interval(values, resamples=40000, level=0.9, seed=1) == (low, high)


def test_bootstrap_interval_resamples_whole_groups():
    # Two questions: q1's three turns all won, q2's one turn lost. Resampling questions gives means
    # 1 (q1 q1), 0 (q2 q2) or 3/4 (one of each: 3 wins of 4 turns), with probabilities 1/4, 1/4, 1/2.
    values, groups = [1.0, 1.0, 1.0, 0.0], ["q1", "q1", "q1", "q2"]
    low, high = bootstrap_interval(values, groups, resamples=20000, level=0.4, seed=0)
    assert (low, high) == pytest.approx((0.75, 0.75))  # the 30% and 70% quantiles both fall in 3/4's mass
    low, high = bootstrap_interval(values, groups, resamples=20000, level=0.95, seed=0)
    assert (low, high) == pytest.approx((0.0, 1.0))
    # Turn by turn the mean of 4 draws from {1, 1, 1, 0} is k/4, k ~ Binomial(4, 3/4): P(mean <= 0.75) =
    # 1 - 0.75**4 = 0.684 < 0.7, so the 70% quantile is 1.0 where the grouped one is 0.75.
    assert bootstrap_interval(values, resamples=20000, level=0.4, seed=0) == pytest.approx((0.75, 1.0))
    assert all(math.isnan(v) for v in bootstrap_interval([]))


def _fit_conditions(preferences, model_lengths, baseline_lengths, fit, intercept_penalty=1.0, length_penalty=1e-4):
    """The penalised score equations at the returned coefficients (zero at the optimum)."""
    y = np.asarray(preferences, dtype=float)
    d = np.asarray(model_lengths, dtype=float) - np.asarray(baseline_lengths, dtype=float)
    x = np.tanh(d / d.std(ddof=1))
    p = 1 / (1 + np.exp(-(fit.intercept + fit.length_coef * x)))
    return (y - p).sum() - intercept_penalty * fit.intercept, ((y - p) * x).sum() - length_penalty * fit.length_coef


def test_length_control_solves_the_penalised_logistic_regression():
    preferences = [1, 1, 0.5, 0, 1, 0, 1, 0.5, 1, 0]
    mine = [120, 300, 80, 60, 250, 90, 200, 100, 150, 40]
    theirs = [100, 100, 100, 100, 100, 100, 100, 100, 100, 100]
    fit = length_controlled_win_rate(preferences, mine, theirs)
    assert _fit_conditions(preferences, mine, theirs, fit) == pytest.approx((0.0, 0.0), abs=1e-8)
    assert fit.raw_win_rate == pytest.approx(np.mean(preferences))
    assert fit.win_rate == pytest.approx(1 / (1 + math.exp(-fit.intercept)))
    assert fit.length_coef > 0  # longer answers won more here


def test_length_control_without_length_differences_is_the_penalised_mean():
    # x = 0 everywhere: the intercept solves sum(y - sigmoid(a)) = a (the standard-normal prior's pull).
    preferences = [1.0] * 15 + [0.0] * 5
    fit = length_controlled_win_rate(preferences, [50] * 20, [50] * 20)
    assert (np.sum(np.array(preferences) - fit.win_rate)) == pytest.approx(fit.intercept, abs=1e-8)
    assert 0.5 < fit.win_rate < 0.75


def test_length_control_removes_a_pure_length_preference():
    rng = np.random.default_rng(7)
    for share in (0.7, 0.85):
        base = rng.integers(50, 400, 200)
        longer = rng.random(200) < share
        mine = base + np.where(longer, 1, -1) * rng.integers(5, 300, 200)
        preferences = longer.astype(float)  # the judge always prefers the longer answer
        fit = length_controlled_win_rate(preferences, mine, base)
        assert fit.raw_win_rate == pytest.approx(preferences.mean())
        assert abs(fit.win_rate - 0.5) < 0.1 < abs(fit.raw_win_rate - 0.5)


def _pair(question, first, second, mine=10, theirs=10, turn=1):
    return PairOutcome("m", "b", question, None, turn, first, second, mine, theirs)


def test_pairwise_outcomes_need_both_orders_to_agree():
    win, loss = _pair("q", "A", "B"), _pair("q", "B", "A")
    assert (win.outcome, win.flipped) == ("win", False) and (loss.outcome, loss.flipped) == ("loss", False)
    first_position = _pair("q", "A", "A")  # each order prefers what it shows first: the model, then the baseline
    assert (first_position.outcome, first_position.flipped) == ("tie", True)
    half = _pair("q", "A", "tie")  # a win in one order, a tie in the other
    assert (half.outcome, half.flipped) == ("tie", True)
    assert _pair("q", "tie", "tie").outcome == "tie" and not _pair("q", "tie", "tie").flipped
    assert _pair("q", None, "B").outcome is None


def test_pairwise_summary_counts():
    outcomes = [_pair("q1", "A", "B"), _pair("q2", "A", "B"), _pair("q3", "B", "A"), _pair("q4", "A", "A"),
                _pair("q5", None, "A")]
    s = summarize_pairwise(outcomes, resamples=500)
    assert (s["wins"], s["ties"], s["losses"], s["compared"], s["incomplete"]) == (2, 1, 1, 4, 1)
    assert s["win_rate"] == pytest.approx(2.5 / 4)
    assert s["position_bias_rate"] == pytest.approx(1 / 4)
    # decisive single-order verdicts: A B A B B A A A -> 5 of 8 chose position A
    assert s["first_position_rate"] == pytest.approx(5 / 8)
    assert s["ci_low"] <= s["win_rate"] <= s["ci_high"]
