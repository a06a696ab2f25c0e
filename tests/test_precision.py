"""Real-scale numerics on the tiny model: an optimizer step at the paper's learning rate must change the
weights in every shipped GPU recipe's precision set-up, and the guard must catch the set-up where it does not."""

from __future__ import annotations

import logging

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import capture_fitted, compose
from train import train
from zephyr_lightning.precision import half_spacing, rounded_update_problem, trainable_dtype
from zephyr_lightning.validation import ConfigError, validate_config

FULL_RECIPES = {"zephyr_7b_dpo_full": "tiny_prefs", "zephyr_7b_sft_full": "tiny_chat"}
QLORA_RECIPES = {"zephyr_7b_dpo_qlora": "tiny_prefs", "zephyr_7b_sft_qlora": "tiny_chat"}


def test_half_spacing_is_where_bf16_rounding_starts():
    """Independent check with torch's own rounding: an update just below half the spacing vanishes, just
    above survives, for a weight of the typical size."""
    w = torch.tensor(0.01, dtype=torch.bfloat16)
    h = half_spacing(torch.bfloat16, 0.01)
    assert (w + torch.tensor(0.9 * h, dtype=torch.float32)).to(torch.bfloat16) == w
    assert (w.float() + 1.1 * h).to(torch.bfloat16) != w
    assert rounded_update_problem(torch.bfloat16, 5e-7) and rounded_update_problem(torch.bfloat16, 2e-5)
    assert rounded_update_problem(torch.bfloat16, 1e-3) is None and rounded_update_problem(torch.float32, 5e-7) is None
    assert trainable_dtype("float32", "bf16-true") == torch.bfloat16  # *-true converts the weights
    assert trainable_dtype("float32", "bf16-mixed") == torch.float32  # autocast / FSDP mixed keep them


def _tiny_stage(recipe: str, tmp_path, *extra: str, lr: float = 5e-7):
    """The recipe's own precision set-up (model.dtype and trainer.precision, as composed) on the tiny model
    and the shipped data, one device on CPU: FSDP's bf16-mixed over fp32 shards computes as autocast over
    fp32 weights does on one device. lr 5e-7 (the paper's dDPO lr) unless given, with no warmup, so the first
    step moves."""
    full = compose([f"+experiment={recipe}"], tmp_path)
    overrides = [
        f"+experiment={recipe}", f"data={(FULL_RECIPES | QLORA_RECIPES)[recipe]}", "model.name_or_path=builtin:tiny-mistral",
        f"model.dtype={full.model.dtype}", f"trainer.precision={full.trainer.precision}", "strategy=auto",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_steps=1", "trainer.limit_val_batches=0",
        "trainer.max_epochs=1", "trainer.val_check_interval=null", f"optim.lr={lr}", "optim.warmup_ratio=0",
        "data.batch_size=2", "data.num_proc=null", "logger=csv", "~callbacks.sample_generation", "~callbacks.hf_export",
        "callbacks.model_checkpoint.every_n_train_steps=0", "callbacks.update_guard.steps=1", *extra,
    ]
    return full, compose(overrides, tmp_path / "tiny")


@pytest.mark.parametrize("recipe", sorted(FULL_RECIPES))
def test_full_recipes_precision_keeps_updates_at_the_papers_lr(recipe, tmp_path, monkeypatch):
    full, cfg = _tiny_stage(recipe, tmp_path)
    assert full.model.dtype == "float32" and full.trainer.precision == "bf16-mixed"  # fp32 masters, bf16 compute
    with monkeypatch.context() as patch:  # the recipe's hub model, as on a machine with network access
        import huggingface_hub

        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        assert validate_config(OmegaConf.to_container(full, resolve=True), OmegaConf.to_container(full, resolve=False)) == []
    metrics = train(cfg)
    assert metrics["train/updated_share"] >= 0.9, metrics["train/updated_share"]


@pytest.mark.parametrize("recipe", sorted(QLORA_RECIPES))
def test_qlora_recipes_precision_keeps_adapter_updates_at_the_recipes_lr(recipe, tmp_path, monkeypatch):
    """The QLoRA recipes' set-up on the tiny model: a bf16 frozen base (the recipe's model.dtype), the recipe's
    LoRA adapters, its trainer.precision (bf16-mixed) and its learning rate. ``model.quantization=null``:
    bitsandbytes' 4-bit layers need CUDA, so the base here is plain bf16, the dtype the NF4 weights are
    dequantized to for compute. The adapters must be float32 (peft's autocast_adapter_dtype), so a step at the
    recipe's lr changes >= 90% of the adapter elements that have a gradient. Two steps: at the first only B
    (initialised to zero) has one, and any dtype moves a zero; the second moves A (|A| ~ 0.06, where bf16
    would round away an update of 5e-6)."""
    full = compose([f"+experiment={recipe}"], tmp_path)
    assert (full.model.dtype, full.model.quantization, full.trainer.precision) == ("bfloat16", "4bit", "bf16-mixed")
    _, cfg = _tiny_stage(recipe, tmp_path, "model.quantization=null", "trainer.max_steps=2",
                         "callbacks.update_guard.steps=2", lr=full.optim.lr)
    assert cfg.trainer.max_steps == 2
    assert cfg.model.peft.r == full.model.peft.r and cfg.optim.lr == full.optim.lr
    fitted = capture_fitted(monkeypatch)
    train(cfg)
    model = fitted["module"].model
    guard = next(c for c in fitted["module"].trainer.callbacks if type(c).__name__ == "UpdateGuard")
    assert len(guard.shares) == 2 and min(guard.shares) >= 0.9, guard.shares
    trainable = {name: p.dtype for name, p in model.named_parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable), sorted(trainable)[:3]
    assert set(trainable.values()) == {torch.float32} and frozen == {torch.bfloat16}


def test_bf16_weights_at_the_papers_lr_are_refused_then_caught_at_run_time(tmp_path, caplog):
    _, cfg = _tiny_stage("zephyr_7b_dpo_full", tmp_path, "model.dtype=bfloat16")
    with pytest.raises(ConfigError, match=r"optim\.lr=5e-07: AdamW would update bfloat16 weights.*model\.dtype='bfloat16'"):
        train(cfg)
    # Told that they know, the run goes ahead, and the guard measures what the validator predicted.
    _, cfg = _tiny_stage("zephyr_7b_dpo_full", tmp_path / "forced", "model.dtype=bfloat16",
                         "optim.allow_low_precision_updates=true")
    with caplog.at_level(logging.WARNING, logger="zephyr_lightning.callbacks.update_guard"):
        metrics = train(cfg)
    assert metrics["train/updated_share"] < 0.5
    assert "UPDATES ROUNDED AWAY" in caplog.text and "bfloat16" in caplog.text and "lr=5e-07" in caplog.text
