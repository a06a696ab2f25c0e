"""Every shipped config composes, instantiates, and trains through train.py's code path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from transformers import AutoModelForCausalLM

from tests.helpers import CONF_DIR, capture_fitted, compose
from train import train

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
FAST = ["trainer.fast_dev_run=true", "logger=csv", "callbacks.sample_generation.max_new_tokens=4"]


def test_dpo_experiment_fits_and_export_matches_module(tmp_path, monkeypatch):
    captured = capture_fitted(monkeypatch)
    # No warmup: transformers' linear warmup gives lr 0 at the first step, and fast_dev_run takes one.
    cfg = compose(["+experiment=dpo", *FAST, "optim.warmup_ratio=0"], tmp_path)
    metrics = train(cfg)
    assert "train/loss" in metrics and "val/rewards/accuracies" in metrics

    export = tmp_path / "hf"
    assert (export / "model.safetensors").exists() and (export / "tokenizer_config.json").exists()
    exported = AutoModelForCausalLM.from_pretrained(export).eval()
    trained = captured["module"].model.eval()
    ids = torch.randint(3, 32000, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, trained(ids).logits, rtol=0, atol=0)
    # The trained policy moved away from its initial weights, so the equality above is meaningful.
    from zephyr_lightning.models import build_tiny_mistral

    initial = build_tiny_mistral(seed=0)
    assert not torch.equal(initial.lm_head.weight, exported.lm_head.weight)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment, tmp_path):
    _check_stage(experiment, compose([f"+experiment={experiment}"], tmp_path))


def _check_stage(experiment, cfg):
    assert cfg.module is not None, f"experiment {experiment} sets no module"
    module = instantiate(cfg.module, _convert_="all")
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c]
    assert module is not None and callbacks
    if not isinstance(cfg.trainer.strategy, str):
        assert instantiate(cfg.trainer.strategy) is not None
    if str(cfg.model.name_or_path).startswith("builtin:"):
        datamodule = instantiate(cfg.data, _convert_="all")
        assert datamodule.tokenizer.chat_template


@pytest.mark.parametrize("overrides", [["model=zephyr_7b_sft", "data=ultrafeedback"], ["strategy=ddp", "trainer=gpu"],
                                       ["strategy=fsdp"]])
def test_real_recipe_groups_compose_without_network(overrides, tmp_path):
    cfg = compose(["+experiment=dpo", *overrides], tmp_path)
    spec = instantiate(cfg.model, _convert_="all")
    if "model=zephyr_7b_sft" in overrides:
        assert spec.name_or_path == "HuggingFaceH4/mistral-7b-sft-beta" and spec.dtype == "float32"  # fp32 masters
        assert cfg.data.path == "HuggingFaceH4/ultrafeedback_binarized"
        assert (cfg.data.train_split, cfg.data.val_split) == ("train_prefs", "test_prefs")
    elif "strategy=fsdp" in overrides:
        strategy = instantiate(cfg.trainer.strategy)
        assert type(strategy).__name__ == "FSDPStrategy" and cfg.trainer.precision == "bf16-mixed"
        from transformers.models.mistral.modeling_mistral import MistralDecoderLayer

        assert strategy.kwargs["auto_wrap_policy"]._module_classes == {MistralDecoderLayer}
    else:
        trainer_cfg = instantiate(cfg.trainer.strategy)
        assert type(trainer_cfg).__name__ == "DDPStrategy"


def test_deepspeed_strategy_names_its_missing_dependency(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    cfg = compose(["+experiment=dpo", "strategy=deepspeed_zero3"], tmp_path)
    with pytest.raises(Exception, match=r"pip install -e '.\[deepspeed\]'"):
        instantiate(cfg.trainer.strategy)


def test_local_model_folder_is_the_same_code_path(tmp_path, tiny_model_dir):
    cfg = compose(["+experiment=dpo", *FAST, f"model.name_or_path={tiny_model_dir}"], tmp_path)
    train(cfg)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert exported.config.hidden_size == 64


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb"])
def test_loggers(logger, tmp_path):
    # fast_dev_run swaps loggers for a dummy, so run two real batches instead.
    cfg = compose(["+experiment=dpo", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
                   "trainer.max_epochs=1", f"logger={logger}", "callbacks.sample_generation.max_new_tokens=4"], tmp_path)
    train(cfg)
    if logger == "csv":
        assert list(Path(tmp_path).glob("csv/**/metrics.csv"))
        # SampleGeneration: one line per fixed prompt at the validation, with its step.
        samples = [json.loads(line) for f in Path(tmp_path).glob("**/samples.jsonl") for line in f.read_text().splitlines()]
        assert len(samples) == 3 and all(s["step"] == 2 and s["prompt"] for s in samples)
    if logger == "tensorboard":
        assert list(Path(tmp_path).glob("tensorboard/**/events.out.tfevents.*"))
    if logger == "wandb":
        import wandb

        assert wandb.run is None  # finished, so that the next job of a multirun logs to a run of its own


def test_missing_experiment_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"\+experiment=dpo"):
        train(compose([], tmp_path))
