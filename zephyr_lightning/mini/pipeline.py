"""Run the whole Mini-Zephyr recipe from one composed config: ``python train.py +experiment=zephyr_tiny``.

This is Hydra glue, like ``zephyr_lightning/cli/aif.py``: the only module of ``zephyr_lightning.mini``
that reads a config (the package itself imports without Hydra). `train.py` hands a config that has a
``pipeline`` key to `run_pipeline`, together with its own one-stage ``train`` function, and each seed
runs five stages, each writing under ``DIR/seed<N>/<stage>``:

1. ``teacher``: `write_teacher_data` writes the dSFT dialogues and the AIF and held-out prompts;
2. ``sft``: ``train(...)`` on the config with ``pipeline.sft`` merged in (as ``python train.py
   +experiment=sft`` would run it), exporting ``sft/hf``;
3. ``aif``: the AIF command's own `run` on ``pipeline.aif`` (generate from ``sft/hf``, judge, binarize);
4. ``dpo``: ``train(...)`` with ``pipeline.dpo`` merged in, from ``sft/hf`` with it as the reference;
5. ``eval``: both exports answer the held-out prompts and the same judge scores them.

Then `write_report` writes ``DIR/report.md``, ``DIR/results.json`` and the plots (after every seed, so
a run cut short still reports the seeds it finished).

How a stage section becomes a stage's config: its ``module`` and ``data`` replace the run's; its other
keys (``model``, ``optim``, ``trainer``, ``callbacks``, ...) are merged into the run's. Interpolations
refer to the root: ``${model}``, ``${seed}`` (the seed being run) and ``${stage_dir.<stage>}``.

With ``pipeline.resume=true`` (default) a rerun in the same folder (``hydra.run.dir=DIR``) keeps what is
finished: the teacher's files, the ``sft/hf`` and ``dpo/hf`` exports; AIF generation and judging resume
from their own files. Delete a stage's folder to redo it (and the later stages of that seed).
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from zephyr_lightning.cli.aif import run as run_aif
from zephyr_lightning.mini.evaluate import evaluate_models
from zephyr_lightning.mini.report import SeedResult, write_report
from zephyr_lightning.mini.teacher import write_teacher_data

log = logging.getLogger("zephyr_lightning.mini")

STAGES = ("teacher", "sft", "aif", "dpo", "eval")
REPLACED_KEYS = ("module", "data")
MODELS = {"dsft": "sft", "ddpo": "dpo"}

# train.py's `train`: one stage from its config; it ends its own W&B run before it returns or raises.
TrainStage = Callable[[DictConfig], dict[str, float]]


def stage_dirs(run_dir: Path, seed: int) -> dict[str, str]:
    return {stage: str(run_dir / f"seed{seed}" / stage) for stage in STAGES}


def seed_root(cfg: DictConfig, seed: int, dirs: dict[str, str]) -> DictConfig:
    """The run's config for one seed, without the pipeline section: ``seed`` and ``stage_dir`` set."""
    root = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    root.pop("pipeline")
    root.seed = seed
    root.stage_dir = dirs
    return root


def stage_config(cfg: DictConfig, section: DictConfig, *, seed: int, dirs: dict[str, str], stage: str) -> DictConfig:
    """What ``python train.py`` would compose for one stage: the section's ``module`` and ``data`` replace
    the run's, its other keys merge in; ``paths.output_dir`` is the stage's folder."""
    root = seed_root(cfg, seed, dirs)
    section = OmegaConf.create(OmegaConf.to_container(section, resolve=False))
    for key in REPLACED_KEYS:
        if key in section:
            root[key] = section.pop(key)
    root = OmegaConf.merge(root, section)
    root.paths.output_dir = dirs[stage]
    root.task_name = f"{cfg.task_name}-seed{seed}-{stage}"
    return root


def _exported(folder: str) -> bool:
    return (Path(folder) / "hf" / "config.json").exists() and any(Path(folder, "hf").glob("*.safetensors"))


def _metrics_csv(folder: str) -> Path | None:
    found = sorted(glob.glob(os.path.join(folder, "csv", "**", "metrics.csv"), recursive=True), key=os.path.getmtime)
    return Path(found[-1]) if found else None


