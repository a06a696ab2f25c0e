"""Packing: bin packing properties, and a packed row computing exactly what its sequences do alone."""

from __future__ import annotations

import random

import pytest
import torch

from zephyr_lightning.data.packing import STRATEGIES, pack_lengths, packed_batch, padding_fraction
from zephyr_lightning.logprobs import sequence_logprobs
from zephyr_lightning.models import build_tiny_mistral


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bins_respect_capacity_and_hold_every_sequence_once(strategy):
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = pack_lengths(lengths, 128, strategy)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    # Any fit-based packing leaves at most one bin at most half full.
    assert sum(1 for b in bins if sum(lengths[i] for i in b) <= 64) <= 1


def test_known_packings():
    # Best fit puts 3 into the bin with room 3 (after 7), first fit into the first bin with room (after 5).
    assert pack_lengths([5, 7, 3], 10, "first_fit") == [[0, 2], [1]]
    assert pack_lengths([5, 7, 3], 10, "best_fit_decreasing") == [[1, 2], [0]]
    assert pack_lengths([2, 9, 8, 1], 10, "first_fit_decreasing") == [[1, 3], [2, 0]]
    with pytest.raises(ValueError, match="longer than the packing capacity"):
        pack_lengths([11], 10)
    with pytest.raises(ValueError, match="packing_strategy"):
        pack_lengths([1], 10, "random")


def test_padding_fraction_definition():
    # Two batches: rows [3, 5] pad to 5 (2 pads), row [4] alone (no pad): 2 / 14.
    assert padding_fraction([3, 5, 4], [[3, 5], [4]]) == pytest.approx(2 / 14)
    assert padding_fraction([3, 5, 4], [[8], [4]], row_length=8) == pytest.approx(4 / 16)


@pytest.fixture(scope="module")
def model():
    return build_tiny_mistral(seed=0).eval()


def _dialogues(seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in (9, 14, 6, 11):
        ids = torch.randint(3, 32000, (n,), generator=g).tolist()
        mask = [0] * 3 + [1] * (n - 3)
        out.append((ids, mask))
    return out


def test_packed_rows_do_not_attend_across_sequences(model):
    dialogues = _dialogues(0)
    rows = [[(ids, mask, slot) for slot, (ids, mask) in enumerate(dialogues[:2])],
            [(ids, mask, slot + 2) for slot, (ids, mask) in enumerate(dialogues[2:])]]
    batch = packed_batch(rows, pad_token_id=0)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        # Change the first dialogue of row 0 entirely: the second one's logits must not move.
        other = [list(reversed(dialogues[0][0])), dialogues[0][1]]
        rows2 = [[(other[0], other[1], 0), (*dialogues[1], 1)], rows[1]]
        batch2 = packed_batch(rows2, pad_token_id=0)
        packed2 = model(input_ids=batch2["input_ids"], position_ids=batch2["position_ids"], use_cache=False).logits
        a, b = len(dialogues[0][0]), len(dialogues[1][0])
        assert torch.equal(packed[0, a : a + b], packed2[0, a : a + b])
        assert not torch.allclose(packed[0, :a], packed2[0, :a])
        # And each packed dialogue's logits equal the dialogue run alone.
        alone = model(input_ids=torch.tensor([dialogues[1][0]]), use_cache=False).logits[0]
        torch.testing.assert_close(packed[0, a : a + b], alone, rtol=1e-5, atol=1e-5)


def test_packed_logprobs_equal_unpacked(model):
    dialogues = _dialogues(1)
    rows = [[(ids, mask, slot) for slot, (ids, mask) in enumerate(dialogues[:3])], [(*dialogues[3], 3)]]
    batch = packed_batch(rows, pad_token_id=0)
    packed, packed_counts = sequence_logprobs(
        model, batch["input_ids"], batch["loss_mask"], position_ids=batch["position_ids"],
        sequence_index=batch["sequence_index"], num_sequences=4,
    )
    for slot, (ids, mask) in enumerate(dialogues):
        alone, count = sequence_logprobs(model, torch.tensor([ids]), torch.tensor([mask]))
        torch.testing.assert_close(packed[slot : slot + 1], alone, rtol=1e-5, atol=1e-5)
        assert packed_counts[slot] == count[0]


def test_sequence_start_is_never_scored():
    batch = packed_batch([[([5, 6, 7], [1, 1, 1], 0), ([8, 9], [1, 1], 1)]], pad_token_id=0, pad_to_multiple_of=8)
    assert batch["loss_mask"].tolist() == [[0, 1, 1, 0, 1, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert batch["sequence_index"].tolist() == [[0, 0, 0, 1, 1, -1, -1, -1]]
