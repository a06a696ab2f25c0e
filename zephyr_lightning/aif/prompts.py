"""The prompts to generate completions for: any data set with an ``instruction`` (UltraFeedback),
``prompt`` (UltraChat, ultrafeedback_binarized) or ``question`` column, or a conversation's first user
turn; one source or a mixture, cleaned like training data (`zephyr_lightning.data.mixture`,
`zephyr_lightning.data.cleaning`): the same loader, filters, deduplication and decontamination."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from zephyr_lightning.arguments import ArgumentError, PositiveInt, check_arguments
from zephyr_lightning.data.cleaning import DEFAULT_FILTERS, Deduplicate, Filters, clean_split, duplicates_note
from zephyr_lightning.data.decontamination import Decontamination, EvalIndex
from zephyr_lightning.data.mixture import MixtureSource, MixtureSpec, load_mixed_split, parse_mixture

log = logging.getLogger(__name__)

PROMPT_FIELDS = ("instruction", "prompt", "question")


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    instruction: str


@dataclass
class PromptSet:
    """The prompts, and what loading them counted: per source, rows read and removed by reason; the
    decontamination matches."""

    prompts: list[Prompt]
    summary: dict[str, Any] = field(default_factory=dict)
    contamination: list[dict[str, Any]] = field(default_factory=list)


def load_prompt_set(
    path: str | None = None,
    split: str = "train",
    *,
    field: str | None = None,
    limit: PositiveInt | None = None,
    name: str | None = None,
    mixture: MixtureSpec = None,
    deduplicate: Deduplicate = "prompt",
    decontamination: Decontamination | None = None,
    filters: Filters = DEFAULT_FILTERS,
    seed: int = 0,
) -> PromptSet:
    """Read prompts, one per row, with ``prompt_id`` = sha256 of the text (each text kept once).

    Args:
        path: hub name, local file or folder (``<split>.jsonl``), or ``builtin:aif_prompts``.
        split: the split (a local file is its own split whatever the name); a mixture entry may name its own.
        field: the text column of ``path``; default ``instruction``, else ``prompt``, else ``question``,
            else the first user turn of ``messages`` / ``conversations``.
        limit: keep only the first N prompts left after cleaning.
        name: hub configuration name of ``path``.
        mixture: several sources with fractions or row counts (`zephyr_lightning.data.mixture`).
        deduplicate, decontamination, filters: as for training data (`zephyr_lightning.data.cleaning`);
            only the prompt-length filters apply to prompts.
        seed: draws the fractions of a mixture and shuffles it.
    """
    check_arguments(load_prompt_set, locals(), prefix="prompts")
    if (path is None) == (mixture is None):  # one of the two, as for the DataModules
        raise ArgumentError(["prompts.path: give prompts.path (one source) or prompts.mixture (several)"] if path is None
                            else [f"prompts.mixture: replaces prompts.path; set prompts.path=null (it is {path!r})"])
    sources = parse_mixture(mixture) or (MixtureSource(path=path, name=name),)
    mixed = load_mixed_split(sources, test=False, kind="prompts", default_split=split, seed=seed,
                             field=field if not mixture else None)
    config = Decontamination.model_validate(decontamination) if decontamination is not None else None
    index = EvalIndex.from_config(config) if config is not None else None
    label = path if not mixture else "mixture(" + ", ".join(s.path for s in sources) + ")"
    if mixed is None or len(mixed.rows) == 0:
        raise ValueError(f"{label} [{split}]: no prompts")
    cleaned = clean_split(mixed.rows, kind="prompts", source_names=[s.path for s in sources], deduplicate=deduplicate,
                          filters=Filters.model_validate(filters), index=index)
    removed: Counter = Counter(cleaned.removed)
    removed.update(mixed.statuses)
    # Rows sharing a prompt_id are dropped below whatever the mode (generation keys its rows by prompt_id): of the
    # duplicates the mode keeps, only the same prompt under another id reaches generation twice.
    kept = {kind: n for kind, n in cleaned.duplicates_kept().items() if kind == "duplicate prompt"}
    if kept:
        log.warning("%s [%s]: %s", label, split, duplicates_note(kept, deduplicate, key="prompts.deduplicate"))
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for prompt_id, text, position in zip(cleaned.rows["prompt_id"][:], cleaned.rows["prompt"][:], cleaned.rows["_source"][:]):
        if prompt_id in seen:  # the same text: generation keys its rows by prompt_id, whatever `deduplicate` says
            removed[(position, "removed: duplicate row")] += 1
            continue
        if limit is not None and len(prompts) >= limit:
            break
        seen.add(prompt_id)
        prompts.append(Prompt(prompt_id, text))
    if not prompts:
        raise ValueError(f"{label} [{split}]: no prompts left ({_reasons(removed)})")
    summary = _summary(sources, mixed, removed, len(prompts), deduplicate, limit)
    summary["duplicates_kept"] = kept
    if config is not None:
        found: dict[str, set[str]] = {}
        for match in cleaned.matches:
            found.setdefault(match["eval_source"], set()).add(match["question_id"])
        summary["decontamination"] = {
            "questions": [q.path for q in config.questions], "evaluation_turns": len(index),
            "ngram": config.ngram, "threshold": config.threshold,
            "matched_question_ids": {s: sorted(ids, key=lambda q: (len(q), q)) for s, ids in found.items()},
        }
    log.info("%s [%s]: %d prompts%s", label, split, len(prompts), f"; removed: {_reasons(removed)}" if removed else "")
    return PromptSet(prompts, summary, cleaned.matches)


def _reasons(removed: Counter) -> str:
    totals: Counter = Counter()
    for (_, status), n in removed.items():
        totals[status.split(": ", 1)[1]] += n
    return ", ".join(f"{n} {why}" for why, n in totals.most_common())


def _summary(sources, mixed, removed: Counter, kept: int, deduplicate: str, limit: int | None) -> dict[str, Any]:
    per_source = []
    for position, (source, part) in enumerate(zip(sources, mixed.parts)):
        reasons = {s.split(": ", 1)[1]: n for (p, s), n in removed.items() if p == position}
        per_source.append({**source.describe(), "split": part.split, "available": part.available,
                           "taken": part.taken, "removed": reasons})
    return {"prompts": kept, "limit": limit, "deduplicate": deduplicate, "sources": per_source}


def load_prompts(path: str | None = None, split: str = "train", **kwargs: Any) -> list[Prompt]:
    """The prompts of `load_prompt_set` (same arguments), without its counts."""
    return load_prompt_set(path, split, **kwargs).prompts
