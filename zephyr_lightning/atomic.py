"""Files that are either whole or absent.

Everything a run may read back (checkpoints, stored reference log-probs, derived JSONL files, trial
results) is written to a hidden temporary file beside its target, flushed to disk and renamed over the
target. The rename is atomic on one file system, so a reader, a crash or a kill never meets half a
file under the real name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

# `atomic_write`'s staging files: "." + the target's name + "." + mkstemp's random part + ".partial"; and
# the staging folders of `zephyr_lightning.export.staged_folder` and `folder_once`: "." + the folder's name +
# ".partial-" + random.
_STAGING = re.compile(r"^\.(?P<target>.+)\.[^.]+\.partial$")
_STAGING_FOLDER = re.compile(r"^\.(?P<target>.+)\.partial-[^.]+$")


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


def staging_files(folder: str | os.PathLike, targets: tuple[str, ...] | None = None) -> list[Path]:
    """What a process killed mid-write left in ``folder`` (not below it): `atomic_write`'s staging files,
    and the staging folders of exports whose target folder exists (so the staging one cannot be the only
    copy). ``targets``: only those for files or folders with these names."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        file, staged = _STAGING.match(path.name), _STAGING_FOLDER.match(path.name)
        if file and path.is_file():
            target = file["target"]
        elif staged and path.is_dir() and (folder / staged["target"]).is_dir():
            target = staged["target"]
        else:
            continue
        if targets is None or target in targets:
            found.append(path)
    return found


def remove_stale_staging(folder: str | os.PathLike, targets: tuple[str, ...] | None = None) -> list[Path]:
    """Delete the staging files of killed writes in ``folder`` (see `staging_files`); returns them.

    Call it when a run starts, on the one process that writes into ``folder``, before it writes: a
    staging file is never read back (its target is complete or absent), and a checkpoint's can be as
    large as the model.
    """
    removed = []
    for path in staging_files(folder, targets):
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # another process cleaned it first
            continue
        removed.append(path)
        log.info("removed %s, left by a write that was interrupted", path)
    return removed


def folder_once(target: str | os.PathLike, marker: str, build: Callable[[Path], None]) -> Path:
    """``target``, a cache folder built once: when ``target/marker`` is missing, ``build(staging)`` fills a
    hidden staging folder beside it, which is then renamed into place. Readers never meet a half-built
    folder, and builders racing for it (test workers, ranks) are fine: the first rename wins, the others
    drop their copy."""
    target = Path(target)
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        build(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / marker).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

