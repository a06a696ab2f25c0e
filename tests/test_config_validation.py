"""validate_config: every bad value named by its Hydra key and value, all at once, before anything loads."""

from __future__ import annotations

import copy

import pytest
from omegaconf import OmegaConf

from tests.helpers import compose, pref_row, write_jsonl
from train import train
from zephyr_lightning.validation import ConfigError, check_config, validate_config


@pytest.fixture(scope="module")
def dpo_config(tmp_path_factory):
    """The shipped dpo experiment, resolved to plain values as train.py hands it to the validator."""
    cfg = compose(["+experiment=dpo"], tmp_path_factory.mktemp("run"))
    return OmegaConf.to_container(cfg, resolve=True)


def _with(cfg: dict, **values) -> dict:
    out = copy.deepcopy(cfg)
    for dotted, value in values.items():
        *parents, last = dotted.split("__")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def test_shipped_experiments_are_valid(tmp_path):
    for experiment in ("dpo", "sft"):
        cfg = OmegaConf.to_container(compose([f"+experiment={experiment}"], tmp_path), resolve=True)
        assert validate_config(cfg) == []


@pytest.mark.parametrize(
    "values,expected",
    [
        ({"module__beta": 0.0}, "module.beta=0.0: must be > 0"),
        ({"module__beta": -0.1}, "module.beta=-0.1: must be > 0"),
        ({"module__beta": "high"}, "module.beta='high': must be a number"),
        ({"optim__lr": 0}, "optim.lr=0: must be > 0"),
        ({"optim__warmup_ratio": 1.0}, "optim.warmup_ratio=1.0: must be < 1"),
        ({"optim__warmup_ratio": -0.1}, "optim.warmup_ratio=-0.1: must be >= 0"),
        ({"data__max_prompt_length": 256}, "data.max_prompt_length=256: must be < data.max_length (256)"),
        ({"data__max_prompt_length": 300}, "data.max_prompt_length=300: must be < data.max_length (256)"),
        ({"module__loss_type": "kto"}, "module.loss_type='kto': must be one of ['sigmoid', 'ipo', 'hinge']"),
        ({"data__train_split": "train_gen"}, "data.train_split='train_gen': "),
        ({"data__on_bad_row": "ignore"}, "data.on_bad_row='ignore': must be one of ['error', 'skip']"),
        ({"optim__schedule": "step"}, "optim.schedule='step': must be one of"),
        ({"data__batch_size": 0}, "data.batch_size=0: must be >= 1"),
        ({"module__label_smoothing": 0.5}, "module.label_smoothing=0.5: must be < 0.5"),
        ({"callbacks__nonfinite_guard__mode": "ignore"}, "callbacks.nonfinite_guard.mode='ignore': must be one of"),
        ({"resume": "yes"}, "resume='yes': must be true, false or auto"),
        ({"ckpt_path": "/no/such.ckpt"}, "ckpt_path='/no/such.ckpt': no such checkpoint file"),
        ({"model__dtype": "float8"}, "model.dtype='float8': must be one of"),
    ],
)
def test_each_rule_names_key_and_value(dpo_config, values, expected):
    errors = validate_config(_with(dpo_config, **values))
    assert len(errors) == 1 and errors[0].startswith(expected), errors


def test_missing_local_split_names_the_folder_and_what_is_there(tmp_path, dpo_config):
    write_jsonl(tmp_path / "prefs" / "train_prefs.jsonl", [pref_row("Q?", "A.", "B.")])
    errors = validate_config(_with(dpo_config, data__path=str(tmp_path / "prefs")))
    assert errors == [
        f"data.val_split='test_prefs': {tmp_path / 'prefs'}: no file for split 'test_prefs' (expected "
        "test_prefs.jsonl, .json or .parquet); found ['train_prefs.jsonl']"
    ]


def test_hub_split_is_left_to_loading_when_it_cannot_be_checked_offline(dpo_config, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="zephyr_lightning"):
        errors = validate_config(_with(dpo_config, data__path="HuggingFaceH4/ultrafeedback_binarized"))
    assert errors == []
    assert "data.train_split='train_prefs': not checked before loading" in caplog.text


def test_all_errors_are_reported_together(dpo_config):
    bad = _with(dpo_config, module__beta=0, optim__lr=-1.0, optim__warmup_ratio=1.5, data__max_prompt_length=512,
                module__loss_type="dpo", data__val_split="nope")
    with pytest.raises(ConfigError) as err:
        check_config(bad)
    keys = [e.split("=", 1)[0] for e in err.value.errors]
    assert keys == ["module.beta", "module.loss_type", "optim.lr", "optim.warmup_ratio", "data.max_prompt_length",
                    "data.val_split"]
    assert "6 invalid config value(s)" in str(err.value)


def test_train_validates_before_loading_anything(tmp_path, monkeypatch):
    import zephyr_lightning.data.base as data_base
    import zephyr_lightning.models as models

    def must_not_load(*args, **kwargs):
        raise AssertionError("a tokenizer or model was loaded before the config was checked")

    monkeypatch.setattr(data_base, "load_tokenizer", must_not_load)
    monkeypatch.setattr(models, "load_causal_lm", must_not_load)
    with pytest.raises(ConfigError, match=r"module\.beta=0\.0: must be > 0") as err:
        train(compose(["+experiment=dpo", "module.beta=0.0", "optim.lr=0.0"], tmp_path))
    assert "optim.lr=0.0: must be > 0" in str(err.value)
