"""The judge step: score every completion of UltraFeedback-schema rows, through an on-disk cache.

The cache (a JSONL file, appended and fsynced per judgement as each arrives) is keyed by the sha256
of (judge fingerprint, prompt, response), where the fingerprint holds the judge model and rubric.
It is what makes the step resumable: a restarted run asks the judge only for what the cache lacks,
and failed items are not cached, so the next run retries them. Identical (prompt, response) pairs
in one run are asked once.

The output rows are the input rows with, per completion, ``overall_score`` (the judge's score, or
null when it failed), ``judge_ratings`` and ``judge_rationale`` (rubric judges) and ``judge_error``.
The output appears only when complete (`zephyr_lightning.atomic.atomic_write`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from zephyr_lightning.aif.grading import GRADING_KINDS
from zephyr_lightning.aif.io import JsonlWriter, iter_jsonl, repair_truncated_tail
from zephyr_lightning.aif.judges import Judge, JudgeItem, Judgement
from zephyr_lightning.arguments import PositiveInt, check_arguments
from zephyr_lightning.atomic import atomic_write
from zephyr_lightning.data.sources import BadRowError, load_split, prompt_id_of

log = logging.getLogger(__name__)

MAX_ERRORS_KEPT = 20


def cache_key(fingerprint: str, prompt: str, response: str) -> str:
    return hashlib.sha256(json.dumps([fingerprint, prompt, response]).encode("utf-8")).hexdigest()


def item_key(fingerprint: str, item: JudgeItem) -> str:
    """The cache key of any `JudgeItem`: the judge's fingerprint and everything the item shows the judge.
    An evaluation kind's key also holds a hash of its prompt text, so editing a prompt re-asks. A ``rating``
    item's key is `cache_key`'s."""
    if item.kind == "rating":
        return cache_key(fingerprint, item.prompt, item.response)
    content = [fingerprint, GRADING_KINDS[item.kind].version, *item.content()]
    return hashlib.sha256(json.dumps(content).encode("utf-8")).hexdigest()


class JudgementCache:
    """Successful judgements by `cache_key`, loaded from and appended to a JSONL file (``path=None``:
    in memory only)."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, Judgement] = {}
        if self.path is not None and self.path.exists():
            repair_truncated_tail(self.path)
            for row in iter_jsonl(self.path):
                self.entries[row["key"]] = Judgement.from_dict(row)
        self._writer = JsonlWriter(self.path) if self.path is not None else None

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> Judgement | None:
        return self.entries.get(key)

    def put(self, key: str, judgement: Judgement, **context: Any) -> None:
        if not judgement.ok or key in self.entries:
            return
        self.entries[key] = judgement
        if self._writer is not None:
            self._writer.write({"key": key, **context, **judgement.to_dict()})

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


@dataclass
class JudgeSummary:
    judge: str = ""
    rows: int = 0
    completions: int = 0
    from_cache: int = 0
    judged: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "judge": self.judge,
            "rows": self.rows,
            "completions": self.completions,
            "from_cache": self.from_cache,
            "judged": self.judged,
            "failed": self.failed,
            "first_errors": self.errors,
        }


