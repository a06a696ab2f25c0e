"""Training batches that continue mid-epoch exactly where a checkpoint left them.

Lightning (2.2+) saves the ``state_dict()`` of a training DataLoader that has one in every checkpoint,
and hands it back through ``load_state_dict()`` before the resumed epoch starts, while it restores its
own count of finished batches. `ResumableDataLoader` supplies that state: which epoch and how many
batches of it were handed out. Its order comes from `ResumableSampler`, a permutation derived only from
``(seed, epoch)``, so a resumed run rebuilds the same order without any saved index list and skips
exactly the samples already consumed. Nothing here reads the global random generators.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """`DistributedSampler`'s order (a permutation seeded by ``seed + epoch``, sharded by rank) that can
    start part-way into an epoch.

    A `DistributedSampler` subclass also for one device: Lightning then neither wraps nor replaces it
    under DDP. ``start`` (samples of this rank's share to skip) applies to the next pass only.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """A training DataLoader whose position within the epoch is part of Lightning checkpoints.

    ``state_dict()`` is ``{epoch, batches, ...}``: the batches of that epoch handed out so far (Lightning
    does not prefetch from loaders that have a length, so at a checkpoint taken after batch ``k`` this
    is ``k``). ``load_state_dict()`` makes the next pass over the same epoch skip those batches; if
    Lightning has moved on to the next epoch (the checkpoint closed an epoch) nothing is skipped.

    Args:
        dataset: a map-style data set.
        batch_size: samples per batch on this rank.
        seed: the shuffle seed (the permutation of epoch ``e`` is seeded by ``seed + e``).
        shuffle: shuffle each epoch.
        num_replicas, rank: the data-parallel world size and this process's rank.
        drop_last: drop the last incomplete batch (and, across ranks, the samples that do not divide evenly).
        **kwargs: other `DataLoader` arguments (``collate_fn``, ``num_workers``, ...).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        **kwargs: Any,
    ) -> None:
        sampler = ResumableSampler(
            dataset, shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank, drop_last=drop_last
        )
        # Its own generator: the per-iterator base seed DataLoader draws would otherwise come from the
        # global generator and shift dropout masks between a resumed run and an uninterrupted one.
        kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **kwargs)
        self._batches_handed_out = 0
        self._resume_from: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        # A generator, so that this runs at the first batch: by then Lightning has called
        # `sampler.set_epoch` with the epoch it resumes (it creates the iterator before that).
        skip = 0
        if self._resume_from is not None:
            if self._resume_from["epoch"] == self.sampler.epoch:
                skip = self._resume_from["batches"]
            self._resume_from = None
        self.sampler.start = skip * self.batch_size
        self._batches_handed_out = skip
        for batch in super().__iter__():
            self._batches_handed_out += 1
            yield batch

    def _layout(self) -> dict[str, Any]:
        sampler: ResumableSampler = self.sampler
        return {
            "dataset_size": len(sampler.dataset),
            "batch_size": self.batch_size,
            "num_replicas": sampler.num_replicas,
            "seed": sampler.seed,
            "shuffle": sampler.shuffle,
            "drop_last": sampler.drop_last,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.sampler.epoch,
            "batches": self._batches_handed_out,
            "epoch_batches": len(self),
            **self._layout(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = {key: state.get(key) for key in self._layout()}
        now = self._layout()
        changed = {key: (saved[key], now[key]) for key in now if saved[key] != now[key]}
        # Only a position strictly inside an epoch depends on the layout; at an epoch boundary any data goes.
        mid_epoch = 0 < int(state["batches"]) < int(state.get("epoch_batches", 0))
        if changed and mid_epoch:
            details = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise ValueError(
                f"cannot resume the training data mid-epoch exactly: the checkpoint was written with a different "
                f"data layout ({details}). Resume with the same data and data.batch_size / data.seed / devices, "
                "or start a new run from the exported weights."
            )
        self._resume_from = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
