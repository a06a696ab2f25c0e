"""Chat formatting, data sources and mixtures, cleaning (filters, deduplication, decontamination),
collators and DataModules."""

from zephyr_lightning.data.chat import tokenize_chat, tokenize_prompt_completion, validate_messages
from zephyr_lightning.data.cleaning import Filters, clean_split
from zephyr_lightning.data.collators import PreferenceCollator, SFTCollator
from zephyr_lightning.data.decontamination import Decontamination, EvalIndex
from zephyr_lightning.data.mixture import MixtureSource, load_mixed_split, parse_mixture
from zephyr_lightning.data.preference import PreferenceDataModule
from zephyr_lightning.data.sft import SFTDataModule
from zephyr_lightning.data.sources import BadLine, BadRowError, load_split, load_split_report, prompt_id_of

__all__ = [
    "BadLine",
    "BadRowError",
    "Decontamination",
    "EvalIndex",
    "Filters",
    "MixtureSource",
    "PreferenceCollator",
    "SFTCollator",
    "PreferenceDataModule",
    "SFTDataModule",
    "clean_split",
    "load_mixed_split",
    "load_split",
    "load_split_report",
    "parse_mixture",
    "prompt_id_of",
    "tokenize_chat",
    "tokenize_prompt_completion",
    "validate_messages",
]
