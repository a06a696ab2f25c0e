"""Packing: several sequences per row, no padding between them.

Rows are built by bin packing sequence lengths into a token capacity. In a packed row the position
ids restart at 0 for every sequence; transformers turns that into attention that never crosses
sequences (FlashAttention's varlen kernels on GPU; block-diagonal masks for sdpa/eager when no
attention mask is passed), so a packed row computes exactly what the sequences would alone.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

from zephyr_lightning.arguments import check_arguments

PackingStrategy = Literal["best_fit_decreasing", "first_fit_decreasing", "first_fit"]
STRATEGIES: tuple[str, ...] = get_args(PackingStrategy)


def _first_fit(order: Sequence[int], lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First fit with a max segment tree over bins: O(n log n) instead of scanning every bin."""
    size = 1
    while size < max(1, len(order)):
        size *= 2
    tree = [0] * (2 * size)  # max free room in each subtree; leaves are bins (unopened: 0)
    bins: list[list[int]] = []
    for index in order:
        need = lengths[index]
        if tree[1] >= need:
            node = 1
            while node < size:  # descend to the leftmost bin with room
                node = 2 * node if tree[2 * node] >= need else 2 * node + 1
            b = node - size
        else:
            b = len(bins)
            bins.append([])
            node = size + b
            tree[node] = capacity
        bins[b].append(index)
        tree[node] -= need
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return bins


def _best_fit(order: Sequence[int], lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best fit: the open bin with the least room that still fits. Bins are bucketed by free room
    (an int <= capacity), so finding the tightest one is a bisect over distinct room values."""
    by_room: dict[int, list[int]] = {}
    rooms: list[int] = []  # sorted distinct free-room values with at least one bin
    bins: list[list[int]] = []
    for index in order:
        need = lengths[index]
        at = bisect.bisect_left(rooms, need)
        if at < len(rooms):
            room = rooms[at]
            b = by_room[room].pop()
            if not by_room[room]:
                del by_room[room]
                rooms.pop(at)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(index)
        left = room - need
        if left > 0:
            if left not in by_room:
                by_room[left] = []
                bisect.insort(rooms, left)
            by_room[left].append(b)
    return bins


def pack_lengths(
    lengths: Sequence[int], capacity: int, packing_strategy: PackingStrategy = "best_fit_decreasing"
) -> list[list[int]]:
    """Group sequence indices into bins whose total length is at most ``capacity``.

    ``best_fit_decreasing`` and ``first_fit_decreasing`` sort by length first (tightest packing);
    ``first_fit`` keeps the data order as far as possible.
    """
    check_arguments(pack_lengths, {"packing_strategy": packing_strategy}, prefix="data")
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"{len(too_long)} sequences are longer than the packing capacity {capacity} (e.g. #{too_long[0]})")
    order = range(len(lengths))
    if packing_strategy.endswith("decreasing"):
        order = sorted(order, key=lambda i: -lengths[i])
    fit = _best_fit if packing_strategy.startswith("best") else _first_fit
    return fit(order, lengths, capacity)


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]], row_length: int | None = None) -> float:
    """Share of pad tokens when each batch is a rectangle of its rows.

    ``batches`` lists, per batch, the token count of each row. Rows pad to the batch's longest row,
    or to ``row_length`` when given (fixed-size rows).
    """
    real = sum(lengths)
    total = sum(len(rows) * (row_length or max(rows)) for rows in batches if rows)
    return 1.0 - real / total if total else 0.0


def packed_batch(
    rows: Sequence[Sequence[tuple[Sequence[int], Sequence[int], int]]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, Tensor]:
    """Rows of ``(token ids, loss mask, output slot)`` sequences -> a packed batch.

    Returns ``input_ids``, ``position_ids`` (restarting at 0 per sequence), ``loss_mask`` (never set
    on a sequence's first token, which has no predictor inside its own sequence),
    ``sequence_index`` (the output slot of every token, -1 for padding), and ``cu_seq_lens`` /
    ``max_length``: the sequence boundaries over all tokens of the batch laid end to end, as varlen
    attention kernels take them. Padding at the end of a row gets its own position ids, so it forms a
    separate pseudo-sequence nothing attends to.
    """
    width = max(sum(len(ids) for ids, _, _ in row) for row in rows)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    loss_mask = torch.zeros(shape, dtype=torch.long)
    sequence_index = torch.full(shape, -1, dtype=torch.long)
    boundaries = [0]
    for r, row in enumerate(rows):
        at = 0
        for ids, mask, slot in row:
            n = len(ids)
            input_ids[r, at : at + n] = torch.as_tensor(ids, dtype=torch.long)
            position_ids[r, at : at + n] = torch.arange(n)
            loss_mask[r, at : at + n] = torch.as_tensor(mask, dtype=torch.long)
            loss_mask[r, at] = 0
            sequence_index[r, at : at + n] = slot
            at += n
            boundaries.append(r * width + at)
        position_ids[r, at:] = torch.arange(width - at)
        if at < width:
            boundaries.append((r + 1) * width)
    cu_seq_lens = torch.tensor(boundaries, dtype=torch.int32)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "loss_mask": loss_mask,
        "sequence_index": sequence_index,
        "cu_seq_lens": cu_seq_lens,
        "max_length": int(cu_seq_lens.diff().max()),
    }
