"""One test per row of the "Mistakes in the command or the config" table of docs/data_errors.md: each is
refused before anything loads, by an error naming the config key and what is wrong with its value."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from tests.helpers import compose
from train import train
from zephyr_lightning.validation import ConfigError, validate_config

# id (as in the docs' table) -> the test that shows it
USER_ERROR_CASES = {
    "trains-nothing": "test_a_run_that_would_train_nothing_is_refused",
    "model-path-missing": "test_a_missing_model_path_is_named_by_its_key",
    "not-a-model": "test_a_folder_without_a_model_is_named_by_its_key",
    "hub-model-offline": "test_an_uncached_hub_model_is_refused_offline",
    "reference-path-missing": "test_a_missing_model_path_is_named_by_its_key",
    "aif-model-path-missing": "test_aif_model_paths_are_checked_for_the_steps_that_run",
    "eval-model-path-missing": "test_eval_model_paths_and_answer_files_are_checked_before_anything_loads",
    "error-display": "tests/test_safe_files.py::test_a_failing_run_tells_a_user_error_in_one_message_and_no_secret",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A folder like a user's runs/: an SFT export (a model folder) and a folder that holds no model."""
    root = tmp_path_factory.mktemp("runs")
    (root / "sft" / "hf").mkdir(parents=True)
    (root / "sft" / "hf" / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("")
    return root


def _errors(tmp_path, *overrides: str) -> list[str]:
    cfg = compose(["+experiment=dpo", *overrides], tmp_path)
    return validate_config(OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_container(cfg, resolve=False))


@pytest.mark.parametrize("override", ["trainer.max_epochs=0", "trainer.max_steps=0"])
def test_a_run_that_would_train_nothing_is_refused(tmp_path, override):
    key, value = override.split("=")
    assert _errors(tmp_path, override) == [
        f"{key}={value}: trains nothing (the run would load the model and data, then export an untrained model)"]


def test_a_missing_model_path_is_named_by_its_key(tmp_path, runs, monkeypatch):
    assert _errors(tmp_path, "model.name_or_path=/nonexistent/model") == [
        "model.name_or_path='/nonexistent/model': no such folder"]
    typo = runs / "sft" / "hff"
    assert _errors(tmp_path, f"model.name_or_path={typo}") == [
        f"model.name_or_path='{typo}': no such folder; did you mean '{runs / 'sft' / 'hf'}'?"]
    assert _errors(tmp_path, f"model.name_or_path={runs / 'sft' / 'hf'}") == []
    assert _errors(tmp_path, f"+module.reference={typo}") == [
        f"module.reference='{typo}': no such folder; did you mean '{runs / 'sft' / 'hf'}'?"]
    assert _errors(tmp_path, f"+module.reference={{_target_: zephyr_lightning.ModelSpec, name_or_path: {typo}}}") == [
        f"module.reference.name_or_path='{typo}': no such folder; did you mean '{runs / 'sft' / 'hf'}'?"]

    # ... before a tokenizer, a data set or a model is loaded (the data module loads the tokenizer first).
    import zephyr_lightning.data.base as data_base
    import zephyr_lightning.models as models

    def must_not_load(*args, **kwargs):
        raise AssertionError("loaded before the model path was checked")

    monkeypatch.setattr(data_base, "load_tokenizer", must_not_load)
    monkeypatch.setattr(models, "load_causal_lm", must_not_load)
    with pytest.raises(ConfigError, match=r"model\.name_or_path='.*hff': no such folder; did you mean"):
        train(compose(["+experiment=dpo", f"model.name_or_path={typo}"], tmp_path))


def test_a_folder_without_a_model_is_named_by_its_key(tmp_path, runs):
    assert _errors(tmp_path, f"model.name_or_path={runs / 'notes'}") == [
        f"model.name_or_path='{runs / 'notes'}': the folder holds no model (no config.json or adapter_config.json); "
        "it has ['todo.txt']"]
    file = runs / "notes" / "todo.txt"
    assert _errors(tmp_path, f"model.name_or_path={file}") == [
        f"model.name_or_path='{file}': is a file; a local model is a folder (with config.json), e.g. an export DIR/hf"]
    assert _errors(tmp_path, f"+model.tokenizer_name_or_path={runs / 'sft' / 'hf'}") == [
        f"model.tokenizer_name_or_path='{runs / 'sft' / 'hf'}': the folder holds no tokenizer (no "
        "tokenizer_config.json or tokenizer.json or tokenizer.model); it has ['config.json']"]


def test_an_uncached_hub_model_is_refused_offline(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert _errors(tmp_path, "model.name_or_path=someone/not-cached-model") == [
        "model.name_or_path='someone/not-cached-model': not a local folder, and not in the local hub cache "
        "(HF_HUB_OFFLINE=1 allows no download)"]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert _errors(tmp_path, "model.name_or_path=someone/not-cached-model") == []  # loading will tell


def test_aif_model_paths_are_checked_for_the_steps_that_run(tmp_path, runs):
    from zephyr_lightning.cli.aif import CONF_DIR, check_steps_config
    from zephyr_lightning.cli.configs import compose as compose_config

    cfg = compose_config("aif", ["generate=local", f"generate.models.local.model.name_or_path={runs / 'sft' / 'hff'}",
                                 "judge=reward_model", f"judge.model.name_or_path={runs / 'notes'}",
                                 f"run_dir={tmp_path}"], config_dir=CONF_DIR)
    with pytest.raises(ConfigError) as err:
        check_steps_config(cfg, ["generate", "judge", "binarize"])
    assert err.value.errors == [
        f"generate.models.local.model.name_or_path='{runs / 'sft' / 'hff'}': no such folder; did you mean "
        f"'{runs / 'sft' / 'hf'}'?",
        f"judge.model.name_or_path='{runs / 'notes'}': the folder holds no model (no config.json or "
        "adapter_config.json); it has ['todo.txt']",
    ]
    check_steps_config(cfg, ["binarize"])  # a step that loads no model does not need them


def test_eval_model_paths_and_answer_files_are_checked_before_anything_loads(tmp_path, runs, monkeypatch):
    from zephyr_lightning.cli.configs import compose as compose_config
    from zephyr_lightning.cli.configs import conf_dir
    from zephyr_lightning.cli.evaluate import run

    answers = tmp_path / "answers"
    answers.mkdir()
    cfg = compose_config("eval", [
        "models=zephyr_runs", f"models.dsft.model.name_or_path={runs / 'sft' / 'hff'}",
        f"models.ddpo.model.name_or_path={runs / 'notes'}",
        f"+models.gpt4={{_target_: zephyr_lightning.evaluate.AnswerFile, path: {answers / 'gpt-4.jsonl'}}}",
        f"+models.alpaca={{_target_: zephyr_lightning.evaluate.AnswerFile, path: {answers}, split: eval}}",
        f"run_dir={tmp_path / 'run'}"], config_dir=conf_dir() / "eval")

    import zephyr_lightning.evaluate.answers as answer_files
    import zephyr_lightning.models as models

    def must_not_load(*args, **kwargs):
        raise AssertionError("loaded before the model paths were checked")

    monkeypatch.setattr(models, "load_causal_lm", must_not_load)
    monkeypatch.setattr(answer_files, "load_split", must_not_load)
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert err.value.errors == [
        f"models.dsft.model.name_or_path='{runs / 'sft' / 'hff'}': no such folder; did you mean '{runs / 'sft' / 'hf'}'?",
        f"models.ddpo.model.name_or_path='{runs / 'notes'}': the folder holds no model (no config.json or "
        "adapter_config.json); it has ['todo.txt']",
        f"models.gpt4.path='{answers / 'gpt-4.jsonl'}': data file or folder '{answers / 'gpt-4.jsonl'}' does not exist",
        f"models.alpaca.path='{answers}': {answers}: no file for split 'eval' (expected eval.jsonl, .json or .parquet); "
        "found []",
    ]
    assert not (tmp_path / "run").exists()
    # A model given as a path string (LocalGenerator's `model`) is checked under its own key.
    cfg = compose_config("eval", ["models=zephyr_runs", f"models.dsft.model={runs / 'sft' / 'hff'}",
                                  f"models.ddpo.model.name_or_path={runs / 'sft' / 'hf'}", f"run_dir={tmp_path / 'run'}"],
                         config_dir=conf_dir() / "eval")
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert err.value.errors == [f"models.dsft.model='{runs / 'sft' / 'hff'}': no such folder; did you mean "
                                f"'{runs / 'sft' / 'hf'}'?"]
