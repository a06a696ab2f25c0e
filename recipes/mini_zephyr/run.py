"""Run Mini-Zephyr: ``python -m recipes.mini_zephyr [overrides]`` from the repository root.

The recipe's own config (``recipes/mini_zephyr/conf/mini_zephyr.yaml``) holds the seeds, the task family,
the teacher's settings and one section per stage. For each seed:

1. ``teacher``: `write_teacher_data` writes the dSFT dialogues and the AIF and held-out prompts;
2. ``sft``, ``aif``, ``dpo``: the library's own commands (``train``, ``aif``), each config composed from
   the library's config groups exactly as its command line would compose it
   (`zephyr_lightning.cli.configs.compose`): the section's ``overrides`` as typed, then its ``base``
   values and its ``set`` values, each value one ``++key=value`` override;
3. ``evaluations``: the evaluation command (``eval``) once per decoding; both exports answer the
   held-out prompts and the programmatic judge grades and compares them.

Each stage's command line is logged, so any stage can be rerun by hand. Then `write_report` writes
``DIR/report.md``, ``DIR/results.json`` and the plots (after every seed, so a run cut short still reports
the seeds it finished). With ``resume=true`` (default) a rerun in the same folder (``hydra.run.dir=DIR``)
keeps what is finished: the teacher's files, the ``sft/hf`` and ``dpo/hf`` exports; AIF and the
evaluations resume from their own files. Delete a stage's folder to redo it (and the later stages).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shlex
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recipes.mini_zephyr.report import ModelScores, SeedResult, write_report
from recipes.mini_zephyr.tasks import TaskFamily
from recipes.mini_zephyr.teacher import write_teacher_data
from zephyr_lightning.aif.client import quiet_http_logs
from zephyr_lightning.cli import aif as aif_command
from zephyr_lightning.cli import evaluate as eval_command
from zephyr_lightning.cli.app import hydra_command
from zephyr_lightning.cli.configs import compose, conf_dir
from zephyr_lightning.cli.train import train
from zephyr_lightning.evaluate import EvalResults

log = logging.getLogger("recipes.mini_zephyr")

CONF = Path(__file__).resolve().parent / "conf"
BASELINE, CANDIDATE = "dsft", "ddpo"
# command -> (its primary config, its config folder, how a user types it)
COMMANDS = {
    "train": ("train", lambda: conf_dir(), "python train.py"),
    "aif": ("aif", lambda: conf_dir() / "aif", "python -m zephyr_lightning.aif"),
    "eval": ("eval", lambda: conf_dir() / "eval", "python -m zephyr_lightning.evaluate"),
}


# Strings Hydra reads back as the same string without quotes (not a number, bool or null).
_PLAIN = re.compile(r"[A-Za-z_/.][\w./-]*")
_KEYWORDS = {"true", "false", "null", "nan", "inf"}


def hydra_value(value: Any) -> str:
    """A plain value in Hydra's override grammar: strings quoted, lists and dicts in brackets."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _KEYWORDS:
            return value  # as a user would type it: a name or a path
        # Hydra's quoted strings: a backslash is an escape only before a quote (or the closing one), and
        # ${...} would still be an interpolation.
        quoted = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value).replace("'", "\\'").replace("${", "\\${")
        return f"'{quoted}'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as a Hydra override value")


