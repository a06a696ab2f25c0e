"""Binarize scored completions into preference pairs, the Zephyr way.

From rows with per-completion scores (``openbmb/UltraFeedback`` schema: ``instruction``,
``completions`` with ``response`` and ``overall_score``) to the ``HuggingFaceH4/ultrafeedback_binarized``
schema: ``prompt``, ``prompt_id`` (sha256 of the prompt), ``chosen``, ``rejected``, ``messages``,
``score_chosen``, ``score_rejected``; written as ``<output_dir>/train_prefs.jsonl`` and
``test_prefs.jsonl``, which `PreferenceDataModule` reads as they are.

Per row:
- candidates are the completions with a non-empty response and a finite score (items the judge
  failed on have none);
- chosen = a completion with the highest score (one of the tied best, drawn at random);
- rejected (``rejected="random"``, the paper's choice) = drawn uniformly from the others, where
  "others" are the completions that score strictly lower than the chosen one and differ from it in
  text: a pair whose two sides tie carries no preference. ``rejected="lowest"`` is the variant that
  takes a lowest-scored completion instead (one of the tied lowest, drawn at random);
- a row whose scores all tie is dropped and counted, as is a row with fewer than two candidates or
  with no candidate that differs from the chosen text.

Every draw uses a generator seeded by (``seed``, ``prompt_id``), so a row's pair does not depend on
the other rows, their order, or earlier runs: the same seed gives the same pairs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from zephyr_lightning.aif.io import write_jsonl_atomic
from zephyr_lightning.arguments import NonNegative, check_arguments
from zephyr_lightning.data.sources import BadRowError, load_split, prompt_id_of

log = logging.getLogger(__name__)

RejectedStrategy = Literal["random", "lowest"]
REJECTED_STRATEGIES: tuple[str, ...] = get_args(RejectedStrategy)

DROP_ALL_TIED = "all scores tie"
DROP_TOO_FEW = "fewer than two scored completions"
DROP_NO_DISTINCT = "no lower-scored completion with a different text"
DROP_DUPLICATE = "duplicate prompt"


def row_rng(seed: int, prompt_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\0{prompt_id}".encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


def _score(completion: dict[str, Any], score_key: str) -> float | None:
    value = completion.get(score_key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def binarize_row(
    row: dict[str, Any],
    *,
    seed: int = 42,
    rejected: RejectedStrategy = "random",
    score_key: str = "overall_score",
    where: str = "row",
) -> dict[str, Any] | str:
    """One row -> one ultrafeedback_binarized pair, or the reason (a string) it is dropped.

    Malformed rows (no instruction, completions that are not a list of objects with a text
    ``response``) raise `BadRowError` naming ``where``.
    """
    check_arguments(binarize_row, locals(), prefix="binarize")
    return _binarize_row(row, seed, rejected, score_key, where)


def _binarize_row(row: dict[str, Any], seed: int, rejected: str, score_key: str, where: str) -> dict[str, Any] | str:
    # Unchecked: binarize_rows checks its arguments once, not once per row.
    prompt = row.get("instruction", row.get("prompt"))
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRowError(f"{where}: 'instruction' is missing or empty")
    completions = row.get("completions")
    if not isinstance(completions, list):
        raise BadRowError(f"{where}: 'completions' must be a list, got {type(completions).__name__}")
    candidates: list[tuple[float, str]] = []
    for i, completion in enumerate(completions):
        if not isinstance(completion, dict) or not isinstance(completion.get("response"), str):
            raise BadRowError(f"{where}: completion {i} has no text 'response'")
        score = _score(completion, score_key)
        if score is not None and completion["response"].strip():
            candidates.append((score, completion["response"]))
    if len(candidates) < 2:
        return DROP_TOO_FEW
    best = max(score for score, _ in candidates)
    if all(score == best for score, _ in candidates):
        return DROP_ALL_TIED
    prompt_id = prompt_id_of(prompt)
    rng = row_rng(seed, prompt_id)
    chosen = rng.choice([c for c in candidates if c[0] == best])
    others = [c for c in candidates if c[0] < best and c[1].strip() != chosen[1].strip()]
    if not others:
        return DROP_NO_DISTINCT
    if rejected == "lowest":
        lowest = min(score for score, _ in others)
        others = [c for c in others if c[0] == lowest]
    loser = rng.choice(others)
    # A user turn and an assistant turn, both non-empty text (checked above): what PreferenceDataModule
    # asks of a pair.
    chosen_messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": chosen[1]}]
    rejected_messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": loser[1]}]
    return {
        "prompt": prompt,
        "prompt_id": prompt_id,
        "chosen": chosen_messages,
        "rejected": rejected_messages,
        "messages": chosen_messages,
        "score_chosen": chosen[0],
        "score_rejected": loser[0],
    }


@dataclass
class BinarizeSummary:
    rows: int = 0
    pairs: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "pairs": self.pairs, "splits": dict(self.splits), "dropped": dict(self.dropped)}


def binarize_rows(
    rows: Iterable[dict[str, Any]],
    *,
    seed: int = 42,
    rejected: RejectedStrategy = "random",
    score_key: str = "overall_score",
    source: str = "rows",
) -> tuple[list[dict[str, Any]], BinarizeSummary]:
    """Binarize many rows (first occurrence of a prompt wins); return the pairs and the counts."""
    check_arguments(binarize_rows, locals(), prefix="binarize")
    summary = BinarizeSummary()
    pairs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        summary.rows += 1
        where = f"{source} row {index}" + (f" prompt_id={row['prompt_id']}" if row.get("prompt_id") else "")
        result = _binarize_row(row, seed, rejected, score_key, where)
        if isinstance(result, str):
            summary.dropped[result] += 1
            continue
        if result["prompt_id"] in seen:
            summary.dropped[DROP_DUPLICATE] += 1
            continue
        seen.add(result["prompt_id"])
        pairs.append(result)
    summary.pairs = len(pairs)
    return pairs, summary


def split_pairs(pairs: list[dict[str, Any]], test_size: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Train / test split by prompt: ``test_size`` < 1 is a fraction (at least one pair when there are
    two or more), >= 1 a count. Deterministic for a seed, whatever the input order."""
    n = len(pairs)
    if test_size == 0 or n < 2:
        return pairs, []
    n_test = int(test_size) if test_size >= 1 else max(1, round(n * test_size))
    if n_test >= n:
        raise ValueError(f"binarize.test_size={test_size} leaves no training pairs out of {n}")
    ids = sorted(p["prompt_id"] for p in pairs)
    random.Random(seed).shuffle(ids)
    test_ids = set(ids[:n_test])
    return [p for p in pairs if p["prompt_id"] not in test_ids], [p for p in pairs if p["prompt_id"] in test_ids]


