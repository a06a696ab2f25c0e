"""The evaluation command: ``python -m zephyr_lightning.evaluate [overrides]`` (installed: ``zephyr-eval``).

Composes ``conf/eval/eval.yaml`` with Hydra, instantiates the questions, the models (generators or
answer files), the judges, the safety prompts and the `Evaluation` settings, runs it in the run folder
(``hydra.run.dir``) and writes the report:

    DIR/answers/                 every model's answers (generated turn by turn; resumable)
    DIR/safety_answers/          their answers to the safety probe
    DIR/judgments/<judge>/       cache.jsonl (every judgement as it arrived; resume state) and one file per part
    DIR/summary.json             what a model card shows (python -m zephyr_lightning.export RUN --eval-summary ...)
    DIR/results.json, report.md, *.png
    DIR/eval.log

Only this module reads Hydra config; the library (`zephyr_lightning.evaluate`) takes plain arguments.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from zephyr_lightning.aif.client import quiet_http_logs
from zephyr_lightning.cli.app import hydra_command
from zephyr_lightning.cli.configs import conf_dir, register_signatures
from zephyr_lightning.evaluate import EvalResults, log_results, write_report
from zephyr_lightning.loggers import announce_offline_run, finish_wandb_run
from zephyr_lightning.validation import check_config

log = logging.getLogger("zephyr_lightning.evaluate")
register_signatures()  # before hydra.main composes: eval.yaml takes Evaluation's defaults from its signature


def _objects(group: DictConfig | None) -> dict[str, Any]:
    """Instantiate every entry of a name -> object group (models, judges); null entries are left out."""
    if not group:
        return {}
    return {str(name): instantiate(node, _convert_="all") for name, node in group.items() if node is not None}


def run(cfg: DictConfig) -> EvalResults:
    """Run the evaluation a composed config describes; write the report; return the results."""
    # every bad value at once, each with its key, before a model or data set is loaded: arguments, and
    # every model path and answer file (`models.a.model.name_or_path`, `models.b.path`) as the train command checks them
    check_config(OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_container(cfg, resolve=False))
    questions = instantiate(cfg.questions, _convert_="all")
    source = OmegaConf.select(cfg, "questions.source", default="questions")
    safety = instantiate(cfg.safety, _convert_="all") if cfg.get("safety") else None
    evaluation = instantiate(cfg.evaluation, _convert_="all")
    models, judges = _objects(cfg.get("models")), _objects(cfg.get("judges"))
    results = evaluation.run(questions, models, judges, cfg.run_dir, safety=safety, questions_source=str(source))
    write_report(results, plots=bool(OmegaConf.select(cfg, "report.plots", default=True)))
    logger_cfg = cfg.get("logger")
    if logger_cfg and "_target_" in logger_cfg:
        logger = instantiate(logger_cfg, _convert_="all")
        if getattr(logger, "zephyr_offline", False):
            announce_offline_run(logger)
        log_results(logger, results)
        finish_wandb_run()
    log.info("run folder: %s", cfg.run_dir)
    return results


@hydra_command(config_name="eval", config_path=conf_dir() / "eval")
def main(cfg: DictConfig) -> None:
    quiet_http_logs()
    run(cfg)


if __name__ == "__main__":
    main()
