"""The generate step: K completions per prompt from one or more generators
(`zephyr_lightning.aif.generators`), written in the ``openbmb/UltraFeedback`` schema (``instruction``,
``completions`` with ``model`` and ``response``).

`generate_completions` runs the models one after another (only one is in memory at a time). Each
model writes its own resumable shard ``<output stem>/<model>.jsonl``, one row per prompt, appended
and fsynced as it is produced; a restarted run skips the prompts a shard already has. When every
model is done, the shards are merged into the output file (written atomically).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from zephyr_lightning.aif.generators import Generator
from zephyr_lightning.aif.io import JsonlWriter, iter_jsonl, read_done, write_jsonl_atomic
from zephyr_lightning.aif.prompts import Prompt
from zephyr_lightning.arguments import PositiveInt, check_arguments

log = logging.getLogger(__name__)


@dataclass
class GenerateSummary:
    prompts: int = 0
    rows_written: int = 0
    incomplete: int = 0
    per_model: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "rows_written": self.rows_written,
            "incomplete": self.incomplete,
            "per_model": self.per_model,
        }


def slug(name: str) -> str:
    """A file-name-safe form of a model (or judge) name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def shard_dir(output: str | Path) -> Path:
    """Where the per-model shards of ``output`` live: ``generations.jsonl`` -> ``generations/``."""
    output = Path(output)
    return output.with_name(output.stem)


def check_settings(shard: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume a shard made with other settings: the output would mix two distributions.
    The settings are kept beside the shard (``<shard>.settings.json``)."""
    path = shard.with_suffix(".settings.json")
    if path.exists():
        old = json.loads(path.read_text())
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(
                f"{shard} was generated with different settings (changed: {changed}); use a new run folder "
                f"(hydra.run.dir) or delete {shard} and {path} to start this model over"
            )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2, sort_keys=True))


def _generate_one(
    generator: Generator, prompts: Sequence[Prompt], shard: Path, n: int, show_progress: bool
) -> dict[str, int]:
    done = read_done(shard, key=lambda row: row["prompt_id"])
    todo = [p for p in prompts if p.prompt_id not in done]
    counts = {"already_done": len(prompts) - len(todo), "generated": 0, "failed": 0}
    log.info("%s: %d of %d prompts already generated, %d to go", generator.name, counts["already_done"], len(prompts), len(todo))
    if not todo:
        return counts
    system_prompt = getattr(generator, "system_prompt", None) or ""
    generator.setup()
    try:
        with JsonlWriter(shard) as writer, tqdm(
            total=len(todo), desc=f"generate {generator.name}", unit="prompt", disable=not show_progress
        ) as bar:
            for start in range(0, len(todo), generator.batch_size):
                batch = todo[start : start + generator.batch_size]
                results = generator.generate([p.instruction for p in batch], n)
                if len(results) != len(batch):
                    raise RuntimeError(f"{generator.name}: returned {len(results)} results for {len(batch)} prompts")
                for prompt, result in zip(batch, results):
                    if isinstance(result, Exception):
                        counts["failed"] += 1
                        log.warning("%s: prompt_id=%s failed (retried on the next run): %s", generator.name, prompt.prompt_id, result)
                        continue
                    if len(result) != n:
                        raise RuntimeError(f"{generator.name}: returned {len(result)} completions, expected {n}")
                    writer.write(
                        {
                            "prompt_id": prompt.prompt_id,
                            "instruction": prompt.instruction,
                            "model": generator.name,
                            "custom_system_prompt": system_prompt,
                            "responses": result,
                        }
                    )
                    counts["generated"] += 1
                bar.update(len(batch))
    finally:
        generator.close()
    return counts


def generate_completions(
    prompts: Sequence[Prompt],
    generators: Sequence[Generator],
    output: str | Path,
    *,
    num_completions: PositiveInt = 1,
    source: str = "",
    show_progress: bool = True,
) -> GenerateSummary:
    """Generate ``num_completions`` completions per prompt from each generator; write UltraFeedback rows.

    Output rows: ``source``, ``prompt_id`` (sha256 of the instruction), ``instruction``, ``models`` and
    ``completions`` (``model``, ``response``, ``custom_system_prompt``), ``num_completions`` per model,
    in the order of ``generators``. A prompt one of the models failed on is left out of the output
    (and counted as incomplete) until a later run fills it in.
    """
    check_arguments(generate_completions, locals(), prefix="generate")
    if not generators:
        raise ValueError("no generators: configure at least one model under generate.models")
    names = [g.name for g in generators]
    slugs = [slug(n) for n in names]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"generator names must be distinct (set `name` on each): {names}")
    output = Path(output)
    shards = shard_dir(output)
    summary = GenerateSummary(prompts=len(prompts))
    for generator, name_slug in zip(generators, slugs):
        shard = shards / f"{name_slug}.jsonl"
        check_settings(shard, {**generator.settings(), "num_completions": num_completions})
        summary.per_model[generator.name] = _generate_one(generator, prompts, shard, num_completions, show_progress)

    by_model: list[dict[str, dict]] = []
    for name_slug in slugs:
        by_model.append({row["prompt_id"]: row for row in iter_jsonl(shards / f"{name_slug}.jsonl")})

    def rows():
        for prompt in prompts:
            parts = [rows_of.get(prompt.prompt_id) for rows_of in by_model]
            if any(part is None for part in parts):
                summary.incomplete += 1
                continue
            completions = [
                {"model": part["model"], "response": response, "custom_system_prompt": part["custom_system_prompt"]}
                for part in parts
                for response in part["responses"]
            ]
            yield {
                "source": source,
                "prompt_id": prompt.prompt_id,
                "instruction": prompt.instruction,
                "models": names,
                "completions": completions,
            }

    summary.rows_written = write_jsonl_atomic(output, rows())
    log.info(
        "generate: %d prompts x %d models x %d completions -> %s (%d rows%s)",
        len(prompts),
        len(generators),
        num_completions,
        output,
        summary.rows_written,
        f"; {summary.incomplete} incomplete, rerun to fill them in" if summary.incomplete else "",
    )
    return summary
