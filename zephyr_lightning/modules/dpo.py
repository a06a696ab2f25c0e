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

from zephyr_lightning import adapters
from zephyr_lightning.arguments import check_arguments, cross_check
from zephyr_lightning.data.collators import batch_tokens
from zephyr_lightning.logprobs import PairLogps, pair_logprobs
from zephyr_lightning.losses import Beta, LabelSmoothing, LossType, dpo_loss, label_smoothing_rule
from zephyr_lightning.models import DType, ModelSpec, as_spec
from zephyr_lightning.modules.base import CausalLMModule
from zephyr_lightning.optim import OptimizerConfig

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
PRECOMPUTED = ("reference_chosen_logps", "reference_rejected_logps")


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


def _shared_reference_dtype_rule(arguments: dict) -> tuple[str, str] | None:
    """A reference that shares the policy's weights (adapters off) has the policy's dtype."""
    policy = arguments.get("policy")
    peft = policy.get("peft") if isinstance(policy, dict) else getattr(policy, "peft", None)
    shared = peft is not None and arguments.get("reference") is None and not arguments.get("precompute_reference")
    if shared and arguments.get("reference_dtype") is not None and not arguments.get("reference_free"):
        return "reference_dtype", ("the reference is the policy's own base with its adapters disabled (model.peft), "
                                   "so it has the policy's dtype: leave it null")
    return None


