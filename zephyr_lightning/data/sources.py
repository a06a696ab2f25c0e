"""Where rows come from: a hub dataset name, a local json/jsonl/parquet file or folder, or a data set
shipped inside this package (``builtin:<name>``).

This is the one module that the DataModules (``zephyr_lightning.data``) and the AI-feedback steps
(``zephyr_lightning.aif``) share: loading (`load_split`, `load_split_report`, `BadLine`), the error for an
unusable row (`BadRowError`) and the ``prompt_id`` convention (`prompt_id_of`).

A local JSON-lines file that ``datasets`` cannot read is scanned line by line, so that the error names
the file and the line (invalid UTF-8, invalid JSON, a line that is not an object); with
``on_bad_line="skip"`` those lines are left out and reported instead. Rows of a local JSON-lines file are
named by their line in the file (`RowLines`), wherever an error is about one of them.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from zephyr_lightning.atomic import atomic_write
from zephyr_lightning.errors import InvalidValue, MissingFile

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
ASSETS = Path(__file__).resolve().parent.parent / "assets"
_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DataError(InvalidValue):
    """Data that cannot be used (an empty file, a split without a usable row); the message names it."""


class BadRowError(DataError):
    """A data row that cannot be used; the message names the row and what is wrong."""


def json_type(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words (``a JSON number``), for messages about data."""
    if isinstance(value, bool):
        return "a JSON boolean"
    if isinstance(value, (int, float)):
        return "a JSON number"
    if isinstance(value, str):
        return "a JSON string"
    if isinstance(value, (list, tuple)):
        return "a JSON list"
    if isinstance(value, dict):
        return "a JSON object"
    return "null" if value is None else f"a {type(value).__name__}"


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
            raise MissingFile(f"no built-in data set {name!r}; available: {available}")
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


@dataclass(frozen=True)
class RowLines:
    """Which line of a local JSON-lines file each row of its split came from: the rows are the lines
    that are neither blank nor ``skipped`` (unreadable lines left out), in order. Found from the file
    only when a row is named (an error, a skipped row), so a clean file costs nothing; plain data, so the
    ``datasets.map`` function holding it still hashes and pickles."""

    file: str
    skipped: tuple[int, ...] = ()

    def line(self, index: int) -> int | None:
        """The 1-based file line of row ``index``, or None when the file changed since it was read."""
        path = Path(self.file)
        try:
            stat = path.stat()
        except OSError:
            return None
        lines = _row_lines(str(path), stat.st_size, stat.st_mtime_ns, self.skipped)
        return lines[index] if 0 <= index < len(lines) else None


@functools.lru_cache(maxsize=8)
def _row_lines(file: str, size: int, mtime_ns: int, skipped: tuple[int, ...]) -> tuple[int, ...]:
    # size and mtime_ns are only part of the cache key: a changed file is read again.
    left_out = set(skipped)
    with open(file, "rb") as f:
        return tuple(n for n, raw in enumerate(f, start=1) if raw.strip() and n not in left_out)


@dataclass
class LoadedSplit:
    """A split's rows, the lines of its file that were skipped as unreadable, and (for a local
    JSON-lines file) the file line of each row."""

    rows: datasets.Dataset
    bad_lines: list[BadLine] = field(default_factory=list)
    lines: RowLines | None = None


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
            raise MissingFile(
                f"{path}: no file for split {split!r} (expected {split}.jsonl, .json or .parquet); found {present}"
            )
        return file
    if source.startswith((".", "/", "~")) or Path(source).suffix in _FORMATS:
        raise MissingFile(f"data file or folder {source!r} does not exist")
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
                bad.append(BadLine(file, number, f"not a JSON object ({json_type(value)})"))
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


def _has_a_row(file: Path) -> bool:
    """Whether the file holds anything but whitespace (read up to the first other byte)."""
    with open(file, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return True
    return False


def _root_reason(error: BaseException) -> str:
    """The most telling message of an exception chain: ``datasets`` wraps pyarrow's parse error (which
    says what is wrong) in errors of its own, some without a message."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for candidate in reversed(chain):
        if str(candidate).strip():
            return str(candidate).strip()
    return type(error).__name__


def _clean_copy(file: Path, bad: list[BadLine], cache_dir: str | None) -> Path:
    """The good lines of ``file`` in a stable place, so that ``datasets`` reads (and caches) them the
    same way as the original; named after the file's path, size and time, written atomically. Blank
    lines are left out too: ``datasets``' fallback reader fails on them."""
    stat = file.stat()
    digest = hashlib.sha256(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "zephyr_lightning_clean"
    target = folder / f"{file.stem}-{digest}.jsonl"
    if target.exists():
        return target
    skip = {b.line for b in bad}
    with open(file, "rb") as src, atomic_write(target, "wb") as dst:
        for number, raw in enumerate(src, start=1):
            if number not in skip and raw.strip():
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
                raise InvalidValue(f"{source}: split {split!r} does not exist ({err})") from err
            raise
    kind = _FORMATS.get(file.suffix)
    if kind is None:
        raise InvalidValue(f"{file}: unsupported file type {file.suffix!r}; use .json, .jsonl or .parquet")
    if not _has_a_row(file):
        what = "empty (0 bytes)" if file.stat().st_size == 0 else "only blank lines"
        raise DataError(f"{file}: the file is {what}; split {split!r} has no rows")
    failure: BaseException
    try:
        rows = _load_local(kind, file, split, cache_dir)
        # pyarrow's JSON reader stores invalid UTF-8 as it is and fails only when a row is read: check it here.
        if kind != "json" or _is_valid_utf8(file):
            return LoadedSplit(rows, lines=RowLines(str(file)) if kind == "json" and _is_json_lines(file) else None)
        failure = ValueError("invalid UTF-8")
    except Exception as err:  # datasets wraps parse errors in several types; name the file either way
        failure = err
    # The fast path failed: find out which lines are at fault, which datasets' messages do not say.
    json_lines = kind == "json" and _is_json_lines(file)
    bad = scan_json_lines(file) if json_lines else []
    if not bad and not json_lines:
        raise DataError(f"{file}: could not be read as {kind}: {_root_reason(failure)}") from failure
    if bad and on_bad_line == "error":
        shown = "; ".join(f"line {b.line}: {b.reason}" for b in bad[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise BadRowError(
            f"{file}: {len(bad)} unreadable line(s): {shown}{more} (data.on_bad_row=skip skips and counts them)"
        ) from failure
    for b in bad[:10]:
        log.warning("skipping %s", b)
    if len(bad) > 10:
        log.warning("skipping %d more unreadable lines of %s", len(bad) - 10, file)
    lines = RowLines(str(file), tuple(b.line for b in bad))
    if not lines.line(0):
        kinds = Counter(b.kind for b in bad)
        raise DataError(f"{file}: no usable rows: every line is unreadable "
                        f"({', '.join(f'{n} {kind}' for kind, n in kinds.most_common())})") from failure
    try:
        rows = _load_local(kind, _clean_copy(file, bad, cache_dir), split, cache_dir)
    except Exception as err:  # every line is a JSON object, and still datasets cannot read them
        raise DataError(f"{file}: could not be read as {kind}: {_root_reason(err)}") from err
    return LoadedSplit(rows, bad, lines)


def load_split(
    source: str, split: str, *, name: str | None = None, cache_dir: str | None = None
) -> datasets.Dataset:
    """Load one split (see `load_split_report`); an unreadable line of a local file is an error naming it."""
    return load_split_report(source, split, name=name, cache_dir=cache_dir).rows
