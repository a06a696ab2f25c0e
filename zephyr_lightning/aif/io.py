"""Resumable JSONL: append one row at a time, durably, and know on restart what is already there.

A crash can only damage the last line (the row being written). `read_done` detects such a truncated
last line, drops it from the file with a warning and returns the keys of the complete rows, so the
writer appends after them. A malformed line anywhere else is not a crash artefact: it is an error that
names the file and line, and nothing is removed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from zephyr_lightning.atomic import atomic_write

log = logging.getLogger(__name__)


class CorruptJsonlError(ValueError):
    """A line that is not a JSON object, other than a crash-truncated last line."""


def _parse(line: bytes, path: Path, number: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptJsonlError(f"{path}:{number}: not valid JSON ({err})") from None
    if not isinstance(row, dict):
        raise CorruptJsonlError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
    return row


def repair_truncated_tail(path: str | os.PathLike) -> bool:
    """Drop a last line that a crash left incomplete (no final newline and not parseable).

    Returns True when something was dropped. A last line without a newline that *is* a complete JSON
    object (written, then the process died before the newline) is kept and its newline added.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        # Find the start of the unterminated last line.
        block = 1 << 16
        start = max(0, size - block)
        while True:
            f.seek(start)
            chunk = f.read(size - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                line_start = start + cut + 1
                break
            if start == 0:
                line_start = 0
                break
            start = max(0, start - block)
        f.seek(line_start)
        tail = f.read()
        try:
            row = json.loads(tail)
            complete = isinstance(row, dict)
        except (json.JSONDecodeError, UnicodeDecodeError):
            complete = False
        if complete:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
            return False
        f.truncate(line_start)
    log.warning(
        "%s: dropped an incomplete last line (%d bytes, from an interrupted run); that row will be redone",
        path,
        size - line_start,
    )
    return True


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file (blank lines ignored); a bad line raises `CorruptJsonlError` naming it."""
    path = Path(path)
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield _parse(line, path, number)


def read_done(path: str | os.PathLike, key: Callable[[dict[str, Any]], str]) -> set[str]:
    """Keys of the rows already in ``path`` (none if it does not exist), after repairing a torn tail."""
    path = Path(path)
    if not path.exists():
        return set()
    repair_truncated_tail(path)
    return {key(row) for row in iter_jsonl(path)}


class JsonlWriter:
    """Append rows to a JSONL file, each flushed and fsynced before `write` returns.

    fsync per row costs little next to generating or judging a row, and it is what makes "a crash
    loses at most the row in flight" true after a power loss too, not only after a process crash.
    """

    def __init__(self, path: str | os.PathLike, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_truncated_tail(self.path)
        self.fsync = fsync
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close() / __exit__)

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Write a whole derived file at once: to a temporary file, then renamed over ``path``, so readers
    never see half of it. Returns the number of rows."""
    count = 0
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