@cross_check(label_smoothing_rule, _shared_reference_dtype_rule)
class DPOModule(CausalLMModule):
    """DPO (Rafailov et al. 2023) as in Zephyr's dDPO stage.

    Args:
        policy: the model to train: a `ModelSpec` (with ``peft`` and ``quantization`` for LoRA and QLoRA),
            a hub name or local folder, or a ``transformers`` causal LM or ``peft.PeftModel``.
        reference: the frozen reference model. ``None`` is the policy's own starting point (the usual
            case: the dSFT model the policy starts from): rebuilt from the policy's source, or, when the
            policy trains adapters, no second model at all (see below); a spec/name loads another model;
            a ready model is used as is. Unused with ``reference_free=True``.
        reference_dtype: the dtype of a reference rebuilt from the policy's source (``None``: the
            policy's). The reference is never updated, so ``bfloat16`` halves its memory at no cost to
            the policy's fp32 master weights. Refused when the reference shares the policy's weights.
        beta: strength of the KL constraint (paper: 0.1; alignment handbook: 0.01).
        loss_type: ``sigmoid`` (DPO), ``ipo`` or ``hinge``; see `dpo_loss`.
        label_smoothing: cDPO's assumed label-noise rate (sigmoid loss only).
        reference_free: compare against a uniform reference (log-probs 0) instead of a model.
        precompute_reference: run the reference once over the DataModule's splits before training,
            store its log-probs on disk (``reference_cache_dir``, default ``~/.cache/zephyr_lightning/
            reference_logps``), reuse them in later runs with the same reference and data, and never
            load the reference during training (`zephyr_lightning.callbacks.PrecomputedReference`, which
            this module adds to the Trainer). Needs a `PreferenceDataModule`.
        optim: optimizer and schedule (paper: lr 5e-7, linear, 10% warmup).

    The reference is frozen (``requires_grad_(False)``, always in eval mode), kept out of the
    optimizer and out of checkpoints, and rebuilt from its source when a run resumes. It is a
    registered submodule so that it moves and shards with the policy.

    When the policy trains adapters (``ModelSpec(peft=LoraConfig(...))``, an adapter folder, or a ready
    ``PeftModel``) and ``reference`` is None, the reference shares the policy's weights: a new adapter's
    starting point is the base, so the reference pass runs the policy with its adapters disabled; an
    adapter the policy already had is its starting point, so a frozen copy of it is loaded as a second
    adapter on the same base (`zephyr_lightning.adapters`). One copy of the base either way. With
    ``precompute_reference`` the starting point is loaded once, before training, to compute the log-probs.
    """

    def __init__(
        self,
        policy: PreTrainedModel | ModelSpec | str | dict[str, Any],
        reference: PreTrainedModel | ModelSpec | str | dict[str, Any] | None = None,
        *,
        reference_dtype: DType | None = None,
        beta: Beta = 0.1,
        loss_type: LossType = "sigmoid",
        label_smoothing: LabelSmoothing = 0.0,
        reference_free: bool = False,
        precompute_reference: bool = False,
        reference_cache_dir: str | None = None,
        optim: OptimizerConfig | dict[str, Any] | None = None,
    ) -> None:
        check_arguments(DPOModule, locals(), prefix="module")
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
            reference_dtype=reference_dtype,
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
        # The reference pass runs the policy itself (adapters off, or its frozen starting adapter).
        self.reference_shares_policy = False
        if not reference_free:
            if isinstance(reference, PreTrainedModel):
                self._set_reference(reference)
            elif reference is not None:
                self.reference_spec = reference
            elif self.trains_adapters:
                self.reference_shares_policy = not self.precompute_reference
                if self.model_spec is not None:  # what a precomputed reference loads: the starting point
                    self.reference_spec = self.model_spec.without_adapters().with_dtype(reference_dtype)
            elif self.model_spec is not None:
                self.reference_spec = self.model_spec.with_dtype(reference_dtype)
            else:
                # A policy given as a ready model: its current weights are the reference.
                self._set_reference(copy.deepcopy(self.model))
        if self.reference_shares_policy and self.model is not None:
            adapters.add_reference_adapter(self.model)  # a ready PeftModel: its adapter is the start
        # Attribute names, not a ModuleDict keyed by stage: "train" would shadow Module.train.
        self.train_metrics = _metric_set()
        self.val_metrics = _metric_set()

    @property
    def policy(self) -> PreTrainedModel | None:
        return self.model

    @classmethod
    def logged_metrics(cls) -> tuple[str, ...]:
        return tuple(name for stage in ("train", "val") for metric in METRICS
                     for name in logged_names(stage, metric) if name is not None)

    def epoch_metrics(self, stage: str) -> dict[str, torchmetrics.Metric]:
        metrics = self.train_metrics if stage == "train" else self.val_metrics
        return {logged_names(stage, name)[1]: metric for name, metric in metrics.items()}

    # ---- the step -------------------------------------------------------------------------------

    def preference_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Per-pair loss and TRL's statistics for a batch: one forward pass of the policy and, unless
        the reference's log-probs are precomputed or the reference is uniform, one of the reference."""
        policy = pair_logprobs(self.model, batch)
        reference = self.reference_logps(batch, policy)
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            policy.chosen,
            policy.rejected,
            reference.chosen,
            reference.rejected,
            beta=self.beta,
            loss_type=self.loss_type,
            label_smoothing=self.label_smoothing,
            chosen_lengths=policy.chosen_tokens,
            rejected_lengths=policy.rejected_tokens,
        )
        return {
            "loss": losses,
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            # Strictly greater: a policy equal to its reference scores 0, not 0.5.
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "logps/chosen": policy.chosen.detach(),
            "logps/rejected": policy.rejected.detach(),
        }

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        values = self.preference_step(batch)
        self._log_stage("train", values)
        return values["loss"].mean()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._log_stage("val", self.preference_step(batch))

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, Any], policy: PairLogps) -> PairLogps:
        """The reference's log-probs of the batch: precomputed ones when the batch carries them, zeros for
        a uniform reference (``reference_free``), else a forward pass of the frozen reference."""
        if PRECOMPUTED[0] in batch:
            return policy._replace(chosen=batch[PRECOMPUTED[0]], rejected=batch[PRECOMPUTED[1]])
        if self.reference_free:
            return policy._replace(chosen=torch.zeros_like(policy.chosen), rejected=torch.zeros_like(policy.rejected))
        if self.reference_shares_policy:
            with adapters.reference_forward(self.model):
                return pair_logprobs(self.model, batch)
        if self.reference is None:
            raise RuntimeError("the reference model is not loaded and the batch carries no precomputed reference log-probs")
        return pair_logprobs(self.reference, batch)

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

    # ---- the reference model --------------------------------------------------------------------

    def _set_reference(self, model: PreTrainedModel) -> None:
        self.parameter_count(model)
        model.requires_grad_(False)
        model.eval()
        self.reference = model

    def configure_model(self) -> None:
        built = self.model is None
        super().configure_model()
        if built and self.reference_shares_policy and self.model_spec.peft is None:
            # The policy continues an adapter folder: that adapter, as loaded, is the starting point.
            adapters.add_reference_adapter(self.model)
        if self.reference_shares_policy:
            return
        if self.reference is None and self.reference_spec is not None and not self.precompute_reference:
            self._set_reference(self.reference_spec.load_model())

    def configure_callbacks(self) -> list:
        if not self.precompute_reference:
            return []
        from zephyr_lightning.callbacks.reference_logps import PrecomputedReference

        return [PrecomputedReference(self.reference_cache_dir)]

    def train(self, mode: bool = True) -> DPOModule:
        # Lightning toggles train/eval around validation on the whole module; the reference must stay
        # in eval mode throughout (no dropout in the reference's log-probs).
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    def batch_flops(self, batch: dict[str, Any], training: bool) -> float:
        # The live reference adds one forward pass (2 x its params per token).
        live = (self.reference is not None or self.reference_shares_policy) and PRECOMPUTED[0] not in batch
        reference_model = self.model if self.reference_shares_policy else self.reference
        reference = 2 * self.parameter_count(reference_model) * batch_tokens(batch) if live else 0
        return super().batch_flops(batch, training) + reference

    # ---- Lightning hooks ------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        # Lightning warns about every module in eval mode at the start of training; the reference is
        # meant to be, so silence that warning unless something else (the policy) is in eval mode too.
        stray = [n for n, m in self.named_modules() if not m.training and not n.startswith("reference")]
        if self.reference is not None and not stray:
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)
