"""Check a composed training config before anything is built or loaded.

`validate_config` takes the config as plain Python values (``OmegaConf.to_container(cfg, resolve=True)``
in ``train.py``), so it needs no Hydra and is tested with plain dicts. It collects every problem, each
naming the Hydra key and the bad value (``module.beta=0.0: must be > 0``), so one run reports them all
instead of failing on the first after minutes of model loading. The allowed values come from the
modules that use them; the classes still check their own arguments when used without this app.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from typing import Any

from zephyr_lightning.callbacks.nonfinite import MODES as NONFINITE_MODES
from zephyr_lightning.data.base import ON_BAD_ROW, ON_TOO_LONG
from zephyr_lightning.data.packing import STRATEGIES
from zephyr_lightning.data.sft import LOSS_ON
from zephyr_lightning.data.sources import split_file
from zephyr_lightning.losses import LOSS_TYPES
from zephyr_lightning.models import _DTYPES, ATTN_IMPLEMENTATIONS
from zephyr_lightning.optim import SCHEDULES
from zephyr_lightning.resume import ckpt_choice_errors

log = logging.getLogger(__name__)

_MISSING = object()


class ConfigError(ValueError):
    """One or more invalid config values; ``errors`` lists them, each naming its key."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__(f"{len(errors)} invalid config value(s):\n  - " + "\n  - ".join(errors))


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


class _Checks:
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.errors: list[str] = []
        self.notes: list[str] = []

    def fail(self, key: str, value: Any, problem: str) -> None:
        self.errors.append(f"{key}={value!r}: {problem}")

    def number(
        self,
        key: str,
        *,
        gt: float | None = None,
        ge: float | None = None,
        lt: float | None = None,
        le: float | None = None,
        integer: bool = False,
        optional: bool = False,
    ) -> float | None:
        """The value at ``key`` if present and in range; records an error otherwise."""
        value = _get(self.cfg, key)
        if value is _MISSING or (value is None and optional):
            return None
        kind = numbers.Integral if integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            self.fail(key, value, f"must be {'an integer' if integer else 'a number'}")
            return None
        bounds = []
        if gt is not None and not value > gt:
            bounds.append(f"> {gt}")
        if ge is not None and not value >= ge:
            bounds.append(f">= {ge}")
        if lt is not None and not value < lt:
            bounds.append(f"< {lt}")
        if le is not None and not value <= le:
            bounds.append(f"<= {le}")
        if bounds:
            self.fail(key, value, "must be " + " and ".join(bounds))
            return None
        return value

    def choice(self, key: str, choices: tuple | list, *, optional: bool = False) -> Any:
        value = _get(self.cfg, key)
        if value is _MISSING or (value is None and optional):
            return None
        if value not in choices:
            self.fail(key, value, f"must be one of {list(choices)}")
            return None
        return value

    def boolean(self, key: str) -> None:
        value = _get(self.cfg, key)
        if value is not _MISSING and not isinstance(value, bool):
            self.fail(key, value, "must be true or false")


def _hub_splits(source: str, name: str | None) -> list[str] | None:
    """A hub data set's split names when they can be read without the network, else None."""
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:
        return None  # asking would reach the hub; load_split names a wrong split when it loads
    try:
        builder = datasets.load_dataset_builder(source, name)
    except Exception:
        return None
    splits = builder.info.splits
    return sorted(splits) if splits else None


def _check_split(checks: _Checks, key: str, source: Any, name: Any) -> None:
    split = _get(checks.cfg, key)
    if split is _MISSING or (split is None and key.endswith("val_split")):
        return
    if not isinstance(split, str) or not split:
        checks.fail(key, split, "must be a split name")
        return
    if not isinstance(source, str) or not source:
        return
    try:
        file = split_file(source, split)
    except FileNotFoundError as err:
        checks.fail(key, split, str(err))
        return
    if file is not None:
        return
    available = _hub_splits(source, name if isinstance(name, str) else None)
    if available is None:
        checks.notes.append(f"{key}={split!r}: not checked before loading ({source} is a hub data set)")
    elif split not in available:
        checks.fail(key, split, f"{source} has no such split; it has {available}")


