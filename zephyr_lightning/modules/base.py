"""What SFT and DPO share: loading the trained model, optimizer and schedule, hyper-parameters, and the
epoch metrics' running totals in checkpoints."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import lightning as L
from torchmetrics import Metric
from transformers import PreTrainedModel

from zephyr_lightning.data.collators import batch_tokens
from zephyr_lightning.metrics import load_metric_states, metric_states
from zephyr_lightning.models import ModelSpec, as_spec
from zephyr_lightning.optim import OptimizerConfig, build_optimizer

log = logging.getLogger(__name__)

# The checkpoint entry holding the training epoch metrics' totals so far (`CausalLMModule.epoch_metrics`).
EPOCH_METRIC_STATES = "epoch_metric_states"


def _epoch_ended(checkpoint: dict[str, Any]) -> bool:
    """Whether the checkpoint was taken after the last batch of an epoch but before the epoch's end (a
    step checkpoint, or a pre-emption, on the last batch): a resumed run starts the next epoch, and the
    saved totals belong to the one that ended."""
    try:
        return bool(checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"])
    except (KeyError, TypeError):
        return False


def as_optimizer_config(optim: OptimizerConfig | dict[str, Any] | None) -> OptimizerConfig:
    if optim is None:
        return OptimizerConfig()
    if isinstance(optim, OptimizerConfig):
        return optim
    return OptimizerConfig(**dict(optim))


class CausalLMModule(L.LightningModule):
    """Base LightningModule owning one trainable causal LM (``self.model``).

    The model is given as a `ModelSpec`, a name/path, or a ready ``transformers`` model. A spec or name
    is loaded in `configure_model`, inside the strategy's initialisation context, so FSDP and
    DeepSpeed can shard it as it is created. Hyper-parameters are saved as plain data (no pickled
    classes), so checkpoints load with ``weights_only=True``; ``model_arg`` is the name the subclass
    gives the model argument (DPO calls it ``policy``).
    """

    def __init__(
        self,
        model: PreTrainedModel | ModelSpec | str | dict[str, Any],
        optim: OptimizerConfig | dict[str, Any] | None = None,
        *,
        model_arg: str = "model",
        **hparams: Any,
    ) -> None:
        super().__init__()
        self.optim = as_optimizer_config(optim)
        if isinstance(model, PreTrainedModel):
            self.model_spec: ModelSpec | None = None
            # from_pretrained hands back eval mode; Lightning does not switch it on for us.
            self.model: PreTrainedModel | None = model.train()
            self.parameter_count(model)
            model_hparam: Any = getattr(model, "name_or_path", None) or type(model).__name__
        else:
            self.model_spec = as_spec(model)
            self.model = None
            model_hparam = self.model_spec.to_dict()
        self.flops_per_batch: float | None = None  # read by Lightning's ThroughputMonitor
        self._ended_epoch: tuple[int, dict[str, Any]] | None = None  # see on_load_checkpoint
        # Saved under the subclass's own argument name, so load_from_checkpoint can call it back.
        self.save_hyperparameters({model_arg: model_hparam, "optim": asdict(self.optim), **hparams})

    @classmethod
    def logged_metrics(cls) -> tuple[str, ...]:
        """Every metric name this module logs (``train/...``, ``val/...``), as loggers and W&B receive it.

        The names a sweep's ``metric.name`` or ``optimized_metric`` may take; each subclass builds its
        ``self.log`` names from the same source, so the list cannot drift from what is logged.
        """
        return ()

    def epoch_metrics(self, stage: str) -> dict[str, Metric]:
        """The torchmetrics objects behind this module's epoch-level metrics of ``stage`` (``train`` or
        ``val``), by the name they are logged under (``train/loss_epoch``)."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning keeps neither torchmetrics states (not persistent) nor its own running epoch values in a
        # checkpoint: without these totals a resumed run's `train/*_epoch` would cover only the batches
        # after the resume. Validation metrics need none: an interrupted validation is run again whole
        # (`zephyr_lightning.callbacks.ValidationRecord`). Every rank gets here (a collective call).
        checkpoint[EPOCH_METRIC_STATES] = metric_states(self.epoch_metrics("train"))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get(EPOCH_METRIC_STATES)
        if states is None:
            return
        if _epoch_ended(checkpoint):
            # Lightning goes on with the next epoch without ending this one: report it at the start.
            self._ended_epoch = (int(checkpoint.get("epoch", 0)), states)
            return
        load_metric_states(self.epoch_metrics("train"), states, holder=self.global_rank == 0)

    def on_train_start(self) -> None:
        if self._ended_epoch is None:
            return
        epoch, states = self._ended_epoch
        self._ended_epoch = None
        metrics = self.epoch_metrics("train")
        load_metric_states(metrics, states, holder=True)  # the totals of the whole job: no reduction
        values = {name: metric.compute() for name, metric in metrics.items()}
        for metric in metrics.values():
            metric.reset()
        self.trainer.callback_metrics.update(values)
        step = self.trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in self.trainer.loggers if self.trainer.is_global_zero else ():
            logger.log_metrics({**{k: float(v) for k, v in values.items()}, "epoch": epoch}, step=step)
        log.info("epoch %d ended at the checkpoint this run resumed from: %s", epoch,
                 ", ".join(f"{k}={float(v):.4f}" for k, v in sorted(values.items())))

    def configure_model(self) -> None:
        # Lightning may call this more than once (fit, then validate/test): build only once.
        if self.model is None:
            self.model = self.model_spec.load_model()
            self.parameter_count(self.model)

    @staticmethod
    def parameter_count(model: PreTrainedModel | None) -> int:
        # Cached on the model: under FSDP the live parameters are shards, so count before wrapping.
        if model is None:
            return 0
        if not hasattr(model, "_zephyr_parameter_count"):
            model._zephyr_parameter_count = sum(p.numel() for p in model.parameters())
        return model._zephyr_parameter_count

    def batch_flops(self, batch: dict[str, Any], training: bool) -> float:
        """Model FLOPs of a batch: 6 x params per trained token (forward + backward), 2 x params per
        token evaluated only. Attention is not counted (the usual MFU convention)."""
        return (6 if training else 2) * self.parameter_count(self.model) * batch_tokens(batch)

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.flops_per_batch = self.batch_flops(batch, training=True)

    def on_validation_batch_start(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.flops_per_batch = self.batch_flops(batch, training=False)

    def configure_optimizers(self) -> dict:
        return build_optimizer(self.model.named_parameters(), self.optim, self.trainer.estimated_stepping_batches)
