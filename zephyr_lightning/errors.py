"""Errors that are the user's to fix, told apart from the library's own failures.

A `UserError` is a mistake in what the user gave: a config value, a path, a data file. Its message says
what is wrong and where (the config key, the file and line), so the commands print that message alone,
with no traceback (``HYDRA_FULL_ERROR=1`` shows it; see `zephyr_lightning.cli.app`). Everything else (a
bug, an out-of-memory, a failed download) keeps its traceback.

Library code raises a subclass that is also the built-in type a caller would catch, so
``except ValueError`` and ``pytest.raises(FileNotFoundError)`` keep working.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input; the message alone tells what to fix."""


class InvalidValue(UserError, ValueError):
    """A value (a config key, an argument, a row of data) that cannot be used."""


class MissingFile(UserError, FileNotFoundError):
    """A file or folder the user named that is not there."""


def user_error_in(error: BaseException) -> UserError | None:
    """The `UserError` behind ``error``: itself, or the nearest one in its chain of causes (Hydra's
    instantiation and Lightning's hooks wrap the exceptions they meet); None when there is none."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
