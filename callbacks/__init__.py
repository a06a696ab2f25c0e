"""Lightning callbacks, installed as ``zephyr_lightning.callbacks``."""

from zephyr_lightning.callbacks.hf_export import HFExport
from zephyr_lightning.callbacks.sample_generation import SampleGeneration

__all__ = ["HFExport", "SampleGeneration"]
