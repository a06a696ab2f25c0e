"""Where rows come from: a hub dataset name, a local json/jsonl/parquet file or folder, or a data set
shipped inside this package (``builtin:<name>``)."""

from __future__ import annotations

from pathlib import Path

import datasets

BUILTIN_PREFIX = "builtin:"
ASSETS = Path(__file__).resolve().parent.parent / "assets"
_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def resolve_path(source: str) -> str:
    """``builtin:name`` -> the packaged folder; anything else unchanged."""
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX) :]
        path = ASSETS / name
        if not path.exists():
            available = sorted(p.name for p in ASSETS.iterdir() if p.is_dir())
            raise FileNotFoundError(f"no built-in data set {name!r}; available: {available}")
        return str(path)
    return source


def _local_split_file(folder: Path, split: str) -> Path | None:
    for suffix in (".jsonl", ".json", ".parquet"):
        candidate = folder / f"{split}{suffix}"
        if candidate.exists():
            return candidate
    return None


def load_split(
    source: str, split: str, *, name: str | None = None, cache_dir: str | None = None
) -> datasets.Dataset:
    """Load one split.

    - a local file (``.json``, ``.jsonl``, ``.parquet``): the file is the split, whatever its name;
    - a local folder: the file ``<split>.jsonl`` / ``.json`` / ``.parquet`` inside it;
    - otherwise a hub dataset name (``HuggingFaceH4/ultrafeedback_binarized``) and its split.
    """
    path = Path(resolve_path(source))
    if path.is_file():
        file = path
    elif path.is_dir():
        file = _local_split_file(path, split)
        if file is None:
            present = sorted(p.name for p in path.iterdir())
            raise FileNotFoundError(
                f"{path}: no file for split {split!r} (expected {split}.jsonl, .json or .parquet); found {present}"
            )
    elif source.startswith((".", "/", "~")) or Path(source).suffix in _FORMATS:
        raise FileNotFoundError(f"data file or folder {source!r} does not exist")
    else:
        try:
            return datasets.load_dataset(source, name=name, split=split, cache_dir=cache_dir)
        except ValueError as err:
            if "split" in str(err).lower():
                raise ValueError(f"{source}: split {split!r} does not exist ({err})") from err
            raise
    kind = _FORMATS.get(file.suffix)
    if kind is None:
        raise ValueError(f"{file}: unsupported file type {file.suffix!r}; use .json, .jsonl or .parquet")
    try:
        return datasets.load_dataset(kind, data_files={split: str(file)}, split=split, cache_dir=cache_dir)
    except Exception as err:  # datasets wraps parse errors in several types; name the file either way
        raise ValueError(f"{file}: could not be read as {kind}: {err}") from err
