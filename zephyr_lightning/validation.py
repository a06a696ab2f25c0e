"""Check a composed training config before anything is built or loaded.

`validate_config` takes the config as plain Python values (``OmegaConf.to_container(cfg, resolve=True)``
in the train command), so it needs no Hydra and is tested with plain dicts. It collects every problem,
each naming the Hydra key and the bad value (``module.beta=0.0: must be > 0``), so one run reports them
all instead of failing on the first after minutes of model loading.

Two kinds of rules:

- each object's own arguments: every node with a ``_target_`` is checked against its target's signature
  (`zephyr_lightning.arguments`), the same declaration its constructor and the sweep checker read;
- rules across objects or about the run, which belong to no single class and live here: every model
  path names a model (``model.name_or_path``, ``module.reference``, an AIF generator's or judge's model:
  any `ModelSpec` node, and any argument declared to take one), an evaluation's answer file exists, the
  data splits exist, the trainer runs at least one step, ``resume`` / ``ckpt_path``, that an optimizer
  step survives rounding in the dtype the parameters are trained in (`zephyr_lightning.precision`), and
  that quantized weights (QLoRA) have a CUDA GPU, adapters to train and a strategy that takes them.
"""

from __future__ import annotations

import logging
import numbers
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from zephyr_lightning.arguments import argument_errors, config_value, declared_types, resolve_target
from zephyr_lightning.data.sources import split_file
from zephyr_lightning.errors import InvalidValue
from zephyr_lightning.models import quantization_problem, trained_spec_problem
from zephyr_lightning.precision import masters_kept, rounded_update_problem, trainable_dtype
from zephyr_lightning.resume import ckpt_choice_errors

log = logging.getLogger(__name__)

_MISSING = object()
# Objects checked first, so the errors read from the stage's own settings outwards.
_ORDER = ("module", "model", "optim", "data")


