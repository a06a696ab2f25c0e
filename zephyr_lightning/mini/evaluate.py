"""Judge two (or more) models on held-out prompts, through the AIF stage's own generate and judge steps.

Each model answers every prompt (greedy, or ``num_samples`` samples at ``temperature``); the answers are
written in the ``openbmb/UltraFeedback`` schema and scored by the judge exactly as AIF completions are.
A model's score on a prompt is its judge score (the mean over its samples when sampling). The win rate
of model A against model B is the share of prompts where A scores higher, ties counted as half a win
(AlpacaEval's convention).

    DIR/<decoding>.jsonl          prompts with every model's answers
    DIR/<decoding>_judged.jsonl   the same rows with the judge's scores
"""

from __future__ import annotations

import logging
import statistics
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zephyr_lightning.aif.generate import generate_completions
from zephyr_lightning.aif.generators import LocalGenerator
from zephyr_lightning.aif.io import iter_jsonl
from zephyr_lightning.aif.judge import judge_completions
from zephyr_lightning.aif.judges import Judge
from zephyr_lightning.aif.prompts import load_prompts
from zephyr_lightning.models import ModelSpec

log = logging.getLogger(__name__)

DECODINGS = ("greedy", "sample")


@dataclass
class ModelScores:
    """One model's judge scores: per prompt (by prompt_id), and every response with its score."""

    name: str
    per_prompt: dict[str, float] = field(default_factory=dict)
    responses: list[tuple[str, str, float]] = field(default_factory=list)  # (prompt, response, score)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.per_prompt.values())


def win_rate(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    """Share of the prompts both were scored on where ``a`` beats ``b``; a tie counts as half a win."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError("win_rate: the two models share no scored prompt")
    wins = sum(a[k] > b[k] for k in shared)
    ties = sum(a[k] == b[k] for k in shared)
    return {
        "win_rate": (wins + 0.5 * ties) / len(shared),
        "wins": wins,
        "ties": ties,
        "losses": len(shared) - wins - ties,
        "prompts": len(shared),
    }


def read_scores(judged: str | Path) -> dict[str, ModelScores]:
    """Per model, the judge scores of a judged file (UltraFeedback schema); failed judgements are skipped."""
    samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    scores: dict[str, ModelScores] = {}
    for row in iter_jsonl(judged):
        for completion in row["completions"]:
            name, score = completion["model"], completion.get("overall_score")
            scores.setdefault(name, ModelScores(name))
            if score is None:
                continue
            samples[name][row["prompt_id"]].append(float(score))
            scores[name].responses.append((row["instruction"], completion["response"], float(score)))
    for name, by_prompt in samples.items():
        scores[name].per_prompt = {k: statistics.fmean(v) for k, v in by_prompt.items()}
    return scores


def evaluate_models(
    prompts: str | Path,
    models: Mapping[str, str | ModelSpec],
    output_dir: str | Path,
    judge: Judge,
    *,
    decoding: str = "greedy",
    num_samples: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 48,
    batch_size: int = 64,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, ModelScores]:
    """Answer ``prompts`` with each of ``models`` (name -> model folder or spec), judge the answers,
    and return each model's scores."""
    if decoding not in DECODINGS:
        raise ValueError(f"eval decoding={decoding!r} is not one of {list(DECODINGS)}")
    sampled = decoding == "sample"
    output_dir = Path(output_dir)
    generators = [
        LocalGenerator(
            model,
            name=name,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            do_sample=sampled,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )
        for name, model in models.items()
    ]
    generations = output_dir / f"{decoding}.jsonl"
    judged = output_dir / f"{decoding}_judged.jsonl"
    generate_completions(
        load_prompts(str(prompts)),
        generators,
        generations,
        num_completions=num_samples if sampled else 1,
        source=str(prompts),
        show_progress=show_progress,
    )
    summary = judge_completions(str(generations), judge, judged, cache_path=None, show_progress=show_progress)
    if summary.failed:
        log.warning("eval (%s): %d of %d answers could not be judged", decoding, summary.failed, summary.completions)
    return read_scores(judged)


def summarize(scores: Mapping[str, ModelScores], baseline: str, candidate: str) -> dict[str, Any]:
    """Mean scores of both models and the candidate's win rate against the baseline."""
    return {
        f"{baseline}_score": scores[baseline].mean,
        f"{candidate}_score": scores[candidate].mean,
        **win_rate(scores[candidate].per_prompt, scores[baseline].per_prompt),
    }
