"""Tokens per second (and MFU on GPUs with known peak FLOPs), through Lightning's throughput utilities."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ThroughputMonitor

from zephyr_lightning.data.collators import batch_tokens


def _sequences(batch: dict[str, Any]) -> int:
    return len(batch["prompt_id"]) if "prompt_id" in batch else int(batch["input_ids"].shape[0])


class TokenThroughput(ThroughputMonitor):
    """`ThroughputMonitor` for this project's batches: ``samples`` are sequences (dialogues or pairs'
    sides), ``items`` are real (non-padding) tokens, FLOPs come from the module's ``flops_per_batch``.

    Logs ``train|device/items_per_sec`` (tokens/s per device), ``train|items_per_sec`` (all devices),
    ``samples_per_sec``, and ``device/mfu`` where Lightning knows the device's peak. ``window_size``
    batches are averaged (Lightning's default of 100 would log nothing on short runs).
    """

    def __init__(self, window_size: int = 10, **kwargs: Any) -> None:
        # Items are real tokens only: padding is not throughput.
        super().__init__(batch_size_fn=_sequences, length_fn=batch_tokens, window_size=window_size, **kwargs)