def run_seed(cfg: DictConfig, seed: int, run_dir: Path, train: TrainStage) -> SeedResult:
    """All five stages for one seed."""
    pipe = cfg.pipeline
    dirs = stage_dirs(run_dir, seed)
    resume = bool(pipe.get("resume", True))
    seconds: dict[str, float] = {}

    def timed(stage: str, fn: Callable[[], Any], done: bool = False) -> Any:
        if done and resume:
            log.info("seed %d · %s: already done in %s, kept (pipeline.resume=true)", seed, stage, dirs[stage])
            return None
        log.info("seed %d · %s -> %s", seed, stage, dirs[stage])
        start = time.monotonic()
        try:
            return fn()
        finally:
            seconds[stage] = time.monotonic() - start

    root = seed_root(cfg, seed, dirs)
    teacher_done = (Path(dirs["teacher"]) / "eval_prompts.jsonl").exists()
    teacher = OmegaConf.to_container(OmegaConf.merge(root, {"_teacher": pipe.teacher})._teacher, resolve=True)
    family = instantiate(OmegaConf.merge(root, {"_tasks": pipe.tasks})._tasks, _convert_="all")
    timed("teacher", lambda: log.info("teacher: %s", write_teacher_data(dirs["teacher"], family, seed=seed, **teacher).to_dict()),
          done=teacher_done)

    def fit(stage: str) -> None:
        # `train` ends its W&B run itself, so the next stage starts its own.
        train(stage_config(cfg, pipe[stage], seed=seed, dirs=dirs, stage=stage))

    timed("sft", lambda: fit("sft"), done=_exported(dirs["sft"]))

    aif_cfg = OmegaConf.merge(root, pipe.aif, {"run_dir": dirs["aif"], "step": "all"})
    aif_summary = timed("aif", lambda: run_aif(aif_cfg))
    pairs = (aif_summary or {}).get("binarize", {}).get("splits", {}).get(str(aif_cfg.binarize.train_split))

    timed("dpo", lambda: fit("dpo"), done=_exported(dirs["dpo"]))

    evaluation = OmegaConf.merge(root, {"_eval": pipe.eval})._eval
    judge = instantiate(aif_cfg.judge, _convert_="all")
    models = {name: os.path.join(dirs[stage], "hf") for name, stage in MODELS.items()}
    options = OmegaConf.to_container(evaluation, resolve=True)
    decodings = options.pop("decodings")
    scores = timed(
        "eval",
        lambda: {
            decoding: evaluate_models(
                options["prompts"], models, os.path.join(dirs["eval"], decoding), judge, decoding=decoding,
                **{k: v for k, v in options.items() if k != "prompts"},
            )
            for decoding in decodings
        },
    )
    return SeedResult(seed, scores, dpo_metrics_csv=_metrics_csv(dirs["dpo"]), pairs=pairs, seconds=seconds)


def recipe_summary(cfg: DictConfig) -> dict[str, Any]:
    """The values that shape the result, for the report (resolved as for the first seed)."""
    seed = int(cfg.pipeline.seeds[0])
    pipe = OmegaConf.merge(seed_root(cfg, seed, stage_dirs(Path("DIR"), seed)), {"_p": cfg.pipeline})._p

    def pick(path: str, *keys: str) -> dict[str, Any]:
        node = OmegaConf.select(pipe, path)
        if node is None:
            return {}
        return {k: OmegaConf.to_container(node[k], resolve=True) if OmegaConf.is_config(node[k]) else node[k]
                for k in keys if k in node}

    models = OmegaConf.select(pipe, "aif.generate.models") or {}
    generators = {name: pick(f"aif.generate.models.{name}", "temperature", "top_p", "max_new_tokens") for name in models}
    return {
        "seeds": list(cfg.pipeline.seeds),
        "model": {"name_or_path": cfg.model.name_or_path,
                  "config_overrides": OmegaConf.to_container(cfg.model.get("config_overrides") or OmegaConf.create({}))},
        "tasks": pick("tasks", "kinds", "styles", "min_items", "max_items", "min_number", "max_number"),
        "teacher": pick("teacher", "num_train", "num_test", "num_aif_prompts", "num_eval_prompts", "format_slip"),
        "sft": {**pick("sft.optim", "lr", "schedule", "warmup_ratio"), **pick("sft.trainer", "max_epochs")},
        "aif": {**pick("aif.generate", "num_completions"), "generators": generators, **pick("aif.judge", "fn"),
                **pick("aif.binarize", "rejected")},
        "dpo": {**pick("dpo.module", "beta", "loss_type"), **pick("dpo.optim", "lr", "schedule", "warmup_ratio"),
                **pick("dpo.trainer", "max_epochs")},
        "eval": pick("eval", "decodings", "num_samples", "temperature", "max_new_tokens"),
    }


def run_pipeline(cfg: DictConfig, train: TrainStage) -> dict[str, float]:
    """Run every seed of ``cfg.pipeline``, write the report, return the mean metrics over seeds
    (``mini/<decoding>/<name>``: ``win_rate``, ``dsft_score``, ``ddpo_score``, ...)."""
    pipe = cfg.pipeline
    seeds = [int(s) for s in pipe.seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"pipeline.seeds must be distinct and non-empty, got {seeds}")
    run_dir = Path(cfg.paths.output_dir)
    start = time.monotonic()
    results: list[SeedResult] = []
    numbers: dict[str, Any] = {}
    setup = recipe_summary(cfg)
    for seed in seeds:
        results.append(run_seed(cfg, seed, run_dir, train))
        numbers = write_report(run_dir, results, setup=setup, wall_seconds=time.monotonic() - start)
    metrics = {
        f"mini/{decoding}/{name}": value["mean"]
        for decoding, stats in numbers["aggregate"].items()
        for name, value in stats.items()
    }
    for decoding, stats in numbers["aggregate"].items():
        log.info(
            "mini-zephyr (%s, %d seeds): dSFT %.2f, dDPO %.2f, win rate %.3f ± %.3f; dDPO ahead in %d of %d seeds",
            decoding, len(seeds), stats["dsft_score"]["mean"], stats["ddpo_score"]["mean"], stats["win_rate"]["mean"],
            stats["win_rate"]["std"], numbers["ddpo_ahead_seeds"][decoding], len(seeds),
        )
    log.info("report: %s (%.0f s in all)", run_dir / "report.md", time.monotonic() - start)
    return metrics