def _check_data(checks: _Checks) -> None:
    max_length = checks.number("data.max_length", ge=2, integer=True)
    prompt = checks.number("data.max_prompt_length", gt=0, integer=True)
    if max_length is not None and prompt is not None and not prompt < max_length:
        checks.fail("data.max_prompt_length", prompt, f"must be < data.max_length ({max_length})")
    checks.number("data.batch_size", ge=1, integer=True)
    checks.number("data.eval_batch_size", ge=1, integer=True, optional=True)
    checks.number("data.num_workers", ge=0, integer=True)
    checks.number("data.max_train_samples", ge=1, integer=True, optional=True)
    checks.number("data.max_val_samples", ge=1, integer=True, optional=True)
    checks.choice("data.on_bad_row", ON_BAD_ROW)
    checks.choice("data.on_too_long", ON_TOO_LONG)
    checks.choice("data.loss_on", LOSS_ON)
    checks.choice("data.packing_strategy", STRATEGIES)
    source, name = _get(checks.cfg, "data.path"), _get(checks.cfg, "data.name")
    for key in ("data.train_split", "data.val_split"):
        _check_split(checks, key, source, None if name is _MISSING else name)


def _check_module(checks: _Checks) -> None:
    checks.number("module.beta", gt=0)
    checks.choice("module.loss_type", LOSS_TYPES)
    checks.number("module.label_smoothing", ge=0, lt=0.5)
    checks.boolean("module.reference_free")


def _check_optim(checks: _Checks) -> None:
    checks.number("optim.lr", gt=0)
    checks.number("optim.warmup_ratio", ge=0, lt=1)
    checks.number("optim.min_lr_ratio", ge=0, le=1)
    checks.number("optim.weight_decay", ge=0)
    checks.number("optim.eps", gt=0)
    checks.choice("optim.schedule", SCHEDULES)
    betas = _get(checks.cfg, "optim.betas")
    if betas is not _MISSING and (
        not isinstance(betas, (list, tuple))
        or len(betas) != 2
        or not all(isinstance(b, numbers.Real) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)
    ):
        checks.fail("optim.betas", betas, "must be two numbers in [0, 1)")


def _check_model(checks: _Checks) -> None:
    checks.choice("model.dtype", (*_DTYPES, "auto"))
    checks.choice("model.attn_implementation", ATTN_IMPLEMENTATIONS)
    checks.boolean("model.trust_remote_code")
    checks.boolean("model.gradient_checkpointing")


def _check_trainer(checks: _Checks) -> None:
    checks.number("trainer.max_epochs", ge=-1, integer=True, optional=True)
    checks.number("trainer.max_steps", ge=-1, integer=True, optional=True)
    checks.number("trainer.accumulate_grad_batches", ge=1, integer=True)
    checks.number("trainer.gradient_clip_val", ge=0, optional=True)
    checks.number("trainer.limit_train_batches", gt=0, optional=True)
    checks.number("callbacks.model_checkpoint.every_n_train_steps", ge=0, integer=True, optional=True)
    checks.choice("callbacks.nonfinite_guard.mode", NONFINITE_MODES)
    checks.number("callbacks.nonfinite_guard.max_consecutive_skips", ge=1, integer=True)


def _check_resume(checks: _Checks) -> None:
    resume, ckpt_path = _get(checks.cfg, "resume"), _get(checks.cfg, "ckpt_path")
    errors = ckpt_choice_errors(None if ckpt_path is _MISSING else ckpt_path, False if resume is _MISSING else resume)
    checks.errors.extend(str(error) for error in errors)


def validate_config(cfg: Mapping[str, Any]) -> list[str]:
    """Every problem found in a resolved training config (plain dicts and lists); [] when it is fine.

    Checked: ``module.beta > 0``, a known ``module.loss_type``, ``module.label_smoothing`` in [0, 0.5);
    ``optim.lr > 0``, ``optim.warmup_ratio`` in [0, 1) and the other optimizer values; data lengths
    (``data.max_prompt_length < data.max_length``), batch sizes and modes; that ``data.train_split``
    and ``data.val_split`` exist (local files and folders always; hub data sets only when their split
    names are cached and the hub is offline, otherwise noted and left to loading); model dtype and
    attention; trainer step settings; ``resume`` / ``ckpt_path``.
    """
    checks = _Checks(cfg)
    _check_module(checks)
    _check_optim(checks)
    _check_data(checks)
    _check_model(checks)
    _check_trainer(checks)
    _check_resume(checks)
    for note in checks.notes:
        log.info("config: %s", note)
    return checks.errors


def check_config(cfg: Mapping[str, Any]) -> None:
    """Raise `ConfigError` listing every problem `validate_config` finds."""
    errors = validate_config(cfg)
    if errors:
        raise ConfigError(errors)
