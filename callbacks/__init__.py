"""Lightning callbacks, installed as ``zephyr_lightning.callbacks``."""

from zephyr_lightning.callbacks.hf_export import HFExport
from zephyr_lightning.callbacks.sample_generation import SampleGeneration
from zephyr_lightning.callbacks.throughput import TokenThroughput

__all__ = ["HFExport", "SampleGeneration", "TokenThroughput"]
