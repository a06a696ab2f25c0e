from __future__ import annotations

import lightning as L
from transformers import PreTrainedTokenizerBase


def find_tokenizer(trainer: L.Trainer, given: PreTrainedTokenizerBase | None) -> PreTrainedTokenizerBase | None:
    """The callback's own tokenizer if it was given one, else the DataModule's."""
    if given is not None:
        return given
    datamodule = getattr(trainer, "datamodule", None)
    return getattr(datamodule, "tokenizer", None)
