"""One declaration per rule: constructors, config validation and the config files all read the signature."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tests.helpers import CONF_DIR, compose
from zephyr_lightning import (
    DPOModule,
    ModelSpec,
    OptimizerConfig,
    PreferenceDataModule,
    SFTDataModule,
    SFTModule,
)
from zephyr_lightning.arguments import ArgumentError, argument_errors, declared_arguments, declared_defaults
from zephyr_lightning.validation import validate_config


def _validation_errors(cfg) -> list[str]:
    return validate_config(OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_container(cfg, resolve=False))


@pytest.mark.parametrize("cls,kwargs,key", [
    (DPOModule, {"policy": "builtin:tiny-mistral", "beta": 0.0}, "module.beta=0.0: must be > 0"),
    (OptimizerConfig, {"warmup_ratio": 1.0}, "optim.warmup_ratio=1.0: must be < 1"),
    (ModelSpec, {"dtype": "float8"}, "model.dtype='float8': must be one of"),
    (PreferenceDataModule, {"path": "builtin:tiny_prefs", "tokenizer": "builtin:tiny-mistral", "max_length": 256,
                            "max_prompt_length": 256}, "data.max_prompt_length=256: must be < data.max_length (256)"),
])
def test_constructor_and_config_validation_say_the_same(cls, kwargs, key, tmp_path):
    with pytest.raises(ArgumentError) as raised:
        cls(**kwargs)
    assert str(raised.value).startswith(key)
    group, _, rest = key.partition(".")
    name, _, value = rest.partition("=")
    value = value.split(":", 1)[0]
    cfg = compose(["+experiment=dpo", f"{group}.{name}={value}"], tmp_path)
    errors = _validation_errors(cfg)
    assert len(errors) == 1 and errors[0].startswith(key), errors


def test_an_unknown_argument_is_named_with_what_the_class_takes():
    errors = argument_errors("zephyr_lightning.OptimizerConfig", {"lr": 1e-3, "learning_rate": 1e-3}, prefix="optim")
    assert errors == [f"optim.learning_rate=0.001: not an argument of OptimizerConfig (it takes "
                      f"{', '.join(sorted(declared_arguments(OptimizerConfig)))})"]


@pytest.mark.parametrize("experiment,module,data", [("dpo", DPOModule, PreferenceDataModule), ("sft", SFTModule, SFTDataModule)])
def test_composed_config_shows_every_effective_value(experiment, module, data, tmp_path):
    """`python train.py --cfg job` shows every argument of every object, though the files list only what
    differs: the rest comes from the signatures."""
    cfg = compose([f"+experiment={experiment}"], tmp_path)
    for node, cls in ((cfg.module, module), (cfg.data, data), (cfg.model, ModelSpec), (cfg.optim, OptimizerConfig)):
        assert set(node) - {"_target_"} == set(declared_arguments(cls)), cls
    assert cfg.optim.betas == [0.9, 0.999] and cfg.model.dtype == "float32"  # defaults from Python


def _file_values(path: Path) -> dict:
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("defaults", None)
    return data


@pytest.mark.parametrize("path", sorted(p for g in ("model", "optim", "module", "data") for p in (CONF_DIR / g).glob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_files_repeat_no_default(path):
    """A config file of a library object lists only values that differ from the signature's defaults."""
    text = path.read_text()
    target = next(line.split("/signatures/")[1].split("@")[0] for line in text.splitlines() if "/signatures/" in line)
    defaults = declared_defaults(f"zephyr_lightning.{target}")
    repeated = {k: v for k, v in _file_values(path).items() if k in defaults and defaults[k] == v}
    assert not repeated, f"{path.name} repeats defaults of {target}: {repeated}"


def _leaves(data: dict, prefix: str = ""):
    for key, value in data.items():
        if isinstance(value, dict) and value and "_target_" not in value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("path", sorted((CONF_DIR / "experiment").glob("*.yaml")), ids=lambda p: p.stem)
def test_experiments_set_only_what_differs_from_their_groups(path, tmp_path):
    """Each value an experiment sets changes the config its defaults list alone composes (a value that
    equals it is a second home for that rule: a comment says where it comes from instead)."""
    data = yaml.safe_load(path.read_text())
    bare = tmp_path / "conf" / "experiment" / f"bare_{path.name}"
    bare.parent.mkdir(parents=True)
    bare.write_text("# @package _global_\n" + yaml.safe_dump({"defaults": data.pop("defaults")}))
    composed = compose([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"+experiment=bare_{path.stem}"], tmp_path)
    repeated = {}
    for key, value in _leaves(data):
        before = OmegaConf.select(composed, key, default="<absent>")
        if OmegaConf.is_config(before):
            before = OmegaConf.to_container(before)
        if before == value:
            repeated[key] = value
    assert not repeated, f"{path.name} sets what its groups already give: {repeated}"


def test_experiments_override_groups_instead_of_pasting_module_blocks():
    for path in sorted((CONF_DIR / "experiment").glob("zephyr_7b_*.yaml")) + [CONF_DIR / "experiment" / "dpo.yaml",
                                                                                 CONF_DIR / "experiment" / "sft.yaml"]:
        data = yaml.safe_load(path.read_text())
        assert any("override /module" in str(entry) for entry in data["defaults"]), path.name
        assert "_target_" not in (data.get("module") or {}), path.name