def value_overrides(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``++key=value`` for every leaf of nested ``values`` (keys joined with dots; a list or an empty
    mapping is a leaf)."""
    out = []
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out += value_overrides(value, path)
        else:
            out.append(f"++{path}={hydra_value(value)}")
    return out


def stage_overrides(cfg: DictConfig, section: DictConfig) -> list[str]:
    """A stage's command line: its overrides as typed, then its base values, then its own values."""
    overrides = [str(o) for o in section.get("overrides") or []]
    base = section.get("base")
    if base:
        overrides += value_overrides(OmegaConf.to_container(cfg[base], resolve=True))
    return overrides + value_overrides(OmegaConf.to_container(section.get("set") or {}, resolve=True))


def stage_config(cfg: DictConfig, section: DictConfig) -> tuple[DictConfig, str]:
    """The stage's composed config and the command line that composes the same."""
    name, folder, typed = COMMANDS[section.command]
    overrides = stage_overrides(cfg, section)
    return compose(name, overrides, config_dir=folder()), " ".join([typed, *map(shlex.quote, overrides)])


def for_seed(cfg: DictConfig, seed: int) -> DictConfig:
    """The recipe's config with ``seed`` set (``${seed}`` and ``${dirs.*}`` then resolve for that seed)."""
    seeded = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    seeded.seed = seed
    return seeded


def _exported(folder: str) -> bool:
    return (Path(folder) / "hf" / "config.json").exists() and any(Path(folder, "hf").glob("*.safetensors"))


def _metrics_csv(folder: str) -> Path | None:
    found = sorted(glob.glob(os.path.join(folder, "csv", "**", "metrics.csv"), recursive=True), key=os.path.getmtime)
    return Path(found[-1]) if found else None


def scores_of(results: EvalResults) -> dict[str, ModelScores]:
    """Each model's single-answer grades from an evaluation (its one judge), per prompt and per answer."""
    judge = results.judges[0]
    out = {}
    for model in results.models:
        graded = [s for s in results.scores[judge] if s.model == model and s.score is not None]
        answers = results.answers[model]
        out[model] = ModelScores(
            model,
            per_prompt={s.question_id: s.score for s in graded},
            responses=[(results.asked[s.question_id].first_turn, answers.turn(s.question_id, 1), s.score) for s in graded],
        )
    return out


def run_seed(cfg: DictConfig, seed: int) -> SeedResult:
    """Every stage for one seed."""
    cfg = for_seed(cfg, seed)
    dirs = OmegaConf.to_container(cfg.dirs, resolve=True)
    resume = bool(cfg.get("resume", True))
    seconds: dict[str, float] = {}

    def timed(stage: str, fn: Callable[[], Any], done: bool = False) -> Any:
        if done and resume:
            log.info("seed %d · %s: already done, kept (resume=true)", seed, stage)
            return None
        start = time.monotonic()
        try:
            return fn()
        finally:
            seconds[stage] = time.monotonic() - start

    def command(stage: str, section: DictConfig, run: Callable[[DictConfig], Any]) -> Any:
        config, line = stage_config(cfg, section)
        log.info("seed %d · %s: %s", seed, stage, line)
        return run(config)

    family = TaskFamily(**OmegaConf.to_container(cfg.tasks, resolve=True))
    teacher = OmegaConf.to_container(cfg.teacher, resolve=True)
    timed("teacher", lambda: log.info("seed %d · teacher: %s", seed,
                                      write_teacher_data(dirs["teacher"], family, seed=seed, **teacher).to_dict()),
          done=(Path(dirs["teacher"]) / "eval_prompts.jsonl").exists())
    stages = cfg.stages
    timed("sft", lambda: command("sft", stages.sft, train), done=_exported(dirs["sft"]))
    aif = timed("aif", lambda: command("aif", stages.aif, aif_command.run))
    pairs = (aif or {}).get("binarize", {}).get("splits", {}).get("train_prefs")
    timed("dpo", lambda: command("dpo", stages.dpo, train), done=_exported(dirs["dpo"]))
    scores, pairwise = {}, {}
    for name, section in cfg.evaluations.items():
        if section is None:
            continue
        results: EvalResults = timed(f"eval {name}", lambda s=section, n=name: command(f"eval {n}", s, eval_command.run))
        scores[name] = scores_of(results)
        pairwise[name] = results.pairwise[results.judges[0]][CANDIDATE]
    return SeedResult(seed, scores, pairwise, dpo_metrics_csv=_metrics_csv(dirs["dpo"]), pairs=pairs, seconds=seconds)


def recipe_summary(cfg: DictConfig) -> dict[str, Any]:
    """The values that shape the result, for the report: the recipe's own, and each stage's command line
    (for the first seed)."""
    first = for_seed(cfg, int(cfg.seeds[0]))
    sections = {**{k: v for k, v in first.stages.items()}, **{f"eval {k}": v for k, v in first.evaluations.items() if v}}
    return {
        "seeds": list(cfg.seeds),
        "tasks": OmegaConf.to_container(cfg.tasks, resolve=True),
        "teacher": OmegaConf.to_container(cfg.teacher, resolve=True),
        "commands": {name: " ".join([COMMANDS[s.command][2], *stage_overrides(first, s)]) for name, s in sections.items()},
    }


def run_recipe(cfg: DictConfig) -> dict[str, float]:
    """Every seed, then the report; returns the mean metrics over seeds (``mini/<decoding>/<name>``:
    ``win_rate``, ``dsft_score``, ``ddpo_score``, ...)."""
    seeds = [int(s) for s in cfg.seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
    run_dir = Path(cfg.run_dir)
    start = time.monotonic()
    setup = recipe_summary(cfg)
    results: list[SeedResult] = []
    numbers: dict[str, Any] = {}
    for seed in seeds:
        results.append(run_seed(cfg, seed))
        numbers = write_report(run_dir, results, setup=setup, wall_seconds=time.monotonic() - start)
    for decoding, stats in numbers["aggregate"].items():
        log.info(
            "mini-zephyr (%s, %d seeds): dSFT %.2f, dDPO %.2f, win rate %.3f ± %.3f; dDPO ahead in %d of %d seeds",
            decoding, len(seeds), stats["dsft_score"]["mean"], stats["ddpo_score"]["mean"], stats["win_rate"]["mean"],
            stats["win_rate"]["std"], numbers["ddpo_ahead_seeds"][decoding], len(seeds),
        )
    log.info("report: %s (%.0f s in all)", run_dir / "report.md", time.monotonic() - start)
    return {f"mini/{d}/{name}": value["mean"] for d, stats in numbers["aggregate"].items() for name, value in stats.items()}


# The project's command start-up: credentials blanked on the console, in logs and the run's records; a
# user error in one line.
@hydra_command("mini_zephyr", config_path=CONF)
def main(cfg: DictConfig) -> float:
    """Run the recipe; return the mean greedy win rate (what a Hydra sweeper over the recipe maximises)."""
    quiet_http_logs()
    cfg.run_dir = str(Path(cfg.run_dir))  # resolved while this app's Hydra state is live
    metrics = run_recipe(cfg)
    return metrics.get("mini/greedy/win_rate", float("nan"))
