"""LightningModules: a shared base (model loading, optimizer, schedule) and one module per stage."""

from zephyr_lightning.modules.base import CausalLMModule
from zephyr_lightning.modules.dpo import DPOModule
from zephyr_lightning.modules.sft import SFTModule

__all__ = ["CausalLMModule", "DPOModule", "SFTModule"]
