"""dSFT: supervised fine-tuning on dialogues, loss on the assistant's tokens."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchmetrics import Metric
from transformers import PreTrainedModel

from zephyr_lightning.logprobs import batch_inputs, token_logprobs
from zephyr_lightning.metrics import TokenNLL, TokenPerplexity
from zephyr_lightning.models import ModelSpec
from zephyr_lightning.modules.base import CausalLMModule
from zephyr_lightning.optim import OptimizerConfig

# The names this module logs (`SFTModule.logged_metrics`); the logging code below uses these constants.
TRAIN_LOSS = "train/loss"
TRAIN_LOSS_EPOCH = "train/loss_epoch"
TRAIN_SCORED_TOKENS = "train/scored_tokens"
VAL_LOSS = "val/loss"
VAL_PERPLEXITY = "val/perplexity"


class SFTModule(CausalLMModule):
    """Causal-LM fine-tuning as in Zephyr's dSFT stage (paper: lr 2e-5, cosine, 10% warmup).

    Args:
        model: a `ModelSpec`, a hub name or local folder, or a ``transformers`` causal LM.
        optim: optimizer and schedule.

    The loss is the mean negative log-likelihood of the tokens the batch's ``loss_mask`` marks
    (assistant tokens, or all tokens; see `SFTDataModule`), averaged over tokens, not sequences.
    Padded and packed batches give the same loss. Logs ``train/loss`` (per step), ``train/loss_epoch``,
    ``val/loss`` and ``val/perplexity`` (token-weighted over the whole epoch and all devices).
    """

    def __init__(
        self,
        model: PreTrainedModel | ModelSpec | str | dict[str, Any],
        optim: OptimizerConfig | dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model, optim)
        self.train_nll = TokenNLL()
        self.val_nll = TokenNLL()
        self.val_perplexity = TokenPerplexity()

    @classmethod
    def logged_metrics(cls) -> tuple[str, ...]:
        return (TRAIN_LOSS, TRAIN_LOSS_EPOCH, TRAIN_SCORED_TOKENS, VAL_LOSS, VAL_PERPLEXITY)

    def epoch_metrics(self, stage: str) -> dict[str, Metric]:
        if stage == "train":
            return {TRAIN_LOSS_EPOCH: self.train_nll}
        return {VAL_LOSS: self.val_nll, VAL_PERPLEXITY: self.val_perplexity}

    def scored_logprobs(self, batch: dict[str, Any]) -> Tensor:
        logps, _ = token_logprobs(self.model, batch["input_ids"], batch["loss_mask"], **batch_inputs(batch))
        return logps

    @staticmethod
    def mean_nll(logps: Tensor) -> Tensor:
        # A batch with no scored token contributes 0 (with a graph), not NaN.
        return -logps.sum() / max(logps.numel(), 1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logps = self.scored_logprobs(batch)
        loss = self.mean_nll(logps)
        self.train_nll.update(logps)
        sequences = len(batch["prompt_id"])
        self.log(TRAIN_LOSS, loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=sequences)
        self.log(TRAIN_LOSS_EPOCH, self.train_nll, on_step=False, on_epoch=True, batch_size=sequences)
        self.log(TRAIN_SCORED_TOKENS, float(logps.numel()), on_step=True, on_epoch=False, batch_size=sequences)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logps = self.scored_logprobs(batch)
        self.val_nll.update(logps)
        self.val_perplexity.update(logps)
        sequences = len(batch["prompt_id"])
        self.log(VAL_LOSS, self.val_nll, on_step=False, on_epoch=True, prog_bar=True, batch_size=sequences)
        self.log(VAL_PERPLEXITY, self.val_perplexity, on_step=False, on_epoch=True, batch_size=sequences)