def binarize(
    source: str,
    output_dir: str | os.PathLike,
    *,
    seed: int = 42,
    rejected: RejectedStrategy = "random",
    score_key: str = "overall_score",
    test_size: NonNegative = 0.1,
    split: str = "train",
    train_split: str = "train_prefs",
    test_split: str = "test_prefs",
) -> BinarizeSummary:
    """Binarize the rows of ``source`` (a local file, e.g. the judge step's output, or a hub data set
    such as ``openbmb/UltraFeedback``) into ``output_dir/{train_split,test_split}.jsonl``.

    Args:
        seed: seeds the chosen/rejected draws (per row) and the train/test split.
        rejected: ``random`` (Zephyr / UltraFeedback binarized) or ``lowest``.
        score_key: the per-completion score field (``overall_score``; on UltraFeedback itself
            ``fine-grained_score`` is the mean of the aspect ratings).
        test_size: fraction (< 1) or number (>= 1) of pairs held out; 0 writes no test file.
    """
    check_arguments(binarize, locals(), prefix="binarize")
    rows = load_split(source, split)
    if "completions" not in rows.column_names:
        raise ValueError(f"{source} [{split}]: no 'completions' column; found {rows.column_names}")
    pairs, summary = binarize_rows(rows, seed=seed, rejected=rejected, score_key=score_key, source=source)
    if not pairs:
        raise ValueError(f"{source}: no preference pairs could be made from {summary.rows} rows ({dict(summary.dropped)})")
    train, test = split_pairs(pairs, test_size, seed)
    output_dir = Path(output_dir)
    summary.splits[train_split] = write_jsonl_atomic(output_dir / f"{train_split}.jsonl", train)
    stale_test = output_dir / f"{test_split}.jsonl"
    if test:
        summary.splits[test_split] = write_jsonl_atomic(stale_test, test)
    elif stale_test.exists():
        stale_test.unlink()  # from an earlier run with a test split; it no longer matches
    dropped = ", ".join(f"{n} {reason}" for reason, n in summary.dropped.most_common())
    log.info(
        "binarize: %d rows -> %d pairs (%s) in %s%s",
        summary.rows,
        summary.pairs,
        ", ".join(f"{n} {name}" for name, n in summary.splits.items()),
        output_dir,
        f"; dropped: {dropped}" if dropped else "",
    )
    return summary
