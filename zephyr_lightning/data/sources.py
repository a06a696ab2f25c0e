"""Where rows come from: a hub dataset name, a local json/jsonl/parquet file or folder, or a data set
shipped inside this package (``builtin:<name>``).

This is the one module that the DataModules (``zephyr_lightning.data``) and the AI-feedback steps
(``zephyr_lightning.aif``) share: loading (`load_split`, `load_split_report`, `BadLine`), the error for an
unusable row (`BadRowError`) and the ``prompt_id`` convention (`prompt_id_of`).

A local JSON-lines file that ``datasets`` cannot read is scanned line by line, so that the error names
the file and the line (invalid UTF-8, invalid JSON, a line that is not an object); with
``on_bad_line="skip"`` those lines are left out and reported instead.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from zephyr_lightning.atomic import atomic_write

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
ASSETS = Path(__file__).resolve().parent.parent / "assets"
_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class BadRowError(ValueError):
    """A data row that cannot be used; the message names the row and what is wrong."""


def prompt_id_of(prompt: str) -> str:
    """The ultrafeedback_binarized convention: sha256 of the prompt text."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


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


ON_BAD_LINE = ("error", "skip")


@dataclass(frozen=True)
class BadLine:
    """A line of a local JSON-lines file that holds no usable row."""

    file: Path
    line: int  # 1-based
    reason: str  # "invalid UTF-8 (...)", "invalid JSON (...)" or "not a JSON object (...)"

    @property
    def kind(self) -> str:
        """The reason without its details, for counting."""
        return self.reason.split(" (", 1)[0]

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class LoadedSplit:
    """A split's rows and the lines of its file that were skipped as unreadable."""

    rows: datasets.Dataset
    bad_lines: list[BadLine] = field(default_factory=list)


def split_file(source: str, split: str) -> Path | None:
    """The local file that holds ``split`` of ``source``, or None when ``source`` is a hub name.

    Raises FileNotFoundError (naming what is there) for a local folder without that split or a local
    path that does not exist.
    """
    path = Path(resolve_path(source))
    if path.is_file():
        return path
    if path.is_dir():
        file = _local_split_file(path, split)
        if file is None:
            present = sorted(p.name for p in path.iterdir())
            raise FileNotFoundError(
                f"{path}: no file for split {split!r} (expected {split}.jsonl, .json or .parquet); found {present}"
            )
        return file
    if source.startswith((".", "/", "~")) or Path(source).suffix in _FORMATS:
        raise FileNotFoundError(f"data file or folder {source!r} does not exist")
    return None


