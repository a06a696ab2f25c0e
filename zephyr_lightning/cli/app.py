"""What every command shares at start-up: no credential in anything it writes, and user errors told in one
message.

A Hydra command is written as::

    from zephyr_lightning.cli.app import hydra_command

    @hydra_command(config_name="train")                    # conf/train.yaml (config_path: conf_dir())
    def main(cfg: DictConfig) -> None:
        ...

    if __name__ == "__main__":
        main()

and `hydra_command` (in place of ``hydra.main``) is the only thing it needs to call. A command without
Hydra (argparse) runs its body inside `guarded_command`::

    def main(argv: list[str] | None = None) -> None:
        with guarded_command(argv):
            ...

Both:

- finds the values the command line puts under secret keys (``+judge.api_key=...``, dict literals such
  as ``'+extra={api_key: ..., password: ...}'``, sweep choices) and adds them to the secrets blanked
  everywhere (`zephyr_lightning.secrets`), beside those of secret-looking environment variables;
- blanks them in everything printed to the console (stdout and stderr, so Hydra's own "Error executing
  job with overrides: [...]" line and any traceback too) and in every log record, whichever file or
  stream a handler writes it to (records are blanked as they are made; tracebacks in log files by a
  filter on every handler);
- prints a user error (`zephyr_lightning.errors.UserError`, anywhere in the exception's chain: a bad
  config value, a missing file, bad data) as one message, ``Error: ...``, also written to the run's log
  file, and exits with status 1; ``HYDRA_FULL_ERROR=1`` shows the whole traceback instead (blanked too).

`hydra_command` also, once Hydra has written the run's records and before the command's first line,
rewrites them without credentials (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``;
``multirun.yaml`` of a sweep) and blanks them in ``sys.argv`` (W&B records the command line).

Library code that writes text of its own (a model card, a result record) still calls
`zephyr_lightning.secrets.redact_text` / `redact` on it: files are not streams.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from zephyr_lightning.errors import user_error_in
from zephyr_lightning.secrets import (
    override_secret_values,
    redact_text,
    redact_yaml_files,
    register_secret_values,
)

log = logging.getLogger("zephyr_lightning")

FULL_ERROR_ENV = "HYDRA_FULL_ERROR"


def full_error_wanted() -> bool:
    """Whether the user asked for tracebacks (Hydra's own switch)."""
    return os.environ.get(FULL_ERROR_ENV) == "1"


class RedactingStream:
    """A text stream that blanks secrets in everything written to it, and is otherwise the stream it wraps
    (``isatty``, ``fileno``, ``encoding``: progress bars behave as before)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class RedactingFilter(logging.Filter):
    """Blanks secrets in a log record's message and traceback before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        return True


_FILTER = RedactingFilter()


@contextlib.contextmanager
def redacted_log_records() -> Iterator[None]:
    """Every log record made while the block runs has secrets blanked in its message, whichever logger
    makes it and whichever handler (created before or after) writes it."""
    previous = logging.getLogRecordFactory()

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: let the handler report it as it would
            return record
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    logging.setLogRecordFactory(make_record)
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)


def redact_log_handlers() -> None:
    """Put `RedactingFilter` on every handler of every logger (Hydra's console and log file, Lightning's
    console): a filter on a handler sees the records of every logger that reaches it."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)


@contextlib.contextmanager
def redacted_console() -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` blank secrets while the block runs."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def redact_run_records() -> None:
    """Rewrite what Hydra wrote before the job started (the run's ``.hydra/`` folder, a sweep's
    ``multirun.yaml``) without credentials, and blank them in ``sys.argv``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    folders = []
    if hydra_cfg.output_subdir is not None:
        folders.append(Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        folders.append(Path(hydra_cfg.sweep.dir))
    for folder in folders:
        if folder.is_dir():
            redact_yaml_files(folder)
    sys.argv[:] = [redact_text(arg) for arg in sys.argv]


def report_user_error(message: str) -> None:
    """``Error: <message>`` on stderr and in the run's log files (not twice on the console)."""
    text = redact_text(message)
    print(f"Error: {text}\n(set {FULL_ERROR_ENV}=1 to see the traceback)", file=sys.stderr, flush=True)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "Error: %s", (text,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@contextlib.contextmanager
def guarded_command(argv: Sequence[str] | None = None) -> Iterator[None]:
    """Run a command's body with the secrets of ``argv`` (default ``sys.argv[1:]``; ``key=value`` items
    are read as Hydra overrides) and of the environment blanked on the console and in log records; a
    user error ends it with one message and exit status 1, any other error with its (blanked) traceback."""
    register_secret_values(override_secret_values(sys.argv[1:] if argv is None else argv))
    with redacted_console(), redacted_log_records():
        try:
            yield
        except Exception as error:
            user_error = user_error_in(error)
            if user_error is not None and not full_error_wanted():
                report_user_error(str(user_error))
            else:
                traceback.print_exc()  # through the redacting stderr, before it is put back
            raise SystemExit(1) from None


def _single_run() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.RUN


def hydra_command(config_name: str, config_path: str | Path | None = None) -> Callable[[Callable], Callable]:
    """``hydra.main`` for this project's commands, with the start-up described in the module docstring.

    ``config_path``: the folder of the primary config (default: the package's ``conf/``, see
    `zephyr_lightning.cli.configs.conf_dir`). The decorated function, called without arguments, runs the
    command from ``sys.argv``; called with a config, it runs the job on it directly (as ``hydra.main``).
    """
    import hydra

    from zephyr_lightning.cli.configs import conf_dir

    def decorate(task: Callable[[Any], Any]) -> Callable[..., Any]:
        @functools.wraps(task)  # Hydra names the job (and its log file) after the task's module
        def job(cfg: Any) -> Any:
            redact_run_records()
            redact_log_handlers()
            try:
                return task(cfg)
            except Exception as error:
                user_error = user_error_in(error)
                if user_error is None or full_error_wanted() or not _single_run():
                    raise
                report_user_error(str(user_error))
                # SystemExit passes through Hydra without its "Error executing job" line and traceback.
                raise SystemExit(1) from None

        hydra_main = hydra.main(version_base="1.3", config_path=str(config_path or conf_dir()),
                                config_name=config_name)(job)

        @functools.wraps(task)
        def main(cfg: Any = None) -> Any:
            if cfg is not None:
                return hydra_main(cfg)
            # Exceptions reach it only with HYDRA_FULL_ERROR=1 (Hydra prints the others and exits).
            with guarded_command():
                return hydra_main()

        return main

    return decorate
