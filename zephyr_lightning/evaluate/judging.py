"""Asking one judge for many judgements through its on-disk cache, as the AIF judge step does.

Every successful judgement is appended (and fsynced) to the judge's cache file the moment it arrives,
keyed by `zephyr_lightning.aif.judge.item_key` (the judge's fingerprint, the kind's prompt, and all the
item shows the judge), so a run killed at any point asks nothing again that it already has; a failed
judgement (a malformed reply, a request that gave up) is counted and not cached, so the next run asks
again. Identical items are asked once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from zephyr_lightning.aif.judge import JudgementCache, ask_judge, item_key
from zephyr_lightning.aif.judges import Judge, JudgeItem, Judgement

log = logging.getLogger(__name__)

MAX_ERRORS_KEPT = 20


@dataclass
class JudgingCounts:
    """How one part of the evaluation went with one judge."""

    items: int = 0
    from_cache: int = 0
    judged: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "from_cache": self.from_cache, "judged": self.judged, "failed": self.failed,
                "first_errors": self.errors}


class JudgeSession:
    """One judge and its cache file for a whole evaluation run (``close()`` when done).

    Args:
        name: how the report names the judge.
        judge: any `Judge`.
        cache_path: the cache file (JSONL); ``None`` keeps it in memory (nothing resumes).
        chunk_size: items handed to the judge at once (its requests run concurrently).
    """

    def __init__(self, name: str, judge: Judge, cache_path: str | os.PathLike | None, *, chunk_size: int = 256) -> None:
        self.name = name
        self.judge = judge
        self.fingerprint = judge.fingerprint()
        self.cache = JudgementCache(cache_path)
        self.chunk_size = chunk_size
        self.kinds = tuple(getattr(judge, "kinds", ("rating", "score", "pairwise", "refusal")))
        self.counts: dict[str, JudgingCounts] = {}
        self._succeeded = len(self.cache) > 0

    def judge_items(
        self,
        items: Sequence[JudgeItem],
        contexts: Sequence[Mapping[str, Any]] | None = None,
        *,
        part: str,
        show_progress: bool = True,
    ) -> list[Judgement]:
        """One `Judgement` per item, in order: from the cache, or asked now (cached as each arrives).
        ``contexts[i]`` is stored beside item i's cache entry (what it was: model, question, turn, order)."""
        counts = self.counts.setdefault(part, JudgingCounts())
        keys = [item_key(self.fingerprint, item) for item in items]
        context_of = {key: dict(contexts[i]) for i, key in enumerate(keys)} if contexts is not None else None
        results: dict[str, Judgement] = {}
        fresh_keys: set[str] = set()
        item_of: dict[str, JudgeItem] = {}
        for key, item in zip(keys, items):
            item_of.setdefault(key, item)
        todo = [key for key in item_of if key not in self.cache]
        with tqdm(total=len(todo), desc=f"judge {self.name} {part}", unit="item", disable=not show_progress or not todo) as bar:
            for start in range(0, len(todo), self.chunk_size):
                chunk = todo[start : start + self.chunk_size]
                asks = {key: item_of[key] for key in chunk}
                fresh = ask_judge(self.judge, asks, self.cache, context_of)
                self._stop_if_nothing_works(fresh)
                results.update(fresh)
                fresh_keys.update(fresh)
                bar.update(len(chunk))
        out = []
        for key in keys:
            judgement = results[key] if key in results else self.cache.get(key)
            counts.items += 1
            if key not in fresh_keys:
                counts.from_cache += 1
            elif judgement.ok:
                counts.judged += 1
            if not judgement.ok:
                counts.failed += 1
                if len(counts.errors) < MAX_ERRORS_KEPT:
                    counts.errors.append(judgement.error or "no judgement")
            out.append(judgement)
        if counts.failed:
            log.warning("judge %s, %s: %d of %d judgements failed (retried on the next run); first: %s",
                        self.name, part, counts.failed, counts.items, counts.errors[0])
        return out

    def _stop_if_nothing_works(self, fresh: Mapping[str, Judgement]) -> None:
        self._succeeded = self._succeeded or any(j.ok for j in fresh.values())
        if fresh and not self._succeeded:
            # Nothing has worked yet and a whole chunk failed: a wrong URL, model or prompt format, or a
            # server that is down. Stop now instead of failing every remaining item the same way.
            first = next(iter(fresh.values())).error
            raise RuntimeError(f"judge {self.name}: all {len(fresh)} judgements of the first chunk failed and none "
                               f"has ever succeeded; stopping. First error: {first}")

    def close(self) -> None:
        self.cache.close()
        if hasattr(self.judge, "close"):
            self.judge.close()