def _check_row(row: dict[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    instruction = row.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise BadRowError(f"{where}: 'instruction' is missing or empty")
    completions = row.get("completions")
    if not isinstance(completions, list):
        raise BadRowError(f"{where}: 'completions' must be a list, got {type(completions).__name__}")
    for i, completion in enumerate(completions):
        if not isinstance(completion, dict) or not isinstance(completion.get("response"), str):
            raise BadRowError(f"{where}: completion {i} has no text 'response'")
    return instruction, completions


def _chunks(rows: Iterable[dict[str, Any]], min_items: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    items = 0
    for row in rows:
        chunk.append(row)
        items += len(row.get("completions") or [])
        if items >= min_items:
            yield chunk
            chunk, items = [], 0
    if chunk:
        yield chunk


def ask_judge(
    judge: Judge,
    asks: Mapping[str, JudgeItem],
    cache: JudgementCache,
    context: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Judgement]:
    """Judge the items the cache lacks (by cache key), caching each success the moment it arrives, with
    ``context[key]`` (default: the item's prompt_id and model) beside it in the cache file."""
    keys = list(asks)

    def save(index: int, judgement: Judgement) -> None:
        item = asks[keys[index]]
        extra = context.get(keys[index], {}) if context is not None else {"prompt_id": item.prompt_id, "model": item.model}
        cache.put(keys[index], judgement, judge=judge.name, **extra)

    judgements = judge.judge([asks[k] for k in keys], on_result=save)
    if len(judgements) != len(keys):
        raise RuntimeError(f"judge {judge.name} returned {len(judgements)} judgements for {len(keys)} items")
    for index, judgement in enumerate(judgements):
        save(index, judgement)  # for judges that do not call on_result; put() ignores repeats
    return dict(zip(keys, judgements))


def judge_completions(
    source: str,
    judge: Judge,
    output: str | os.PathLike,
    *,
    cache_path: str | os.PathLike | None = None,
    split: str = "train",
    chunk_size: PositiveInt = 256,
    show_progress: bool = True,
) -> JudgeSummary:
    """Score every completion of the rows in ``source`` with ``judge``; write them to ``output``.

    Args:
        source: UltraFeedback-schema rows: a local file (e.g. the generate step's output) or a hub
            data set such as ``openbmb/UltraFeedback`` (to re-judge it).
        judge: any `Judge`.
        output: the judged rows (JSONL).
        cache_path: the judgement cache (JSONL); ``None`` keeps it in memory (nothing resumes).
        split: the split of ``source``.
        chunk_size: completions handed to the judge at once (their requests run concurrently).
    """
    check_arguments(judge_completions, locals(), prefix="judging")
    rows = load_split(source, split)
    output = Path(output)
    fingerprint = judge.fingerprint()
    cache = JudgementCache(cache_path)
    summary = JudgeSummary(judge=judge.name, rows=len(rows))
    total = sum(len(c or []) for c in rows["completions"])
    log.info("judge %s: %d rows, %d completions; %d judgements cached in %s", judge.name, len(rows), total, len(cache), cache_path)
    succeeded = False
    try:
        with atomic_write(output) as out, tqdm(
            total=total, desc=f"judge {judge.name}", unit="completion", disable=not show_progress
        ) as bar:
            for chunk in _chunks(rows, chunk_size):
                keyed: list[tuple[dict[str, Any], list[str]]] = []
                asks: dict[str, JudgeItem] = {}
                for row in chunk:
                    where = f"{source} prompt_id={row.get('prompt_id') or '?'}"
                    instruction, completions = _check_row(row, where)
                    prompt_id = row.get("prompt_id") or prompt_id_of(instruction)
                    keys = []
                    for completion in completions:
                        key = cache_key(fingerprint, instruction, completion["response"])
                        keys.append(key)
                        if key not in cache and key not in asks:
                            asks[key] = JudgeItem(instruction, completion["response"], prompt_id, str(completion.get("model", "")))
                    keyed.append((row, keys))
                fresh = ask_judge(judge, asks, cache)
                succeeded = succeeded or len(cache) > 0
                if fresh and not succeeded and not any(j.ok for j in fresh.values()):
                    # Nothing has worked yet and a whole chunk failed: a wrong URL, model or rubric, or a
                    # server that is down. Stop now instead of failing every remaining item the same way.
                    first = next(iter(fresh.values())).error
                    raise RuntimeError(
                        f"judge {judge.name}: all {len(fresh)} completions of the first chunk failed and none has "
                        f"ever succeeded; stopping. First error: {first}"
                    )
                for row, keys in keyed:
                    completions = []
                    for completion, key in zip(row["completions"], keys):
                        cached = key not in fresh
                        judgement = cache.get(key) if cached else fresh[key]
                        summary.completions += 1
                        if cached:
                            summary.from_cache += 1
                        elif judgement.ok:
                            summary.judged += 1
                        if not judgement.ok:
                            summary.failed += 1
                            if len(summary.errors) < MAX_ERRORS_KEPT:
                                summary.errors.append(judgement.error or "no score")
                        completions.append(
                            {
                                **completion,
                                "overall_score": judgement.score,
                                "judge_ratings": judgement.ratings,
                                "judge_rationale": judgement.rationale,
                                "judge_error": judgement.error,
                            }
                        )
                    out.write(json.dumps({**row, "completions": completions}, ensure_ascii=False) + "\n")
                    bar.update(len(keys))
    finally:
        cache.close()
    _report(summary, output)
    return summary


def _report(summary: JudgeSummary, output: Path) -> None:
    log.info(
        "judge %s: %d completions in %d rows -> %s (%d from cache, %d judged now, %d failed)",
        summary.judge,
        summary.completions,
        summary.rows,
        output,
        summary.from_cache,
        summary.judged,
        summary.failed,
    )
    if summary.failed:
        shown = "\n  ".join(summary.errors[:10])
        more = f"\n  ... and {summary.failed - 10} more" if summary.failed > 10 else ""
        log.warning(
            "judge %s: %d completions could not be judged (they have judge_error set in %s, and are retried on "
            "the next run):\n  %s%s",
            summary.judge,
            summary.failed,
            output,
            shown,
            more,
        )
