"""Precomputed reference log-probs: run the frozen reference once over the data, keep the numbers.

The reference of DPO never changes, so its log-probs of every chosen and rejected completion can be
computed once, before training, and stored on disk. Training then needs neither the reference's
memory nor its forward pass. Stored values are keyed by a fingerprint of the reference (its weights,
or its name and revision), the tokenized data (the `datasets` fingerprint, which covers the rows and
the tokenisation settings) and the dtype, so a later run with the same inputs reuses them and any
change recomputes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from zephyr_lightning.atomic import atomic_write
from zephyr_lightning.logprobs import pair_logprobs
from zephyr_lightning.models import ModelSpec, cache_root

log = logging.getLogger(__name__)

COLUMNS = ("reference_chosen_logps", "reference_rejected_logps")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def default_cache_dir() -> Path:
    return cache_root() / "reference_logps"


def _hash_files(paths: Iterable[Path], digest) -> None:
    for path in sorted(paths):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)


def reference_fingerprint(reference: ModelSpec | PreTrainedModel) -> str:
    """What identifies the reference's numbers: its weights where they are at hand, else its name."""
    digest = hashlib.sha256()
    if isinstance(reference, PreTrainedModel):
        for name, tensor in sorted(reference.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        digest.update(str(next(reference.parameters()).dtype).encode())
        return digest.hexdigest()
    spec = reference
    folder = Path(spec.name_or_path)
    if not spec.is_builtin and folder.is_dir():
        # An adapter folder's config names its base, so a changed base changes the key too.
        configs = [folder / name for name in ("config.json", "adapter_config.json")]
        weights = [p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES]
        _hash_files([*weights, *(p for p in configs if p.exists())], digest)
    if spec.is_builtin or not folder.is_dir() or spec.adapter_base is not None:
        # Built-in models are defined by their spec; hub models (and an adapter's base) by name and revision.
        digest.update(json.dumps({k: spec.to_dict()[k] for k in ("name_or_path", "revision", "seed", "config_overrides")},
                                 sort_keys=True).encode())
    # Quantized weights give other log-probs than the same weights in full precision.
    digest.update(f"{spec.dtype}:{spec.quantization}".encode())
    return digest.hexdigest()


@torch.no_grad()
def compute_reference_logps(
    model: PreTrainedModel,
    dataset: datasets.Dataset,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    batch_size: int,
    device: torch.device,
    forward_context: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """Reference log-probs of every pair of ``dataset``, in order: a float32 tensor [N, 2] (chosen, rejected)."""
    from lightning.pytorch.utilities import move_data_to_device
    from tqdm.auto import tqdm

    model.eval()
    out = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in tqdm(loader, desc="reference log-probs", disable=None):
        batch = move_data_to_device(batch, device)
        context = forward_context() if forward_context is not None else contextlib.nullcontext()
        with context:
            logps = pair_logprobs(model, batch)
        out.append(torch.stack([logps.chosen, logps.rejected], dim=1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 2)


class ReferenceLogpsStore:
    """Files ``<cache_dir>/<fingerprint>.pt`` holding [N, 2] float32 tensors (loaded with weights_only)."""

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.pt"

    def load(self, key: str, rows: int) -> torch.Tensor | None:
        path = self.path(key)
        if not path.exists():
            return None
        values = torch.load(path, map_location="cpu", weights_only=True)
        if values.shape != (rows, 2):
            log.warning("ignoring %s: shape %s does not match %d rows", path, tuple(values.shape), rows)
            return None
        return values

    def save(self, key: str, values: torch.Tensor) -> Path:
        path = self.path(key)
        with atomic_write(path, "wb") as f:  # other ranks and later runs see the whole file or none
            torch.save(values, f)
        return path


def entry_key(reference_key: str, dataset: datasets.Dataset) -> str:
    return hashlib.sha256(f"{reference_key}:{dataset._fingerprint}:{len(dataset)}".encode()).hexdigest()[:32]


def with_reference_logps(dataset: datasets.Dataset, values: torch.Tensor) -> datasets.Dataset:
    dataset = dataset.remove_columns([c for c in COLUMNS if c in dataset.column_names])
    dataset = dataset.add_column(COLUMNS[0], values[:, 0].tolist())
    return dataset.add_column(COLUMNS[1], values[:, 1].tolist())


def attach_reference_logps(
    splits: dict[str, datasets.Dataset],
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    reference: ModelSpec | PreTrainedModel,
    *,
    store: ReferenceLogpsStore,
    batch_size: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    prepare_model: Callable[[PreTrainedModel], PreTrainedModel] = lambda m: m,
    forward_context: Callable[[], Any] | None = None,
) -> dict[str, datasets.Dataset]:
    """Return ``splits`` with the reference log-prob columns, computing what the store lacks.

    With several processes each computes every ``world_size``-th pair of what is missing, writes its
    share, and after a barrier every process assembles the whole (rank 0 also stores it whole, for
    later runs at any world size). The reference is loaded only when something is missing.
    """
    reference_key = reference_fingerprint(reference)
    keys = {name: entry_key(reference_key, data) for name, data in splits.items()}
    stored = {name: store.load(keys[name], len(data)) for name, data in splits.items()}
    missing = {name: data for name, data in splits.items() if stored[name] is None}
    if missing:
        model = reference if isinstance(reference, PreTrainedModel) else reference.load_model()
        model = prepare_model(model.requires_grad_(False)).to(device)
        for name, data in missing.items():
            share = data.select(range(rank, len(data), world_size))
            log.info("computing reference log-probs of %d of %d pairs (%s)", len(share), len(data), name)
            values = compute_reference_logps(model, share, collate, batch_size, device, forward_context)
            store.save(f"{keys[name]}.rank{rank}of{world_size}", values)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    barrier()
    out = {}
    for name, data in splits.items():
        values = stored[name]
        if values is None:
            values = torch.empty(len(data), 2)
            for r in range(world_size):
                values[r::world_size] = torch.load(store.path(f"{keys[name]}.rank{r}of{world_size}"), weights_only=True)
            barrier()  # everyone has read the shares before rank 0 replaces them with the whole
            if rank == 0:
                store.save(keys[name], values)
                for r in range(world_size):
                    store.path(f"{keys[name]}.rank{r}of{world_size}").unlink(missing_ok=True)
        else:
            log.info("reusing reference log-probs for %s from %s", name, store.path(keys[name]))
        out[name] = with_reference_logps(data, values)
    return out
