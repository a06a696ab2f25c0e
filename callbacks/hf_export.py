"""Export the trained model as a Hugging Face folder when fitting ends."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from transformers import PreTrainedTokenizerBase

from zephyr_lightning.callbacks._tokenizer import find_tokenizer
from zephyr_lightning.export import adapter_dir_for, export_adapter_run, export_hf

log = logging.getLogger(__name__)


def full_state_dict(trainer: L.Trainer) -> dict:
    """The LightningModule's whole state dict on rank 0, whatever the strategy shards."""
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = trainer.strategy
    if isinstance(strategy, FSDPStrategy) and getattr(strategy, "_state_dict_type", "full") != "full":
        # Checkpoints are sharded; the export still needs every weight in one place.
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(strategy.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return strategy.lightning_module_state_dict()


class HFExport(L.Callback):
    """Write ``dirpath`` (config, safetensors weights, tokenizer with chat template) at the end of fit.

    The folder loads with ``AutoModelForCausalLM.from_pretrained(dirpath)`` and is what the next
    stage starts from (``model.name_or_path=DIR/hf``). The weights are the module's ``model`` at the
    end of training, gathered from all ranks first under sharded strategies. The tokenizer is the
    one given here, or the DataModule's ``tokenizer``.

    A module that trained adapters also writes the adapter folder (``adapter_dirpath``, by default
    ``DIR/hf-adapter``), and ``dirpath`` holds the full model with the adapter merged in
    (`zephyr_lightning.export.export_adapter_run`).
    """

    def __init__(self, dirpath: str | Path, tokenizer: PreTrainedTokenizerBase | None = None,
                 adapter_dirpath: str | Path | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.tokenizer = tokenizer
        self.adapter_dirpath = adapter_dir_for(dirpath) if adapter_dirpath is None else Path(adapter_dirpath)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A collective under FSDP/DeepSpeed: every rank takes part, rank 0 receives the full weights.
        full_state = full_state_dict(trainer)
        if not trainer.is_global_zero:
            return
        prefix = "model."
        tokenizer = find_tokenizer(trainer, self.tokenizer)
        adapter_keys = getattr(pl_module, "adapter_keys", None)
        if adapter_keys is not None:
            state = {k[len(prefix) :]: v for k, v in full_state.items() if k in adapter_keys}
            source = pl_module.model_spec if pl_module.model_spec is not None else pl_module.model
            export_adapter_run(source, state, tokenizer, self.dirpath, self.adapter_dirpath)
            log.info("Hugging Face export: %s (merged), %s (adapter)", self.dirpath, self.adapter_dirpath)
            return
        state = {k[len(prefix) :]: v for k, v in full_state.items() if k.startswith(prefix)}
        export_hf(pl_module.model, tokenizer, self.dirpath, state_dict=state)
        log.info("Hugging Face export: %s", self.dirpath)
