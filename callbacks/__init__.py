"""Lightning callbacks, installed as ``zephyr_lightning.callbacks``."""

from zephyr_lightning.callbacks.batch_record import BatchRecord
from zephyr_lightning.callbacks.data_summary import DataSummary
from zephyr_lightning.callbacks.hf_export import HFExport
from zephyr_lightning.callbacks.judged_eval import JudgedEvaluation
from zephyr_lightning.callbacks.nonfinite import NonFiniteError, NonFiniteGuard
from zephyr_lightning.callbacks.preemption import Preempted, PreemptionCheckpoint
from zephyr_lightning.callbacks.random_state import RandomStateCheckpoint
from zephyr_lightning.callbacks.reference_logps import PrecomputedReference
from zephyr_lightning.callbacks.run_checkpoint import RunCheckpoint
from zephyr_lightning.callbacks.sample_generation import SampleGeneration
from zephyr_lightning.callbacks.throughput import TokenThroughput
from zephyr_lightning.callbacks.update_guard import UpdateGuard
from zephyr_lightning.callbacks.validation_record import ValidationRecord

__all__ = [
    "BatchRecord",
    "DataSummary",
    "HFExport",
    "JudgedEvaluation",
    "NonFiniteError",
    "NonFiniteGuard",
    "Preempted",
    "PrecomputedReference",
    "PreemptionCheckpoint",
    "RandomStateCheckpoint",
    "RunCheckpoint",
    "SampleGeneration",
    "TokenThroughput",
    "UpdateGuard",
    "ValidationRecord",
]
