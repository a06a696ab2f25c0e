"""Stop (or skip the step) when a training loss or gradient is NaN or infinite, before it reaches the weights."""

from __future__ import annotations

import logging
from typing import Any, Literal, get_args

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from zephyr_lightning.arguments import PositiveInt, check_arguments

log = logging.getLogger(__name__)

Mode = Literal["stop", "skip"]
MODES: tuple[str, ...] = get_args(Mode)


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient stopped training; the message names the step and the batch."""


class NonFiniteGuard(L.Callback):
    """Checks the loss of every micro-batch and the gradients of every optimizer step.

    The gradient check runs in ``on_before_optimizer_step``, after backward and before clipping and
    the update, so a bad step never touches the weights:

    - ``mode="stop"``: raise `NonFiniteError` naming the optimizer step and the batch's ``prompt_id``s.
      No checkpoint is written after the bad step, so the newest checkpoint is the last good state.
    - ``mode="skip"``: drop the step's gradients (the optimizer then leaves weights and its moments
      untouched), count it in ``train/skipped_steps`` and a warning, and go on. The LR schedule still
      advances (the step counts as taken). More than ``max_consecutive_skips`` bad steps in a row stop
      the run as in ``stop`` mode: the model has diverged rather than met a bad batch.

    Also logs ``train/grad_norm`` (the global L2 norm before clipping; under sharded strategies, of
    this rank's shard). With ``precision=16-mixed`` the gradient scaler already skips overflowing steps,
    so only the loss is checked there.

    Args:
        mode: ``stop`` or ``skip``.
        check_gradients: also check the gradients (one fused norm per step).
        max_consecutive_skips: in ``skip`` mode, stop after this many bad steps in a row.
        log_grad_norm: log ``train/grad_norm``.
    """

    def __init__(
        self,
        mode: Mode = "stop",
        check_gradients: bool = True,
        max_consecutive_skips: PositiveInt = 10,
        log_grad_norm: bool = True,
    ) -> None:
        check_arguments(NonFiniteGuard, locals(), prefix="callbacks.nonfinite_guard")
        self.mode = mode
        self.check_gradients = check_gradients
        self.max_consecutive_skips = max_consecutive_skips
        self.log_grad_norm = log_grad_norm
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self._loss_finite: torch.Tensor | None = None
        self._prompt_ids: list[Any] = []
        self._step_done = True

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps, "consecutive_skips": self.consecutive_skips}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.consecutive_skips = int(state_dict.get("consecutive_skips", 0))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._step_done:  # the first micro-batch of an optimizer step
            self._prompt_ids, self._loss_finite, self._step_done = [], None, False
        if isinstance(batch, dict):
            self._prompt_ids.extend(batch.get("prompt_id", []))

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        # Kept as a tensor: no device sync until the one check per optimizer step.
        finite = torch.isfinite(loss.detach()).all()
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self._step_done = True
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        scaler_handles_grads = isinstance(trainer.precision_plugin, MixedPrecision) and trainer.precision_plugin.scaler is not None
        grad_norm = None
        if grads and (self.check_gradients or self.log_grad_norm):
            # A norm is NaN or inf exactly when some element is, so one fused reduction checks everything.
            grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)).float(), 2.0)
        loss_ok = bool(self._loss_finite) if self._loss_finite is not None else True
        grads_ok = True
        if self.check_gradients and not scaler_handles_grads and grad_norm is not None:
            grads_ok = bool(torch.isfinite(grad_norm))
        bad = trainer.strategy.reduce_boolean_decision(not (loss_ok and grads_ok), all=False)
        if self.log_grad_norm and grad_norm is not None and grads_ok:
            pl_module.log("train/grad_norm", grad_norm, on_step=True, on_epoch=False)
        if not bad:
            self.consecutive_skips = 0
            return
        what = " and ".join(w for w, ok in (("loss", loss_ok), ("gradient", grads_ok)) if not ok) or "loss or gradient (on another rank)"
        step = trainer.global_step + 1
        where = (f"non-finite {what} at optimizer step {step} (epoch {trainer.current_epoch}); "
                 f"batch prompt_ids: {self._prompt_ids}")
        if self.mode == "stop":
            raise NonFiniteError(
                f"{where}. The step was not applied and no checkpoint was written after it: the newest checkpoint "
                "is the last good state. Check these rows, lower optim.lr, or set "
                "callbacks.nonfinite_guard.mode=skip to skip such steps."
            )
        self.consecutive_skips += 1
        if self.consecutive_skips > self.max_consecutive_skips:
            raise NonFiniteError(
                f"{where}; {self.consecutive_skips} bad steps in a row (max_consecutive_skips="
                f"{self.max_consecutive_skips}): training has diverged. The newest checkpoint is the last good state."
            )
        # Without gradients AdamW leaves every parameter and its moments as they were.
        optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        log.warning("%s: step skipped (%d skipped so far)", where, self.skipped_steps)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.mode == "skip" and self._step_done:
            pl_module.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False, reduce_fx="max")
