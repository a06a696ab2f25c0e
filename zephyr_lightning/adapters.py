"""LoRA adapters through PEFT: their settings, adapter folders, and the reference an adapter run needs.

A run trains adapters when its `ModelSpec` has ``peft`` (a ``peft.LoraConfig``, or its fields as a dict)
or names an adapter folder (``adapter_config.json``, as ``PeftModel.save_pretrained`` writes it). The
base weights stay frozen; only the adapter's weights (and ``modules_to_save``) train.

The DPO reference of an adapter run needs no second model:

- a new adapter starts as a no-op (LoRA's B is zero), so the policy's starting point is the base with
  its adapters disabled (``PeftModel.disable_adapter()``);
- an adapter the policy already has (continuing an SFT adapter) is the starting point itself, so a frozen
  copy of it is loaded beside the trained one as ``reference`` and switched on for the reference pass,
  as TRL 1.16's DPOTrainer does with its ``ref`` adapter.

``peft`` is an optional dependency (``pip install -e '.[peft]'``); it is imported only when used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from torch import nn

log = logging.getLogger(__name__)

# The name of the frozen copy of a continued adapter (TRL calls it "ref").
REFERENCE_ADAPTER = "reference"
TRAINED_ADAPTER = "default"
ADAPTER_CONFIG = "adapter_config.json"
# Fields PEFT fills in itself when an adapter is created or saved: not settings a user chooses.
_MANAGED_FIELDS = ("peft_type", "base_model_name_or_path", "revision", "inference_mode", "peft_version")


def require_peft():
    """The ``peft`` package, or an error saying how to install it."""
    try:
        import peft
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("model.peft (LoRA) needs PEFT: pip install -e '.[peft]'") from err
    return peft


def is_peft_model(model: Any) -> bool:
    """True for a ``peft.PeftModel`` (checked without importing peft when it is not loaded)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def unwrap(model: nn.Module) -> nn.Module:
    """The ``transformers`` model inside a ``PeftModel`` (its layers carry the adapters); others as given."""
    return model.get_base_model() if is_peft_model(model) else model


def lora_config(settings: Any):
    """A fresh ``peft.LoraConfig`` from a LoraConfig or a dict of its fields (a Hydra node's ``_target_`` is
    dropped). ``task_type`` defaults to ``CAUSAL_LM`` (TRL's default), which gives ``generate``."""
    peft = require_peft()
    if isinstance(settings, peft.LoraConfig):
        config = dataclasses.replace(settings)
    elif isinstance(settings, Mapping):
        config = peft.LoraConfig(**{k: v for k, v in settings.items() if k != "_target_"})
    else:
        raise TypeError(f"model.peft: expected a peft.LoraConfig or a dict of its fields, got {type(settings).__name__}")
    if config.task_type is None:
        config.task_type = "CAUSAL_LM"
    return config


def add_lora(model: nn.Module, settings: Any, base_name: str) -> nn.Module:
    """A new LoRA adapter on ``model``; the saved adapter folder will name ``base_name`` as its base."""
    from peft import get_peft_model

    # autocast_adapter_dtype (peft's default): adapters are created in float32 whatever the base's dtype,
    # so their AdamW updates never round away (see zephyr_lightning.precision).
    model = get_peft_model(model, lora_config(settings), autocast_adapter_dtype=True)
    model.peft_config[TRAINED_ADAPTER].base_model_name_or_path = base_name
    return model


def _plain(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "value") and isinstance(value.value, str):  # enums such as TaskType
        return value.value
    return value


def lora_settings(settings: Any) -> dict[str, Any]:
    """The fields of a LoRA config that differ from peft's defaults, as plain data (lists, str, numbers):
    what checkpoints record (they load with ``weights_only=True``) and what rebuilds the same config."""
    if settings is None:
        return {}
    if isinstance(settings, Mapping):
        return {k: _plain(v) for k, v in settings.items() if k != "_target_"}
    defaults = type(settings)()
    out = {}
    for field in dataclasses.fields(settings):
        if field.name in _MANAGED_FIELDS:
            continue
        value = getattr(settings, field.name)
        if value != getattr(defaults, field.name):
            out[field.name] = _plain(value)
    return out


def setting(settings: Any, name: str, default: Any = None) -> Any:
    """One field of a LoRA config given as a LoraConfig or a dict."""
    if settings is None:
        return default
    if isinstance(settings, Mapping):
        return settings.get(name, default)
    return getattr(settings, name, default)


def adapter_folder_base(name_or_path: str, revision: str | None = None) -> str | None:
    """The base model an adapter folder (or hub adapter repo) was trained on; None when ``name_or_path`` is
    not an adapter. Local folders are read directly; hub names through transformers (cache, or the hub
    when online)."""
    if name_or_path.startswith("builtin:"):
        return None
    folder = Path(name_or_path)
    if folder.is_dir():
        config_file = folder / ADAPTER_CONFIG
        if not config_file.is_file():
            return None
    else:
        from transformers.utils import find_adapter_config_file

        try:
            found = find_adapter_config_file(name_or_path, revision=revision)
        except Exception:  # no network, no such repo: not an adapter we can find
            return None
        if found is None:
            return None
        config_file = Path(found)
    base = json.loads(config_file.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config_file}: the adapter names no base_model_name_or_path; cannot load its base model")
    return str(base)


def is_local_adapter_folder(name_or_path: str) -> bool:
    """A local folder holding an adapter (no network: what config validation may look at)."""
    return Path(name_or_path, ADAPTER_CONFIG).is_file()


def trainable_parameter_names(model: nn.Module) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad]


def add_reference_adapter(model: nn.Module) -> None:
    """Load a frozen copy of the trained adapter as ``reference`` (the policy's starting point when it
    continues an adapter it was given), on the same base: no second model."""
    config = model.peft_config[TRAINED_ADAPTER]
    model.add_adapter(REFERENCE_ADAPTER, config)
    parameters = dict(model.named_parameters())
    marker, copy = f".{TRAINED_ADAPTER}.", f".{REFERENCE_ADAPTER}."
    copied = 0
    for name, param in parameters.items():
        if marker in name:
            target = parameters[name.replace(marker, copy)]
            target.data.copy_(param.data)
            copied += 1
    if not copied:
        raise RuntimeError("the trained adapter has no parameters to copy into the reference adapter")
    # add_adapter leaves the active (trained) adapter trainable and the new one frozen; make sure.
    for name, param in model.named_parameters():
        if copy in name:
            param.requires_grad_(False)
    log.info("reference: a frozen copy of the policy's starting adapter (%d tensors) on the same base", copied)


def has_reference_adapter(model: nn.Module) -> bool:
    return is_peft_model(model) and REFERENCE_ADAPTER in model.peft_config


@contextlib.contextmanager
def reference_forward(model: nn.Module) -> Iterator[None]:
    """Run the policy as its own reference: the frozen ``reference`` adapter when there is one, else with
    every adapter disabled; in eval mode (no dropout, no gradient checkpointing), whatever mode it was in.
    Gradients are restored to what they were (PEFT toggles ``requires_grad`` when it switches adapters)."""
    training = model.training
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    model.eval()
    try:
        if has_reference_adapter(model):
            model.set_adapter(REFERENCE_ADAPTER)
            try:
                yield
            finally:
                model.set_adapter(TRAINED_ADAPTER)
        else:
            with model.disable_adapter():
                yield
    finally:
        model.train(training)
        for name, param in model.named_parameters():
            if param.requires_grad != (name in trainable):
                param.requires_grad_(name in trainable)
