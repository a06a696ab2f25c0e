"""dDPO: direct preference optimisation of a policy against a frozen reference model."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torchmetrics
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from transformers import PreTrainedModel

from zephyr_lightning.data.collators import batch_tokens
from zephyr_lightning.logprobs import pair_logprobs
from zephyr_lightning.losses import LOSS_TYPES, dpo_loss
from zephyr_lightning.models import ModelSpec, as_spec
from zephyr_lightning.modules.base import CausalLMModule
from zephyr_lightning.optim import OptimizerConfig
from zephyr_lightning.reference import ReferenceLogpsStore, attach_reference_logps

# TRL's names, so runs compare with what users know.
METRICS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)
PROGRESS_BAR = ("loss", "rewards/accuracies")
REFERENCE_PREFIX = "reference."


def logged_names(stage: str, metric: str) -> tuple[str | None, str]:
    """The names under which `metric` of `stage` is logged: (per-step name or None, epoch name).

    Training logs each step's value as ``train/<metric>`` and the epoch mean as ``train/<metric>_epoch``;
    validation logs the epoch mean only, as ``val/<metric>``.
    """
    if stage == "train":
        return f"train/{metric}", f"train/{metric}_epoch"
    return None, f"{stage}/{metric}"


def _metric_set() -> nn.ModuleDict:
    # ModuleDict keys cannot contain "."; "/" is allowed and keeps the logged names.
    return nn.ModuleDict({name: torchmetrics.MeanMetric() for name in METRICS})


class DPOModule(CausalLMModule):
    """DPO (Rafailov et al. 2023) as in Zephyr's dDPO stage.

    Args:
        policy: the model to train: a `ModelSpec`, a hub name or local folder, or a ``transformers``
            causal LM.
        reference: the frozen reference model. ``None`` rebuilds it from the policy's source (the usual
            case: reference = the dSFT model the policy starts from); a spec/name loads another model;
            a ready model is used as is. Unused with ``reference_free=True``.
        beta: strength of the KL constraint (paper: 0.1; alignment handbook: 0.01).
        loss_type: ``sigmoid`` (DPO), ``ipo`` or ``hinge``; see `dpo_loss`.
        label_smoothing: cDPO's assumed label-noise rate (sigmoid loss only).
        reference_free: compare against a uniform reference instead of a model.
        precompute_reference: run the reference once over the DataModule's splits before training,
            store its log-probs on disk (``reference_cache_dir``, default ``~/.cache/zephyr_lightning/
            reference_logps``), reuse them in later runs with the same reference and data, and never
            load the reference during training. Needs a DataModule with ``datasets`` and ``collator``
            (`PreferenceDataModule`).
        optim: optimizer and schedule (paper: lr 5e-7, linear, 10% warmup).

    The reference is frozen (``requires_grad_(False)``, always in eval mode), kept out of the
    optimizer and out of checkpoints, and rebuilt from its source when a run resumes. It is a
    registered submodule so that it moves and shards with the policy.
    """

    def __init__(
        self,
        policy: PreTrainedModel | ModelSpec | str | dict[str, Any],
        reference: PreTrainedModel | ModelSpec | str | dict[str, Any] | None = None,
        *,
        beta: float = 0.1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        reference_free: bool = False,
        precompute_reference: bool = False,
        reference_cache_dir: str | None = None,
        optim: OptimizerConfig | dict[str, Any] | None = None,
    ) -> None:
        if not beta > 0:
            raise ValueError(f"module.beta must be > 0, got {beta}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"module.loss_type={loss_type!r} is not one of {list(LOSS_TYPES)}")
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"module.label_smoothing must be in [0, 0.5), got {label_smoothing}")
        if isinstance(reference, PreTrainedModel):
            reference_hparam: Any = getattr(reference, "name_or_path", None) or type(reference).__name__
        elif reference is not None:
            reference = as_spec(reference)
            reference_hparam = reference.to_dict()
        else:
            reference_hparam = None
        super().__init__(
            policy,
            optim,
            model_arg="policy",
            reference=reference_hparam,
            beta=beta,
            loss_type=loss_type,
            label_smoothing=label_smoothing,
            reference_free=reference_free,
            precompute_reference=precompute_reference,
            reference_cache_dir=reference_cache_dir,
        )
        self.beta = beta
        self.loss_type = loss_type
        self.label_smoothing = label_smoothing
        self.reference_free = reference_free
        self.precompute_reference = precompute_reference and not reference_free
        self.reference_cache_dir = reference_cache_dir
        self.reference_spec: ModelSpec | None = None
        self.reference: PreTrainedModel | None = None
        if not reference_free:
            if isinstance(reference, PreTrainedModel):
                self._set_reference(reference)
            elif reference is not None:
                self.reference_spec = reference
            elif self.model_spec is not None:
                self.reference_spec = self.model_spec
            else:
                # A policy given as a ready model: its current weights are the reference.
                self._set_reference(copy.deepcopy(self.model))
        # Checkpoints hold the policy only, so loading them must accept the missing reference keys
        # (`on_load_checkpoint` still insists on every policy key).
        self.strict_loading = False
        # Attribute names, not a ModuleDict keyed by stage: "train" would shadow Module.train.
        self.train_metrics = _metric_set()
        self.val_metrics = _metric_set()

    @property
    def policy(self) -> PreTrainedModel | None:
        return self.model

    def _set_reference(self, model: PreTrainedModel) -> None:
        self.parameter_count(model)
        model.requires_grad_(False)
        model.eval()
        self.reference = model

    def configure_model(self) -> None:
        super().configure_model()
        if self.reference is None and self.reference_spec is not None and not self.precompute_reference:
            self._set_reference(self.reference_spec.load_model())

    def setup(self, stage: str) -> None:
        if self.precompute_reference:
            self._attach_reference_logps()

    def _attach_reference_logps(self) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "datasets") or not hasattr(datamodule, "collator"):
            raise TypeError("precompute_reference=True needs a DataModule with `datasets` and `collator` "
                            "(e.g. PreferenceDataModule)")
        if all("reference_chosen_logps" in d.column_names for d in datamodule.datasets.values()):
            return
        source = self.reference if self.reference is not None else self.reference_spec
        trainer = self.trainer
        datamodule.datasets.update(
            attach_reference_logps(
                datamodule.datasets,
                datamodule.collator,
                source,
                store=ReferenceLogpsStore(self.reference_cache_dir),
                batch_size=getattr(datamodule, "eval_batch_size", None) or 8,
                device=trainer.strategy.root_device,
                rank=trainer.global_rank,
                world_size=trainer.world_size,
                barrier=trainer.strategy.barrier,
                prepare_model=trainer.precision_plugin.convert_module,
                forward_context=trainer.precision_plugin.forward_context,
            )
        )
        # The numbers are all training needs: free a reference that was handed in as a model.
        self.reference = None

    def train(self, mode: bool = True) -> DPOModule:
        # Lightning toggles train/eval around validation on the whole module; the reference must stay
        # in eval mode throughout (no dropout in the reference's log-probs).
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    def batch_flops(self, batch: dict[str, Any], training: bool) -> float:
        # The live reference adds one forward pass (2 x its params per token).
        reference = 0 if "reference_chosen_logps" in batch else 2 * self.parameter_count(self.reference) * batch_tokens(batch)
        return super().batch_flops(batch, training) + reference

    def on_fit_start(self) -> None:
        # Lightning warns about every module in eval mode at the start of training; the reference is
        # meant to be, so silence that warning unless something else (the policy) is in eval mode too.
        stray = [n for n, m in self.named_modules() if not m.training and not n.startswith("reference")]
        if self.reference is not None and not stray:
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is not None:
            for key in [k for k in state if k.startswith(REFERENCE_PREFIX)]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is None or self.model is None:
            return
        expected = {f"model.{k}" for k in self.model.state_dict()}
        missing = sorted(expected - set(state))
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} policy weights, e.g. {missing[:3]}")
        if self.reference is not None:
            # The reference was just rebuilt from its source; hand its own tensors back so that loading
            # is a no-op for it and Lightning has no missing keys to warn about.
            state.update(self.reference.state_dict(prefix=REFERENCE_PREFIX))

    def policy_logps(self, batch: dict[str, Any]) -> Tensor:
        return pair_logprobs(self.model, batch)

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, Any]) -> Tensor:
        """Reference log-probs of chosen then rejected: precomputed ones from the batch when present."""
        if "reference_chosen_logps" in batch:
            return torch.cat([batch["reference_chosen_logps"], batch["reference_rejected_logps"]])
        if self.reference_free:
            return torch.zeros(2 * len(batch["prompt_id"]), device=self.device)
        return pair_logprobs(self.reference, batch)

    def compute(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Per-pair loss and TRL-style statistics for a batch (one forward pass per model)."""
        pairs = len(batch["prompt_id"])
        policy = self.policy_logps(batch)
        reference = self.reference_logps(batch)
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            policy[:pairs],
            policy[pairs:],
            reference[:pairs],
            reference[pairs:],
            beta=self.beta,
            loss_type=self.loss_type,
            label_smoothing=self.label_smoothing,
            reference_free=self.reference_free,
        )
        return {
            "loss": losses,
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            # Strictly greater: a policy equal to its reference scores 0, not 0.5.
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "logps/chosen": policy[:pairs].detach(),
            "logps/rejected": policy[pairs:].detach(),
        }

    @classmethod
    def logged_metrics(cls) -> tuple[str, ...]:
        return tuple(name for stage in ("train", "val") for metric in METRICS
                     for name in logged_names(stage, metric) if name is not None)

    def _log_stage(self, stage: str, values: dict[str, Tensor]) -> None:
        pairs = values["loss"].shape[0]
        for name, value in values.items():
            metric = (self.train_metrics if stage == "train" else self.val_metrics)[name]
            metric.update(value.detach())
            step_name, epoch_name = logged_names(stage, name)
            if step_name is not None:
                self.log(step_name, value.detach().mean(), on_step=True, on_epoch=False,
                         prog_bar=name in PROGRESS_BAR, batch_size=pairs)
            # Epoch values come from torchmetrics, which sums across devices before dividing.
            self.log(epoch_name, metric, on_step=False, on_epoch=True,
                     prog_bar=step_name is None and name in PROGRESS_BAR, batch_size=pairs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        values = self.compute(batch)
        self._log_stage("train", values)
        return values["loss"].mean()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._log_stage("val", self.compute(batch))
