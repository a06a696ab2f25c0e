"""The Hydra app: compose conf/, instantiate every object, fit.

    python train.py +experiment=dpo                  # dDPO on the embedded default
    python train.py +experiment=sft                  # dSFT on the embedded default
    python train.py +experiment=dpo model=zephyr_7b_sft data=ultrafeedback trainer=gpu strategy=fsdp
    python train.py +experiment=zephyr_tiny          # every stage, 3 seeds (a config with `pipeline`)
"""

from __future__ import annotations

import logging
import math
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from zephyr_lightning.loggers import announce_offline_run

log = logging.getLogger("train")


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a dict-of-objects group (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one training job from a composed config; return the final logged metrics."""
    if cfg.get("module") is None:
        raise ValueError("no `module` in the config: choose a stage with +experiment=dpo or +experiment=sft")
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data, _convert_="all")
    module = instantiate(cfg.module, _convert_="all")
    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            announce_offline_run(logger)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if trainer.is_global_zero:
        log.info("final metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        log.info("run folder: %s", cfg.paths.output_dir)
    return metrics


def run(cfg: DictConfig) -> dict[str, float]:
    """One stage, or, when the config has a `pipeline` section, every stage of it in turn (each through `train`)."""
    if cfg.get("pipeline") is None:
        return train(cfg)
    from zephyr_lightning.mini.pipeline import run_pipeline

    return run_pipeline(cfg, train)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run(cfg)
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name!r} was not logged; logged: {sorted(metrics)}")
    value = metrics[name]
    return value if math.isfinite(value) else None


if __name__ == "__main__":
    main()
