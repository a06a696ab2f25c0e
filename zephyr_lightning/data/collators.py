"""Turn tokenized rows into model batches."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from zephyr_lightning.data.packing import packed_batch


def pad_rows(rows: list[list[int]], pad_value: int, multiple_of: int | None = None) -> Tensor:
    """Right-pad lists of ints into a [len(rows), T] tensor."""
    length = max(len(r) for r in rows)
    if multiple_of:
        length = -(-length // multiple_of) * multiple_of
    out = torch.full((len(rows), length), pad_value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def batch_tokens(batch: dict[str, Any]) -> int:
    """Real (non-padding) tokens of a collated batch: its ``num_tokens``, else every position."""
    return int(batch.get("num_tokens") or batch["input_ids"].numel())


def padded_batch(sequences: list[list[int]], masks: list[list[int]], pad_token_id: int, multiple_of: int | None = None) -> dict[str, Tensor]:
    """One sequence per row, right-padded to a shared length: ``input_ids``, ``attention_mask``, ``loss_mask``."""
    return {
        "input_ids": pad_rows(sequences, pad_token_id, multiple_of),
        "attention_mask": pad_rows([[1] * len(s) for s in sequences], 0, multiple_of),
        "loss_mask": pad_rows(masks, 0, multiple_of),
    }


class PreferenceCollator:
    """Pairs -> one batch holding all chosen sequences, then all rejected ones.

    Padded (default): one sequence per row, right-padded to a shared length, with an
    ``attention_mask``. Packed (``packing=True``): all 2B sequences laid end to end in a single row
    with ``position_ids`` restarting per sequence, ``sequence_index`` (chosen of pair i -> i,
    rejected -> B + i) and ``cu_seq_lens``/``max_length``, so no FLOP is spent on padding. Either
    way the policy (and the reference) score chosen and rejected in one forward pass, and
    ``loss_mask`` marks the completion tokens.

    Also: ``prompt_id`` (list of B), ``num_tokens`` (real tokens), and
    ``reference_chosen_logps`` / ``reference_rejected_logps`` ([B]) when the rows carry them.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, packing: bool = False) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.packing = packing

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        sequences, masks = [], []
        for side in ("chosen", "rejected"):
            for row in rows:
                prompt, completion = row["prompt_input_ids"], row[f"{side}_input_ids"]
                sequences.append(list(prompt) + list(completion))
                masks.append([0] * len(prompt) + [1] * len(completion))
        if self.packing:
            batch: dict[str, Any] = packed_batch(
                [list(zip(sequences, masks, range(len(sequences))))], self.pad_token_id, self.pad_to_multiple_of
            )
        else:
            batch = padded_batch(sequences, masks, self.pad_token_id, self.pad_to_multiple_of)
        batch["prompt_id"] = [row["prompt_id"] for row in rows]
        batch["num_tokens"] = sum(len(s) for s in sequences)
        for side in ("chosen", "rejected"):
            key = f"reference_{side}_logps"
            if key in rows[0]:
                batch[key] = torch.tensor([row[key] for row in rows], dtype=torch.float32)
        return batch


class SFTCollator:
    """Dialogues -> a batch. Padded: one dialogue per row with an ``attention_mask``. Packed (each item
    is a list of dialogues): one row per item, ``position_ids`` restarting per dialogue and no
    attention mask (see `zephyr_lightning.data.packing`).

    Output: ``input_ids``, ``loss_mask``, and ``attention_mask`` or ``position_ids`` +
    ``sequence_index``; ``prompt_id`` (every dialogue, in order), ``num_tokens`` (real tokens).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        if items and isinstance(items[0], list):
            return self.packed(items)
        sequences = [row["input_ids"] for row in items]
        batch: dict[str, Any] = padded_batch(
            sequences, [row["loss_mask"] for row in items], self.pad_token_id, self.pad_to_multiple_of
        )
        batch["prompt_id"] = [row["prompt_id"] for row in items]
        batch["num_tokens"] = sum(len(s) for s in sequences)
        return batch

    def packed(self, bins: list[list[dict[str, Any]]]) -> dict[str, Any]:
        rows, prompt_ids, slot = [], [], 0
        for dialogues in bins:
            row = []
            for dialogue in dialogues:
                row.append((dialogue["input_ids"], dialogue["loss_mask"], slot))
                prompt_ids.append(dialogue["prompt_id"])
                slot += 1
            rows.append(row)
        batch: dict[str, Any] = packed_batch(rows, self.pad_token_id, self.pad_to_multiple_of)
        batch["prompt_id"] = prompt_ids
        batch["num_tokens"] = sum(len(d["input_ids"]) for dialogues in bins for d in dialogues)
        return batch
