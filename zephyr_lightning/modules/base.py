"""What SFT and DPO share: loading the trained model, optimizer and schedule, hyper-parameters, and
checkpoints that hold what training changes and the epoch metrics' running totals."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import lightning as L
from torch import nn
from torchmetrics import Metric
from transformers import PreTrainedModel

from zephyr_lightning import adapters
from zephyr_lightning.arguments import ArgumentError
from zephyr_lightning.data.collators import batch_tokens
from zephyr_lightning.metrics import load_metric_states, metric_states
from zephyr_lightning.models import ModelSpec, as_spec, trained_spec_problem
from zephyr_lightning.optim import OptimizerConfig, build_optimizer

log = logging.getLogger(__name__)

MODEL_PREFIX = "model."

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

    The model is given as a `ModelSpec`, a name/path, or a ready ``transformers`` model (or
    ``peft.PeftModel``). A spec or name is loaded in `configure_model`, inside the strategy's
    initialisation context, so FSDP and DeepSpeed can shard it as it is created. Hyper-parameters are
    saved as plain data (no pickled classes), so checkpoints load with ``weights_only=True``;
    ``model_arg`` is the name the subclass gives the model argument (DPO calls it ``policy``).

    Checkpoints hold what training changes: every weight of the model, or with adapters (LoRA, QLoRA)
    the adapter weights only; frozen weights are rebuilt from the model's source when a run resumes.
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
        if isinstance(model, PreTrainedModel) or adapters.is_peft_model(model):
            self.model_spec: ModelSpec | None = None
            # from_pretrained hands back eval mode; Lightning does not switch it on for us.
            self.model: PreTrainedModel | None = model.train()
            self.parameter_count(model)
            model_hparam: Any = getattr(model, "name_or_path", None) or type(model).__name__
        else:
            self.model_spec = as_spec(model)
            problem = trained_spec_problem(self.model_spec.quantization, self.model_spec.peft, self.model_spec.name_or_path)
            if problem:
                raise ArgumentError([f"model.{problem[0]}={getattr(self.model_spec, problem[0])!r}: {problem[1]}"])
            self.model = None
            model_hparam = self.model_spec.to_dict()
        self.flops_per_batch: float | None = None  # read by Lightning's ThroughputMonitor
        # The state-dict keys a checkpoint keeps when only adapters train (None: every model weight).
        self.adapter_keys: set[str] | None = None
        self._note_adapters()
        # Checkpoints leave frozen weights out (a DPO reference, an adapter run's base): loading accepts
        # their absence, and `on_load_checkpoint` insists on every trained weight instead.
        self.strict_loading = False
        self._ended_epoch: tuple[int, dict[str, Any]] | None = None  # see _load_epoch_metrics
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

    def _save_epoch_metrics(self, checkpoint: dict[str, Any]) -> None:
        # Lightning keeps neither torchmetrics states (not persistent) nor its own running epoch values in a
        # checkpoint: without these totals a resumed run's `train/*_epoch` would cover only the batches
        # after the resume. Validation metrics need none: an interrupted validation is run again whole
        # (`zephyr_lightning.callbacks.ValidationRecord`). Every rank gets here (a collective call).
        checkpoint[EPOCH_METRIC_STATES] = metric_states(self.epoch_metrics("train"))

    def _load_epoch_metrics(self, checkpoint: dict[str, Any]) -> None:
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
            self._note_adapters()

    @property
    def trains_adapters(self) -> bool:
        """Whether only adapters train (the model is a ``peft.PeftModel``, or its spec makes one)."""
        if self.model is not None:
            return adapters.is_peft_model(self.model)
        return self.model_spec is not None and self.model_spec.trains_adapters

    def _note_adapters(self) -> None:
        # Names taken before a strategy wraps the model (FSDP's full state dict uses the same clean names).
        if self.model is not None and adapters.is_peft_model(self.model):
            self.adapter_keys = {MODEL_PREFIX + name for name in adapters.trainable_parameter_names(self.model)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._save_epoch_metrics(checkpoint)
        state = checkpoint.get("state_dict")
        if state is None:
            return
        keep = self.adapter_keys
        for key in [k for k in state if (k not in keep if keep is not None else not k.startswith(MODEL_PREFIX))]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._load_epoch_metrics(checkpoint)
        state = checkpoint.get("state_dict")
        if state is None or self.model is None:
            return
        expected = self.adapter_keys
        if expected is None:
            expected = {MODEL_PREFIX + k for k in self.model.state_dict()}
        missing = sorted(expected - set(state))
        if missing:
            what = "adapter" if self.adapter_keys is not None else "model"
            raise KeyError(f"checkpoint lacks {len(missing)} {what} weights, e.g. {missing[:3]}")
        if self._trainer is None:
            # `load_from_checkpoint` (no Trainer, nothing sharded): the frozen weights were just rebuilt from
            # their source; hand their own tensors back so that loading is a no-op for them and Lightning
            # has no missing keys to warn about. A Trainer restoring a run loads non-strictly without a word.
            state.update({k: v for k, v in self.state_dict().items() if k not in state})

    @staticmethod
    def parameter_count(model: nn.Module | None) -> int:
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
