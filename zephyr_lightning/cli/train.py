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
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from zephyr_lightning.atomic import remove_stale_staging
from zephyr_lightning.callbacks import Preempted, ValidationRecord
from zephyr_lightning.cli.app import hydra_command
from zephyr_lightning.cli.configs import register_signatures
from zephyr_lightning.loggers import announce_offline_run, finish_wandb_run
from zephyr_lightning.plan import GIB, ShapeUnknown, plan_from_config, tokens_note
from zephyr_lightning.resume import resolve_ckpt_path
from zephyr_lightning.secrets import redact, redact_text
from zephyr_lightning.sweeps.trials import (
    COMPLETED,
    FAILED,
    PREEMPTED,
    TrainingDiverged,
    TrialResult,
    nonfinite_losses,
    optimized_value,
    write_result,
)
from zephyr_lightning.validation import check_config, runs_on_cuda

log = logging.getLogger("train")
register_signatures()  # before hydra.main composes: config files take their defaults from the signatures
# A plan this much above the GPU's memory is refused (the plan counts every sequence at max_length, so a
# run somewhat above it may still fit its real batches; memory_check=false runs it anyway).
REFUSE_ABOVE = 1.25


class MemoryPlanError(RuntimeError):
    """The memory planner says the run cannot fit on its GPU."""


def _check_memory(cfg: dict[str, Any]) -> None:
    """Log the memory plan per device; on CUDA, refuse a run that exceeds the GPU by a clear margin."""
    try:
        plan = plan_from_config(cfg)
    except ShapeUnknown as error:
        log.info("memory plan: unavailable (%s)", error)
        return
    log.info("memory plan per device (%s):\n%s", tokens_note(cfg), plan.describe())
    if not runs_on_cuda(cfg) or cfg.get("memory_check") is False:
        return
    import torch

    capacity = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    if plan.total > REFUSE_ABOVE * capacity:
        parts = ", ".join(f"{name} {value / GIB:.1f}" for name, value in plan.components.items() if value)
        raise MemoryPlanError(
            f"this run needs about {plan.total / GIB:.1f} GiB per device ({parts} GiB) and the GPU has "
            f"{capacity / GIB:.1f} GiB. Lower data.batch_size or data.max_length, set model.gradient_checkpointing=true, "
            "train adapters (model/peft=lora, model.quantization=4bit) or shard over more GPUs (strategy=fsdp "
            "trainer.devices=N); memory_check=false runs it anyway. `python -m zephyr_lightning.plan <the same "
            "overrides>` shows the plan."
        )


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
    _check_memory(plain)
    L.seed_everything(cfg.seed, workers=True)

    callbacks = _instantiate_group(cfg.get("callbacks"))
    validations = ValidationRecord()  # re-runs an interrupted validation; tells whether the end was validated
    callbacks.append(validations)
    if rank_zero_only.rank == 0:  # what a killed run left half-written here: never read back
        remove_stale_staging(cfg.paths.output_dir)
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
            # Training ended after the last validation and Lightning could not validate inside fit (validation
            # only every N epochs): the final model's validation metrics are what a user (and a sweep) reads.
            log.info("final validation at step %d (after the export: its model card has the earlier metrics)",
                     trainer.global_step)
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


def _record(cfg: DictConfig, result: TrialResult) -> None:
    if rank_zero_only.rank == 0:
        write_result(cfg.paths.output_dir, result)


@hydra_command(config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train; return the value of `optimized_metric` for a sweeper, or None when the run failed.

    Every run writes `result.json` into its run folder (status, metric, final metrics, error, overrides).
    Under a multirun a failure (an exception, a NaN loss) is logged with its traceback, recorded there and
    answered with None, which Hydra's Optuna sweeper records as a failed trial before going on; a single
    run re-raises (exit code 1: W&B's agent marks the run failed). None and not NaN: Optuna 2.10, under
    hydra-optuna-sweeper 1.3, raises on a NaN value, which would end the whole sweep.

    A run stopped by SIGTERM/SIGUSR1 after saving its checkpoint records status ``preempted`` and exits
    with 128 + the signal number. `hydra_command` (`zephyr_lightning.cli.app`) keeps credentials out of
    everything the run writes and prints user errors as one message.
    """
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
    except Preempted as stop:
        result.status, result.error = PREEMPTED, str(stop)
        _record(cfg, result)
        raise
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
