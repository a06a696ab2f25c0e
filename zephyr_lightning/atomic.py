"""Files that are either whole or absent.

Everything a run may read back (checkpoints, stored reference log-probs, derived JSONL files, trial
results) is written to a hidden temporary file beside its target, flushed to disk and renamed over the
target. The rename is atomic on one file system, so a reader, a crash or a kill never meets half a
file under the real name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _default_mode() -> int:
    # os.umask can only be read by setting it; the files a plain open() creates get 0o666 & ~umask.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a file that appears at ``path`` only when the ``with`` block completes.

    The file is written under a hidden name in the same folder (never matching ``*.ckpt`` or
    ``*.jsonl`` globs); on a clean exit it is flushed, fsynced and renamed over ``path``; on an exception it is deleted and ``path`` keeps its previous content. ``mode`` is
    ``"w"`` (UTF-8 text) or ``"wb"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file private (0600); give it the mode a plain open() would.
        os.chmod(staging, _default_mode())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
