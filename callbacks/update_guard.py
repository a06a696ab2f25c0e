"""Warn, loudly and once, when optimizer steps do not change the weights they should (updates rounded away)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import lightning as L
import torch
from pydantic import Field

from zephyr_lightning.arguments import PositiveInt, check_arguments
from zephyr_lightning.precision import ParameterSample, changed_share, sample_parameters

log = logging.getLogger(__name__)

METRIC = "train/updated_share"


class UpdateGuard(L.Callback):
    """Measure, over the first ``steps`` optimizer steps that have a learning rate above 0, the share of
    trainable weight elements that changed among those a float32 update of that size would change.

    Every such element should move (AdamW's first steps move each weight with a gradient by about lr).
    A share below ``min_share`` means the updates round away in the parameters' dtype (bf16 weights at
    lr 5e-7): the run would go on for hours and barely train. The guard then logs one warning naming
    the parameters' dtype, the precision, the learning rate and the fix. The share is logged as
    ``train/updated_share`` at each measured step. Elements are sampled (``per_tensor`` per parameter),
    so the check costs a few kilobytes and no extra pass; under sharded strategies each rank samples its
    shard and the counts are summed.
    """

    def __init__(
        self,
        steps: PositiveInt = 3,
        min_share: Annotated[float, Field(gt=0, le=1)] = 0.5,
        per_tensor: PositiveInt = 4096,
    ) -> None:
        check_arguments(UpdateGuard, locals(), prefix="callbacks.update_guard")
        self.steps = steps
        self.min_share = min_share
        self.per_tensor = per_tensor
        self.measured = 0
        self.warned = False
        self.shares: list[float] = []
        self._pending: ParameterSample | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"measured": self.measured, "warned": self.warned}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.measured = int(state_dict.get("measured", 0))
        self.warned = bool(state_dict.get("warned", False))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self.measured >= self.steps:
            return
        lr = max(group["lr"] for group in optimizer.param_groups)
        if lr <= 0:  # the first warmup step of transformers' schedules has lr 0: nothing should move
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self._pending = sample_parameters(params, lr, self.per_tensor)
        self._lr = lr

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._pending is None:
            return
        sample, self._pending = self._pending, None
        changed, expected = changed_share(sample)
        counts = torch.tensor([changed, expected], dtype=torch.float64, device=pl_module.device)
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
        changed, expected = float(counts[0]), float(counts[1])
        if expected == 0:
            return
        self.measured += 1
        share = changed / expected
        self.shares.append(share)
        pl_module.log(METRIC, share, on_step=True, on_epoch=False, batch_size=1, sync_dist=False)
        if share < self.min_share and not self.warned:
            self.warned = True
            dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in sample.parameters})
            log.warning(
                "\n%s\nUPDATES ROUNDED AWAY: optimizer step %d changed %.1f%% of the sampled weight elements that an "
                "update of lr=%.3g should change (parameters in %s, trainer.precision=%s). The run is barely training.\n"
                "Fix: load the model in float32 (model.dtype=float32) and compute in bf16 with trainer.precision=bf16-mixed "
                "(fp32 master weights), or use a strategy that keeps master weights (DeepSpeed).\n%s",
                "!" * 100, trainer.global_step, 100 * share, self._lr, "/".join(dtypes), trainer.precision, "!" * 100,
            )
