"""Chat formatting, data sources, collators and DataModules."""

from zephyr_lightning.data.chat import (
    BadRowError,
    tokenize_chat,
    tokenize_prompt_completion,
    validate_messages,
)
from zephyr_lightning.data.collators import PreferenceCollator, SFTCollator
from zephyr_lightning.data.preference import PreferenceDataModule
from zephyr_lightning.data.sft import SFTDataModule
from zephyr_lightning.data.sources import load_split

__all__ = [
    "BadRowError",
    "PreferenceCollator",
    "SFTCollator",
    "PreferenceDataModule",
    "SFTDataModule",
    "load_split",
    "tokenize_chat",
    "tokenize_prompt_completion",
    "validate_messages",
]
