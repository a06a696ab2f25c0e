"""Export the trained model as a Hugging Face folder when fitting ends."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from transformers import PreTrainedTokenizerBase
from zephyr_lightning.callbacks._tokenizer import find_tokenizer

from zephyr_lightning.export import export_hf

log = logging.getLogger(__name__)


class HFExport(L.Callback):
    """Write ``dirpath`` (config, safetensors weights, tokenizer with chat template) at the end of fit.

    The folder loads with ``AutoModelForCausalLM.from_pretrained(dirpath)`` and is what the next
    stage starts from (``model.name_or_path=DIR/hf``). The weights are the module's ``model`` at the
    end of training, gathered from all ranks first under sharded strategies. The tokenizer is the
    one given here, or the DataModule's ``tokenizer``.
    """

    def __init__(self, dirpath: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.tokenizer = tokenizer

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A collective under FSDP/DeepSpeed: every rank takes part, rank 0 receives the full weights.
        full_state = trainer.strategy.lightning_module_state_dict()
        if not trainer.is_global_zero:
            return
        prefix = "model."
        state = {k[len(prefix) :]: v for k, v in full_state.items() if k.startswith(prefix)}
        export_hf(pl_module.model, find_tokenizer(trainer, self.tokenizer), self.dirpath, state_dict=state)
        log.info("Hugging Face export: %s", self.dirpath)
