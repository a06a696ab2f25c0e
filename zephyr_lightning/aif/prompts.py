"""The prompts to generate completions for: any data set with an ``instruction`` (UltraFeedback) or
``prompt`` (UltraChat, ultrafeedback_binarized) column, read through `load_split`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from zephyr_lightning.data.sources import BadRowError, load_split, prompt_id_of

log = logging.getLogger(__name__)

PROMPT_FIELDS = ("instruction", "prompt")


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    instruction: str


def load_prompts(
    path: str,
    split: str = "train",
    *,
    field: str | None = None,
    limit: int | None = None,
    name: str | None = None,
) -> list[Prompt]:
    """Read prompts, one per row, with ``prompt_id`` = sha256 of the text (duplicates kept once).

    Args:
        path: hub name, local file or folder (``<split>.jsonl``), or ``builtin:aif_prompts``.
        split: the split (a local file is its own split whatever the name).
        field: the text column; default ``instruction`` if present, else ``prompt``.
        limit: keep only the first N distinct prompts.
        name: hub configuration name.
    """
    rows = load_split(path, split, name=name)
    columns = rows.column_names
    if field is None:
        field = next((f for f in PROMPT_FIELDS if f in columns), None)
        if field is None:
            raise ValueError(f"{path} [{split}]: no prompt column; expected one of {list(PROMPT_FIELDS)}, found {columns}")
    elif field not in columns:
        raise ValueError(f"prompts.field={field!r}: {path} [{split}] has no such column; found {columns}")
    prompts: list[Prompt] = []
    seen: set[str] = set()
    duplicates = 0
    for index, text in enumerate(rows[field]):
        if not isinstance(text, str) or not text.strip():
            raise BadRowError(f"{path} [{split}] row {index}: {field!r} is empty or not text ({text!r:.60})")
        prompt_id = prompt_id_of(text)
        if prompt_id in seen:
            duplicates += 1
            continue
        seen.add(prompt_id)
        prompts.append(Prompt(prompt_id, text))
        if limit is not None and len(prompts) >= limit:
            break
    if duplicates:
        log.info("%s [%s]: %d duplicate prompts kept once", path, split, duplicates)
    if not prompts:
        raise ValueError(f"{path} [{split}]: no prompts")
    return prompts
