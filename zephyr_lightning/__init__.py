"""zephyr-lightning: the Zephyr recipe (dSFT, AIF, dDPO) as PyTorch Lightning pieces.

Importable without Hydra: every class takes plain Python arguments.
"""

from zephyr_lightning.data.preference import PreferenceDataModule
from zephyr_lightning.data.sft import SFTDataModule
from zephyr_lightning.losses import dpo_loss
from zephyr_lightning.models import ModelSpec, load_causal_lm, load_tokenizer
from zephyr_lightning.modules.dpo import DPOModule
from zephyr_lightning.modules.sft import SFTModule
from zephyr_lightning.optim import OptimizerConfig

__version__ = "0.1.0"

__all__ = [
    "DPOModule",
    "ModelSpec",
    "OptimizerConfig",
    "PreferenceDataModule",
    "SFTDataModule",
    "SFTModule",
    "dpo_loss",
    "load_causal_lm",
    "load_tokenizer",
]