def scan_json_lines(file: str | Path) -> list[BadLine]:
    """Every line of a JSON-lines file that is not valid UTF-8, not valid JSON or not a JSON object.
    Blank lines are allowed."""
    file = Path(file)
    bad: list[BadLine] = []
    with open(file, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                reason = f"invalid UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line)"
                bad.append(BadLine(file, number, reason))
                continue
            try:
                value = json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                message = err.msg.removesuffix(" at")  # "Invalid control character at"
                bad.append(BadLine(file, number, f"invalid JSON ({message} at column {err.colno})"))
                continue
            if not isinstance(value, dict):
                bad.append(BadLine(file, number, f"not a JSON object (a JSON {type(value).__name__})"))
    return bad


def _is_valid_utf8(file: Path) -> bool:
    """Whether the whole file decodes as UTF-8. Remembered per (path, size, modification time): a run
    loads each split more than once (prepare_data, then setup), and a large file need be read once."""
    stat = file.stat()
    return _utf8_file_check(str(file.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _utf8_file_check(file: str, size: int, mtime_ns: int, chunk_size: int = 1 << 24) -> bool:
    # size and mtime_ns are only part of the cache key: a changed file is checked again.
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(file, "rb") as f:
            while chunk := f.read(chunk_size):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _is_json_lines(file: Path) -> bool:
    """``.jsonl``, or a ``.json`` file that is not a single JSON document but starts like one object a line."""
    if file.suffix == ".jsonl":
        return True
    try:
        with open(file, "rb") as f:
            json.loads(f.read().decode("utf-8"))
        return False  # one valid document: not JSON lines
    except (UnicodeDecodeError, json.JSONDecodeError):
        with open(file, "rb") as f:
            head = f.read(1024).lstrip()
        return head.startswith(b"{")


def _clean_copy(file: Path, bad: list[BadLine], cache_dir: str | None) -> Path:
    """The good lines of ``file`` in a stable place, so that ``datasets`` reads (and caches) them the
    same way as the original; named after the file's path, size and time, written atomically."""
    stat = file.stat()
    digest = hashlib.sha256(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "zephyr_lightning_clean"
    target = folder / f"{file.stem}-{digest}.jsonl"
    if target.exists():
        return target
    skip = {b.line for b in bad}
    with open(file, "rb") as src, atomic_write(target, "wb") as dst:
        for number, raw in enumerate(src, start=1):
            if number not in skip:
                dst.write(raw if raw.endswith(b"\n") else raw + b"\n")
    return target


def _load_local(kind: str, file: Path, split: str, cache_dir: str | None) -> datasets.Dataset:
    return datasets.load_dataset(kind, data_files={split: str(file)}, split=split, cache_dir=cache_dir)


def load_split_report(
    source: str,
    split: str,
    *,
    name: str | None = None,
    cache_dir: str | None = None,
    on_bad_line: str = "error",
) -> LoadedSplit:
    """Load one split and say which lines of a local JSON-lines file were unreadable.

    - a local file (``.json``, ``.jsonl``, ``.parquet``): the file is the split, whatever its name;
    - a local folder: the file ``<split>.jsonl`` / ``.json`` / ``.parquet`` inside it;
    - otherwise a hub dataset name (``HuggingFaceH4/ultrafeedback_binarized``) and its split.

    ``on_bad_line``: ``error`` raises `BadRowError` naming the file and each bad line; ``skip`` loads
    the other lines and returns the bad ones in `LoadedSplit.bad_lines`.
    """
    if on_bad_line not in ON_BAD_LINE:
        raise ValueError(f"on_bad_line={on_bad_line!r} is not one of {list(ON_BAD_LINE)}")
    file = split_file(source, split)
    if file is None:
        try:
            return LoadedSplit(datasets.load_dataset(source, name=name, split=split, cache_dir=cache_dir))
        except ValueError as err:
            if "split" in str(err).lower():
                raise ValueError(f"{source}: split {split!r} does not exist ({err})") from err
            raise
    kind = _FORMATS.get(file.suffix)
    if kind is None:
        raise ValueError(f"{file}: unsupported file type {file.suffix!r}; use .json, .jsonl or .parquet")
    failure: BaseException
    try:
        rows = _load_local(kind, file, split, cache_dir)
        # pyarrow's JSON reader stores invalid UTF-8 as it is and fails only when a row is read: check it here.
        if kind != "json" or _is_valid_utf8(file):
            return LoadedSplit(rows)
        failure = ValueError("invalid UTF-8")
    except Exception as err:  # datasets wraps parse errors in several types; name the file either way
        failure = err
    # The fast path failed: find out which lines are at fault, which datasets' messages do not say.
    bad = scan_json_lines(file) if kind == "json" and _is_json_lines(file) else []
    if not bad:
        raise ValueError(f"{file}: could not be read as {kind}: {failure}") from failure
    if on_bad_line == "error":
        shown = "; ".join(f"line {b.line}: {b.reason}" for b in bad[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise BadRowError(
            f"{file}: {len(bad)} unreadable line(s): {shown}{more} (data.on_bad_row=skip skips and counts them)"
        ) from failure
    for b in bad[:10]:
        log.warning("skipping %s", b)
    if len(bad) > 10:
        log.warning("skipping %d more unreadable lines of %s", len(bad) - 10, file)
    return LoadedSplit(_load_local(kind, _clean_copy(file, bad, cache_dir), split, cache_dir), bad)


def load_split(
    source: str, split: str, *, name: str | None = None, cache_dir: str | None = None
) -> datasets.Dataset:
    """Load one split (see `load_split_report`); an unreadable line of a local file is an error naming it."""
    return load_split_report(source, split, name=name, cache_dir=cache_dir).rows
