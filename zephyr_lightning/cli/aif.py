"""The AIF command: ``zephyr-aif`` / ``python -m zephyr_lightning.aif [step=all|generate|judge|binarize] [overrides]``.

Composes ``conf/aif/aif.yaml`` with Hydra, instantiates the generators and the judge, and runs the
steps in order, each reading the previous step's file in the run folder (``hydra.run.dir``):

    DIR/generations.jsonl        prompts with K completions per model (openbmb/UltraFeedback schema)
    DIR/generations/<model>.jsonl  per-model shards, appended as they are generated (resume state)
    DIR/judge_cache.jsonl        every judgement, appended as it arrives (resume state)
    DIR/judged.jsonl             the rows with a score per completion
    DIR/binarized/               train_prefs.jsonl, test_prefs.jsonl (ultrafeedback_binarized schema)
    DIR/summary.json             counts of every step run in this folder (and of the prompts read)
    DIR/decontamination.jsonl    prompts that matched an evaluation question (with prompts.decontamination)
    DIR/aif.log                  the log

Only this module reads Hydra config; the library functions it calls take plain arguments. Before a step
runs, the config sections it uses are validated like a training config (`zephyr_lightning.validation`:
every argument, model paths by their key), and what a killed earlier run left half-written in the
step's output folders is removed. Start-up (no credentials in files or on the console, user errors in
one line) is `zephyr_lightning.cli.app.hydra_command`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from zephyr_lightning.aif.binarize import binarize
from zephyr_lightning.aif.client import quiet_http_logs
from zephyr_lightning.aif.generate import generate_completions
from zephyr_lightning.aif.io import write_jsonl_atomic
from zephyr_lightning.aif.judge import judge_completions
from zephyr_lightning.aif.prompts import load_prompt_set
from zephyr_lightning.atomic import remove_stale_staging
from zephyr_lightning.cli.app import hydra_command
from zephyr_lightning.cli.configs import conf_dir
from zephyr_lightning.errors import InvalidValue, MissingFile
from zephyr_lightning.validation import check_config

log = logging.getLogger("zephyr_lightning.aif")

# Inside the installed package, or conf/ beside it in a source checkout (zephyr_lightning.cli.configs).
CONF_DIR = conf_dir() / "aif"
STEPS = ("generate", "judge", "binarize")


def selected_steps(step: str) -> list[str]:
    if step == "all":
        return list(STEPS)
    if step not in STEPS:
        raise InvalidValue(f"step={step!r} is not one of {['all', *STEPS]}")
    return [step]


def _require_local(path: str, key: str, producer: str) -> None:
    """A missing local input file is usually a step run in a new folder: say which folder to use."""
    p = Path(path)
    if p.suffix in (".jsonl", ".json", ".parquet") and not p.exists():
        raise MissingFile(
            f"{key}={path} does not exist: run step={producer} first in the same run folder "
            f"(pass the same hydra.run.dir=...), or set {key} to an existing file or hub data set"
        )


# The config section each step instantiates objects from.
_SECTIONS = {"generate": "generate", "judge": "judge"}


def check_steps_config(cfg: DictConfig, steps: list[str]) -> None:
    """Every problem in the sections the selected steps use, all at once and each named by its key
    (``generate.models.local.model.name_or_path='/no/such': does not exist``), before a model loads.
    Sections of steps not run are not checked (``step=judge`` needs no generator model)."""
    sections = [section for step, section in _SECTIONS.items() if step in steps and section in cfg]
    # Each section resolved in place: its interpolations (${seed}) point into the whole config.
    check_config({section: OmegaConf.to_container(cfg[section], resolve=True) for section in sections},
                 {section: OmegaConf.to_container(cfg[section], resolve=False) for section in sections})


def _remove_stale_outputs(cfg: DictConfig, steps: list[str]) -> None:
    """What a killed run of these steps left half-written (``.judged.jsonl.*.partial``): never read back,
    and as large as the output."""
    files = cfg.files
    outputs = {"generate": [files.generations], "judge": [files.judged, files.judge_cache],
               "binarize": [files.binarized]}
    for step in steps:
        for output in outputs[step]:
            path = Path(str(output))
            if path.suffix in (".jsonl", ".json"):
                remove_stale_staging(path.parent, (path.name,))
            elif not path.suffix:  # an output folder (binarized/): everything staged inside it
                remove_stale_staging(path)
    remove_stale_staging(Path(cfg.run_dir), ("summary.json",))


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the selected steps of a composed config; return their counts."""
    steps = selected_steps(str(cfg.step))
    check_steps_config(cfg, steps)
    _remove_stale_outputs(cfg, steps)
    files = cfg.files
    summary: dict[str, Any] = {}
    show_progress = bool(cfg.get("progress_bar", True))

    if "generate" in steps:
        prompt_set = load_prompt_set(**OmegaConf.to_container(cfg.prompts, resolve=True))
        prompts = prompt_set.prompts
        summary["prompts"] = prompt_set.summary
        if "decontamination" in prompt_set.summary:
            write_jsonl_atomic(Path(cfg.run_dir) / "decontamination.jsonl", prompt_set.contamination)
        models = cfg.generate.models or {}
        generators = [instantiate(node, _convert_="all") for node in models.values() if node is not None]
        summary["generate"] = generate_completions(
            prompts,
            generators,
            files.generations,
            num_completions=cfg.generate.num_completions,
            source=str(cfg.prompts.path or "mixture"),
            show_progress=show_progress,
        ).to_dict()

    if "judge" in steps:
        _require_local(files.generations, "files.generations", "generate")
        judge = instantiate(cfg.judge, _convert_="all")
        try:
            result = judge_completions(
                files.generations,
                judge,
                files.judged,
                cache_path=files.judge_cache,
                split=cfg.input_split,
                chunk_size=cfg.judging.chunk_size,
                show_progress=show_progress,
            )
        finally:
            if hasattr(judge, "close"):
                judge.close()
        summary["judge"] = result.to_dict()
        if result.completions and result.failed == result.completions:
            _write_summary(cfg, summary)
            raise RuntimeError(f"judge {result.judge}: every completion failed; first error: {result.errors[0]}")

    if "binarize" in steps:
        _require_local(files.judged, "files.judged", "judge")
        summary["binarize"] = binarize(
            files.judged, files.binarized, split=cfg.input_split, **OmegaConf.to_container(cfg.binarize, resolve=True)
        ).to_dict()

    _write_summary(cfg, summary)
    return summary


def _write_summary(cfg: DictConfig, summary: dict[str, Any]) -> None:
    # Steps run one at a time in the same folder add to one summary.
    path = Path(cfg.run_dir) / "summary.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**previous, **summary}, indent=2))
    log.info("run folder: %s", cfg.run_dir)


@hydra_command(config_name="aif", config_path=CONF_DIR)
def main(cfg: DictConfig) -> None:
    quiet_http_logs()
    run(cfg)


if __name__ == "__main__":
    main()
