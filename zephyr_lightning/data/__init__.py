"""Chat formatting, data sources, collators and DataModules."""

from zephyr_lightning.data.chat import tokenize_chat, tokenize_prompt_completion, validate_messages
from zephyr_lightning.data.collators import PreferenceCollator, SFTCollator
from zephyr_lightning.data.preference import PreferenceDataModule
from zephyr_lightning.data.sft import SFTDataModule
from zephyr_lightning.data.sources import BadLine, BadRowError, load_split, load_split_report, prompt_id_of

__all__ = [
    "BadLine",
    "BadRowError",
    "PreferenceCollator",
    "SFTCollator",
    "PreferenceDataModule",
    "SFTDataModule",
    "load_split",
    "load_split_report",
    "prompt_id_of",
    "tokenize_chat",
    "tokenize_prompt_completion",
    "validate_messages",
]
