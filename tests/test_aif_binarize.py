"""Binarization properties on hand-made rows, checked against the rule itself, not against our output."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter

import pytest

from tests.helpers import write_jsonl
from zephyr_lightning.aif import binarize, binarize_row, binarize_rows
from zephyr_lightning.aif.binarize import DROP_ALL_TIED, DROP_NO_DISTINCT, DROP_TOO_FEW
from zephyr_lightning.data.sources import BadRowError


def row(prompt: str, scored: list[tuple[str, float | None]]) -> dict:
    return {
        "instruction": prompt,
        "completions": [{"model": f"m{i}", "response": r, "overall_score": s} for i, (r, s) in enumerate(scored)],
    }


def random_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.randint(2, 5)
        # Scores from a small set so that ties (partial and total) are common.
        rows.append(row(f"Prompt number {i}?", [(f"answer {i}.{j}", float(rng.choice([1, 2, 3]))) for j in range(k)]))
    return rows


def test_chosen_is_a_max_and_rejected_is_a_strictly_lower_other(tmp_path):
    rows = random_rows(300)
    pairs, summary = binarize_rows(rows, seed=7)
    by_prompt = {r["instruction"]: r for r in rows}
    all_tied = sum(len({c["overall_score"] for c in r["completions"]}) == 1 for r in rows)
    assert summary.dropped == Counter({DROP_ALL_TIED: all_tied}) and all_tied > 0
    assert summary.pairs == len(pairs) == len(rows) - all_tied
    for pair in pairs:
        source = by_prompt[pair["prompt"]]["completions"]
        scores = {c["response"]: c["overall_score"] for c in source}
        chosen, rejected = pair["chosen"][-1]["content"], pair["rejected"][-1]["content"]
        assert scores[chosen] == max(scores.values()) == pair["score_chosen"]
        assert scores[rejected] == pair["score_rejected"] < pair["score_chosen"]
        assert rejected != chosen
        assert pair["prompt_id"] == hashlib.sha256(pair["prompt"].encode()).hexdigest()
        assert pair["chosen"][0] == pair["rejected"][0] == {"role": "user", "content": pair["prompt"]}
        assert pair["messages"] == pair["chosen"]
        assert set(pair) == {"prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"}


def test_deterministic_under_a_seed_and_independent_of_row_order():
    rows = random_rows(200, seed=1)
    first, _ = binarize_rows(rows, seed=3)
    again, _ = binarize_rows(rows, seed=3)
    reversed_pairs, _ = binarize_rows(list(reversed(rows)), seed=3)
    other, _ = binarize_rows(rows, seed=4)
    assert first == again
    assert sorted(first, key=lambda p: p["prompt_id"]) == sorted(reversed_pairs, key=lambda p: p["prompt_id"])
    assert first != other  # with 200 rows a different seed must change some draw


def test_rejected_is_uniform_among_the_lower_scored():
    # Best = "a"; the three others all score lower, and each should be drawn about a third of the time.
    r = row("Which is best?", [("b", 2.0), ("a", 9.0), ("c", 1.0), ("d", 5.0)])
    counts = Counter(binarize_row(r, seed=s)["rejected"][-1]["content"] for s in range(900))
    assert set(counts) == {"b", "c", "d"}
    # 900 draws of p=1/3: the standard deviation is ~14; 250..350 is over 3.5 sigma either side.
    assert all(250 <= n <= 350 for n in counts.values()), counts


def test_tied_best_is_drawn_among_the_best_and_never_rejected():
    r = row("Tie at the top?", [("x", 5.0), ("y", 5.0), ("z", 1.0)])
    results = [binarize_row(r, seed=s) for s in range(200)]
    assert {p["chosen"][-1]["content"] for p in results} == {"x", "y"}
    assert {p["rejected"][-1]["content"] for p in results} == {"z"}


def test_lowest_variant_takes_a_minimum():
    rows = random_rows(200, seed=2)
    pairs, _ = binarize_rows(rows, seed=0, rejected="lowest")
    by_prompt = {r["instruction"]: r for r in rows}
    for pair in pairs:
        scores = [c["overall_score"] for c in by_prompt[pair["prompt"]]["completions"]]
        assert pair["score_rejected"] == min(scores) < pair["score_chosen"] == max(scores)


@pytest.mark.parametrize(
    "scored,reason",
    [
        ([("a", 3.0), ("b", 3.0), ("c", 3.0)], DROP_ALL_TIED),
        ([("a", 3.0), ("b", None)], DROP_TOO_FEW),  # the judge failed on b
        ([("a", 3.0), ("   ", 1.0)], DROP_TOO_FEW),  # an empty completion cannot be a side of a pair
        ([("same text", 3.0), ("same text", 1.0)], DROP_NO_DISTINCT),
    ],
)
def test_rows_without_a_usable_pair_are_dropped_with_a_reason(scored, reason):
    assert binarize_row(row("Q?", scored)) == reason


def test_unscored_completions_are_skipped_not_chosen():
    r = row("Q?", [("failed", None), ("good", 4.0), ("bad", 1.0), ("nan", float("nan"))])
    pair = binarize_row(r, seed=0)
    assert (pair["chosen"][-1]["content"], pair["rejected"][-1]["content"]) == ("good", "bad")


def test_malformed_rows_are_errors_naming_the_row(tmp_path):
    path = write_jsonl(tmp_path / "judged.jsonl", [row("Fine?", [("a", 2.0), ("b", 1.0)]), {"instruction": "Q?", "completions": [{"model": "m"}]}])
    with pytest.raises(BadRowError, match=r"judged\.jsonl row 1: completion 0 has no text 'response'"):
        binarize(str(path), tmp_path / "out")
    with pytest.raises(ValueError, match="binarize.rejected='worst'"):
        binarize_row(row("Q?", [("a", 1.0), ("b", 2.0)]), rejected="worst")


def test_files_split_by_prompt_deterministically(tmp_path):
    rows = random_rows(60, seed=5)
    path = write_jsonl(tmp_path / "judged.jsonl", rows)
    summary = binarize(str(path), tmp_path / "a", seed=1, test_size=0.2)
    binarize(str(path), tmp_path / "b", seed=1, test_size=0.2)
    train = [json.loads(x) for x in (tmp_path / "a" / "train_prefs.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (tmp_path / "a" / "test_prefs.jsonl").read_text().splitlines()]
    assert len(test) == round(0.2 * summary.pairs) and len(train) + len(test) == summary.pairs
    assert not {p["prompt_id"] for p in train} & {p["prompt_id"] for p in test}
    for name in ("train_prefs.jsonl", "test_prefs.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # test_size=0 writes no test file and removes a stale one.
    binarize(str(path), tmp_path / "a", seed=1, test_size=0)
    assert not (tmp_path / "a" / "test_prefs.jsonl").exists()
