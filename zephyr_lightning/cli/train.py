"""The train command: compose conf/, instantiate every object, fit.

    zephyr-train +experiment=dpo                     # installed; `python train.py ...` in a checkout
    python train.py +experiment=dpo                  # dDPO on the embedded default
    python train.py +experiment=sft                  # dSFT on the embedded default
    python train.py +experiment=dpo model=zephyr_7b_sft data=ultrafeedback trainer=gpu strategy=fsdp
    python train.py +experiment=dpo hydra.run.dir=DIR resume=true   # continue DIR's newest checkpoint
"""

from __future__ import annotations

import inspect
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from zephyr_lightning.cli.configs import conf_dir, register_signatures
from zephyr_lightning.loggers import announce_offline_run, finish_wandb_run
from zephyr_lightning.resume import resolve_ckpt_path
from zephyr_lightning.secrets import redact, redact_text, redact_yaml_files
from zephyr_lightning.sweeps.trials import (
    COMPLETED,
    FAILED,
    TrainingDiverged,
    TrialResult,
    nonfinite_losses,
    optimized_value,
    write_result,
)
from zephyr_lightning.validation import check_config

log = logging.getLogger("train")
register_signatures()  # before hydra.main composes: config files take their defaults from the signatures


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a dict-of-objects group (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v.numel() == 1}


def _checkpoint_dir(callbacks: list[Any], cfg: DictConfig) -> Path:
    """Where this run's checkpoints go (and where `resume` looks)."""
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath)
    return Path(cfg.paths.output_dir) / "checkpoints"


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one training job from a composed config; return the final logged metrics.

    Raises `TrainingDiverged` when a final loss is NaN or infinite. The job's W&B run is finished before
    this returns or raises (marked failed on an error), so the next job of a multirun starts its own.
    """
    if cfg.get("module") is None:
        raise ValueError("no `module` in the config: choose a stage with +experiment=dpo or +experiment=sft")
    plain = OmegaConf.to_container(cfg, resolve=True)
    # every bad value at once, before a tokenizer, data set or model is loaded
    check_config(plain, OmegaConf.to_container(cfg, resolve=False))
    L.seed_everything(cfg.seed, workers=True)

    callbacks = _instantiate_group(cfg.get("callbacks"))
    validations = _ValidationSteps()
    callbacks.append(validations)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.get("resume", False), _checkpoint_dir(callbacks, cfg))
    if ckpt_path is not None:  # a resumed run writes into its own checkpoint folder: that is expected
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    try:
        datamodule = instantiate(cfg.data, _convert_="all")
        module = instantiate(cfg.module, _convert_="all")
        loggers = _instantiate_group(cfg.get("logger"))
        trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

        hyperparameters = redact(plain)  # what loggers (and so W&B's config) receive: no credentials
        for logger in loggers:
            logger.log_hyperparams(hyperparameters)
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                announce_offline_run(logger)

        # weights_only: a checkpoint holds tensors and plain data only; loading never runs pickled code
        # (Lightning < 2.5 has no such argument; SafeCheckpointIO in conf/trainer enforces it there too).
        safe = {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, **safe)
        metrics = _scalars(trainer.callback_metrics)
        if validations.stale(trainer, datamodule):
            # Training ended after the last validation (max_steps, or no validation in the last epoch):
            # the final model's validation metrics are what a user (and a sweep) reads.
            log.info("final validation at step %d", trainer.global_step)
            trainer.validate(module, datamodule=datamodule, verbose=False)
            metrics.update(_scalars(trainer.callback_metrics))
        if trainer.is_global_zero:
            log.info("final metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
            log.info("run folder: %s", cfg.paths.output_dir)
        diverged = nonfinite_losses(metrics)
        if diverged:
            raise TrainingDiverged(
                "training diverged: " + ", ".join(f"{k}={v}" for k, v in sorted(diverged.items())), metrics
            )
    except BaseException:
        finish_wandb_run(failed=True)
        raise
    finish_wandb_run()
    return metrics


class _ValidationSteps(L.Callback):
    """Remembers the optimizer step of the last finished validation, so `train` knows whether the final
    weights were validated."""

    def __init__(self) -> None:
        self.last_step = -1

    def state_dict(self) -> dict[str, int]:
        return {"last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.last_step = int(state_dict.get("last_step", -1))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.last_step = trainer.global_step

    def stale(self, trainer: L.Trainer, datamodule: L.LightningDataModule) -> bool:
        """True when the weights at the end of fit were never validated (and there is something to validate)."""
        if trainer.state.status != TrainerStatus.FINISHED or trainer.limit_val_batches == 0:
            return False
        loaders = datamodule.val_dataloader()
        return bool(loaders) and trainer.global_step > self.last_step


def _record(cfg: DictConfig, result: TrialResult) -> None:
    if rank_zero_only.rank == 0:
        write_result(cfg.paths.output_dir, result)


def _redact_hydra_outputs() -> None:
    """Hydra has written the config and the command line (``.hydra/``, ``multirun.yaml``) before
    calling `main`; blank any credential a user put there, and in ``sys.argv`` (W&B records it)."""
    hydra_cfg = HydraConfig.get()
    folders = []
    if hydra_cfg.output_subdir is not None:
        folders.append(Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        folders.append(Path(hydra_cfg.sweep.dir))
    for folder in folders:
        redact_yaml_files(folder)
    sys.argv[:] = [redact_text(arg) for arg in sys.argv]


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train; return the value of `optimized_metric` for a sweeper, or None when the run failed.

    Every run writes `result.json` into its run folder (status, metric, final metrics, error, overrides).
    Under a multirun a failure (an exception, a NaN loss) is logged with its traceback, recorded there and
    answered with None, which Hydra's Optuna sweeper records as a failed trial before going on; a single
    run re-raises (exit code 1: W&B's agent marks the run failed). None and not NaN: Optuna 2.10, under
    hydra-optuna-sweeper 1.3, raises on a NaN value, which would end the whole sweep.
    """
    _redact_hydra_outputs()
    hydra_cfg = HydraConfig.get()
    wandb_cfg = OmegaConf.select(cfg, "logger.wandb")
    result = TrialResult(
        status=FAILED,
        optimized_metric=cfg.get("optimized_metric"),
        overrides=[redact_text(o) for o in hydra_cfg.overrides.task],  # no credentials in result.json
        wandb_group=wandb_cfg.get("group") if wandb_cfg is not None else None,
    )
    try:
        result.metrics = train(cfg)
        if result.optimized_metric:
            if result.optimized_metric in result.metrics or hydra_cfg.mode == RunMode.MULTIRUN:
                result.value = optimized_value(result.metrics, result.optimized_metric)
            else:  # a single run that trained is a success; only a sweep needs the number
                result.warnings.append(f"optimized_metric={result.optimized_metric!r} was not logged; logged: "
                                       f"{sorted(result.metrics)}")
                log.warning("%s", result.warnings[-1])
    except Exception as error:
        result.error = redact_text(f"{type(error).__name__}: {error}")
        result.metrics = result.metrics or getattr(error, "metrics", {})
        _record(cfg, result)
        if hydra_cfg.mode != RunMode.MULTIRUN:
            raise
        log.exception("trial failed (recorded in %s); the sweep goes on", cfg.paths.output_dir)
        return None
    result.status = COMPLETED
    _record(cfg, result)
    return result.value


if __name__ == "__main__":
    main()