class ConfigError(InvalidValue):
    """One or more invalid config values; ``errors`` lists them, each naming its key."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__(f"{len(errors)} invalid config value(s):\n  - " + "\n  - ".join(errors))


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    return config_value(cfg, key, _MISSING)


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("${") and value.endswith("}")


def target_nodes(cfg: Any, unresolved: Any = None, prefix: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(key, node)`` for every node with a ``_target_``, outermost first. A node that is an
    interpolation in ``unresolved`` (``policy: ${model}``) is skipped: it is checked where it is defined."""
    if _is_interpolation(unresolved):
        return
    if isinstance(cfg, Mapping):
        if "_target_" in cfg and prefix:
            yield prefix, cfg
        keys = sorted(cfg, key=lambda k: (_ORDER.index(k) if not prefix and k in _ORDER else len(_ORDER)))
        for key in keys:
            below = unresolved.get(key) if isinstance(unresolved, Mapping) else None
            yield from target_nodes(cfg[key], below, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(cfg, (list, tuple)):
        for index, item in enumerate(cfg):
            below = unresolved[index] if isinstance(unresolved, (list, tuple)) and index < len(unresolved) else None
            yield from target_nodes(item, below, f"{prefix}[{index}]")


def _object_errors(cfg: Mapping[str, Any], unresolved: Any) -> list[str]:
    errors: list[str] = []
    for key, node in target_nodes(cfg, unresolved):
        try:
            errors.extend(argument_errors(node["_target_"], node, prefix=key))
        except ImportError as err:
            errors.append(f"{key}._target_={node['_target_']!r}: {err}")
    return errors


class _Checks:
    def __init__(self, cfg: Mapping[str, Any], unresolved: Any = None) -> None:
        self.cfg = cfg
        self.unresolved = unresolved
        self.errors: list[str] = []
        self.notes: list[str] = []

    def fail(self, key: str, value: Any, problem: str) -> None:
        self.errors.append(f"{key}={value!r}: {problem}")

    def integer(self, key: str, *, minimum: int, not_zero: bool = False, problem: str = "") -> None:
        value = _get(self.cfg, key)
        if value is _MISSING or value is None:
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            self.fail(key, value, "must be an integer")
        elif value < minimum:
            self.fail(key, value, f"must be >= {minimum}")
        elif not_zero and value == 0:
            self.fail(key, value, problem)


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


def _check_data_sources(checks: _Checks) -> None:
    source, name = _get(checks.cfg, "data.path"), _get(checks.cfg, "data.name")
    for key in ("data.train_split", "data.val_split"):
        _check_split(checks, key, source, None if name is _MISSING else name)


def _mentions(annotation: Any, cls: type) -> bool:
    """Whether a declared type is ``cls`` or a union / ``Annotated`` that includes it."""
    return annotation is cls or any(_mentions(arg, cls) for arg in typing.get_args(annotation))


def _model_source(checks: _Checks, key: str, value: Any, kind: str = "model", revision: Any = None) -> None:
    from zephyr_lightning.models import source_problem

    if value == "???":
        checks.fail(key, value, "missing: set it to a hub name or a local folder")
    elif isinstance(value, str) and value:
        problem = source_problem(value, kind=kind, revision=revision if isinstance(revision, str) else None)
        if problem:
            checks.fail(key, value, problem)


def _check_model_sources(checks: _Checks) -> None:
    """Every model a config names can be loaded: a local path exists and holds a model, a hub name is
    reachable (in the cache when offline). Named by key, before a tokenizer or data set is loaded, so a
    typo in a path is not blamed on the first object that happens to load it."""
    from zephyr_lightning.models import ModelSpec

    for key, node in target_nodes(checks.cfg, checks.unresolved):
        try:
            target = resolve_target(node["_target_"])
        except ImportError:
            continue  # reported by the argument checks
        if target is ModelSpec:
            _model_source(checks, f"{key}.name_or_path", node.get("name_or_path"), revision=node.get("revision"))
            _model_source(checks, f"{key}.tokenizer_name_or_path", node.get("tokenizer_name_or_path"),
                          kind="tokenizer", revision=node.get("revision"))
            continue
        try:
            types = declared_types(target)
        except (TypeError, ValueError):
            continue
        for name, annotation in types.items():
            if _mentions(annotation, ModelSpec) and isinstance(node.get(name), str):
                _model_source(checks, f"{key}.{name}", node[name])


def _check_answer_files(checks: _Checks) -> None:
    """An evaluation model answering from a file (`AnswerFile`) names one that is there: a local path
    that is missing is named by its key, before any model loads (a hub name is checked when it loads)."""
    from zephyr_lightning.evaluate.answers import AnswerFile

    for key, node in target_nodes(checks.cfg, checks.unresolved):
        try:
            target = resolve_target(node["_target_"])
        except ImportError:
            continue  # reported by the argument checks
        path, split = node.get("path"), node.get("split", "train")
        if target is AnswerFile and isinstance(path, str) and isinstance(split, str):
            try:
                split_file(path, split)
            except FileNotFoundError as err:
                checks.fail(f"{key}.path", path, str(err))


def _check_trainer(checks: _Checks) -> None:
    # Lightning declares no ranges for these; a run that cannot take a step would still load everything.
    nothing = "trains nothing (the run would load the model and data, then export an untrained model)"
    checks.integer("trainer.max_epochs", minimum=-1, not_zero=True, problem=nothing)
    checks.integer("trainer.max_steps", minimum=-1, not_zero=True, problem=nothing)
    checks.integer("trainer.accumulate_grad_batches", minimum=1)
    checks.integer("callbacks.model_checkpoint.every_n_train_steps", minimum=0)
    for key in ("trainer.gradient_clip_val", "trainer.limit_train_batches"):
        value = _get(checks.cfg, key)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if key.endswith("limit_train_batches") and not value > 0:
                checks.fail(key, value, f"must be > 0 ({nothing})")
            elif value < 0:
                checks.fail(key, value, "must be >= 0")


def _trained_model(cfg: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """The key and node of the model the stage trains (``module.policy`` or ``module.model``)."""
    module = cfg.get("module")
    if not isinstance(module, Mapping):
        return None
    for name in ("policy", "model"):
        node = module.get(name)
        if isinstance(node, Mapping):
            return f"module.{name}", node
    return None


def _strategy_target(cfg: Mapping[str, Any]) -> str | None:
    strategy = _get(cfg, "trainer.strategy")
    if isinstance(strategy, Mapping):
        return str(strategy.get("_target_", ""))
    return strategy if isinstance(strategy, str) else None


def _check_precision(checks: _Checks) -> None:
    """An optimizer step must survive rounding in the dtype the trained parameters are stored in."""
    found = _trained_model(checks.cfg)
    lr, precision = _get(checks.cfg, "optim.lr"), _get(checks.cfg, "trainer.precision")
    if found is None or not isinstance(lr, numbers.Real) or _get(checks.cfg, "optim.allow_low_precision_updates") is True:
        return
    key, model = found
    precision = None if precision is _MISSING else precision
    strategy = _strategy_target(checks.cfg)
    try:
        dtype = trainable_dtype(model.get("dtype"), precision, adapters=bool(model.get("peft")))
    except KeyError:
        return  # an unknown dtype name: the ModelSpec check reports it
    if masters_kept(strategy, precision):
        return
    problem = rounded_update_problem(dtype, float(lr))
    if problem:
        where = "model" if checks.cfg.get("model") == model else key  # `policy: ${model}`: the user sets model.*
        checks.fail(
            "optim.lr", lr,
            f"{problem} ({where}.dtype={model.get('dtype')!r}, trainer.precision={precision!r}). "
            "Fix: model.dtype=float32 with trainer.precision=bf16-mixed (fp32 master weights, bf16 compute), "
            "or strategy=deepspeed_zero3; optim.allow_low_precision_updates=true runs it anyway",
        )
    reference_dtype = _get(checks.cfg, "module.reference_dtype")
    fsdp = bool(strategy) and "fsdp" in strategy.lower()
    stored = trainable_dtype(model.get("dtype"), None)
    if fsdp and reference_dtype not in (_MISSING, None) and trainable_dtype(reference_dtype, None) != stored:
        checks.fail("module.reference_dtype", reference_dtype,
                    f"differs from the policy's dtype ({model.get('dtype')!r}); under FSDP the frozen reference is "
                    "sharded in the same units as the policy, which need one dtype: leave it null")


def runs_on_cuda(cfg: Mapping[str, Any]) -> bool:
    """Whether the Trainer will run on a CUDA GPU (``auto`` picks one when there is one)."""
    import torch

    accelerator = str(_get(cfg, "trainer.accelerator")).lower()
    if accelerator in ("cpu", "mps", "tpu", "xla"):
        return False
    return torch.cuda.is_available()


def _model_nodes(cfg: Mapping[str, Any], unresolved: Any) -> list[tuple[str, Mapping[str, Any]]]:
    """Every ModelSpec node (the `model` group, a reference spec), once each (``policy: ${model}`` is `model`)."""
    return [(key, node) for key, node in target_nodes(cfg, unresolved) if str(node["_target_"]).endswith("ModelSpec")]


def _check_quantization(checks: _Checks, unresolved: Any) -> None:
    """Quantized weights load on a CUDA GPU only (before anything loads, naming the key); the trained model
    needs adapters on them; FSDP and DeepSpeed do not shard bitsandbytes weights here; FSDP flattens a
    layer's base weights and adapters together, so they need one dtype."""
    on_cuda = runs_on_cuda(checks.cfg)
    for key, node in _model_nodes(checks.cfg, unresolved):
        quantization = node.get("quantization")
        problem = quantization_problem(quantization, on_cuda)
        if problem:
            checks.fail(f"{key}.quantization", quantization, problem)
    found = _trained_model(checks.cfg)
    if found is None:
        return
    key, model = found
    where = "model" if checks.cfg.get("model") == model else key
    problem = trained_spec_problem(model.get("quantization"), model.get("peft"), str(model.get("name_or_path", "")))
    if problem:
        checks.fail(f"{where}.{problem[0]}", model.get(problem[0]), problem[1])
    strategy = (_strategy_target(checks.cfg) or "").lower()
    if model.get("quantization") and ("fsdp" in strategy or "deepspeed" in strategy):
        checks.fail(f"{where}.quantization", model.get("quantization"),
                    "QLoRA runs on one GPU or under strategy=ddp here (FSDP and DeepSpeed do not shard bitsandbytes "
                    "weights in this set-up); LoRA without quantization works with both")
    elif model.get("peft") and "fsdp" in strategy and model.get("dtype") not in ("float32", "fp32"):
        checks.fail(f"{where}.dtype", model.get("dtype"),
                    "under FSDP a decoder layer's frozen weights and its float32 LoRA adapters are flattened into "
                    "one unit, which needs one dtype: load the base in float32 (bf16 compute comes from "
                    "trainer.precision=bf16-mixed)")


def _check_resume(checks: _Checks) -> None:
    resume, ckpt_path = _get(checks.cfg, "resume"), _get(checks.cfg, "ckpt_path")
    errors = ckpt_choice_errors(None if ckpt_path is _MISSING else ckpt_path, False if resume is _MISSING else resume)
    checks.errors.extend(str(error) for error in errors)


def validate_config(cfg: Mapping[str, Any], unresolved: Mapping[str, Any] | None = None) -> list[str]:
    """Every problem found in a resolved training config (plain dicts and lists); [] when it is fine.

    ``unresolved`` is the same config with interpolations kept (``OmegaConf.to_container(cfg,
    resolve=False)``): a node that merely repeats another (``module.policy: ${model}``) is then checked
    once, where it is defined.
    """
    checks = _Checks(cfg, unresolved)
    checks.errors.extend(_object_errors(cfg, unresolved))
    _check_model_sources(checks)
    _check_answer_files(checks)
    _check_data_sources(checks)
    _check_trainer(checks)
    _check_precision(checks)
    _check_quantization(checks, unresolved)
    _check_resume(checks)
    for note in checks.notes:
        log.info("config: %s", note)
    return checks.errors


def check_config(cfg: Mapping[str, Any], unresolved: Mapping[str, Any] | None = None) -> None:
    """Raise `ConfigError` listing every problem `validate_config` finds."""
    errors = validate_config(cfg, unresolved)
    if errors:
        raise ConfigError(errors)
