"""DPOModule with a real Lightning Trainer, the real tokenizer and real `datasets`, no Hydra."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.helpers import pref_row, write_jsonl
from zephyr_lightning import DPOModule, ModelSpec, OptimizerConfig, PreferenceDataModule, dpo_loss


@pytest.fixture
def prefs_dir(tmp_path):
    rows = [pref_row(f"What is {i} plus {i}?", f"Sure! {i} plus {i} is {2 * i}.", "I don't know.") for i in range(10)]
    write_jsonl(tmp_path / "prefs" / "train_prefs.jsonl", rows[:7])
    write_jsonl(tmp_path / "prefs" / "test_prefs.jsonl", rows[7:])
    return tmp_path / "prefs"


def _trainer(tmp_path, **kwargs):
    defaults = dict(
        default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, max_steps=3, num_sanity_val_steps=0,
    )
    return L.Trainer(**{**defaults, **kwargs})


def test_plain_lightning_script_with_local_model_folder(tmp_path, prefs_dir, tiny_model_dir):
    """The README's "use it from your own Lightning project" example, on a save_pretrained folder."""
    datamodule = PreferenceDataModule(str(prefs_dir), tokenizer=str(tiny_model_dir), batch_size=2,
                                      max_length=128, max_prompt_length=64)
    module = DPOModule(str(tiny_model_dir), beta=0.1, optim=OptimizerConfig(lr=1e-3, warmup_ratio=0.0))
    trainer = _trainer(tmp_path, max_steps=-1, max_epochs=1)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 4  # 7 pairs in batches of 2
    for name in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                 "logps/chosen", "logps/rejected"):
        assert f"train/{name}" in trainer.callback_metrics
        assert f"val/{name}" in trainer.callback_metrics
    assert callable(dpo_loss)


def test_reference_is_frozen_untouched_and_outside_the_optimizer(tmp_path, prefs_dir, tokenizer):
    datamodule = PreferenceDataModule(str(prefs_dir), tokenizer, batch_size=2, max_length=128, max_prompt_length=64)
    module = DPOModule(ModelSpec("builtin:tiny-mistral"), optim=OptimizerConfig(lr=1e-2, warmup_ratio=0.0))
    module.configure_model()
    before_ref = {k: v.clone() for k, v in module.reference.state_dict().items()}
    before_policy = {k: v.clone() for k, v in module.model.state_dict().items()}
    # Policy and reference start equal (the reference is rebuilt from the same source and seed).
    assert all(torch.equal(before_ref[k], before_policy[k]) for k in before_ref)

    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=datamodule)

    after_ref = module.reference.state_dict()
    assert all(torch.equal(before_ref[k], after_ref[k]) for k in before_ref)
    assert any(not torch.equal(before_policy[k], v) for k, v in module.model.state_dict().items())
    assert all(not p.requires_grad for p in module.reference.parameters())
    assert not module.reference.training and module.model.training
    optimizer_params = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimizer_params & {id(p) for p in module.reference.parameters()}
    assert optimizer_params == {id(p) for p in module.model.parameters()}


def test_reference_stays_in_eval_mode_through_train_switches():
    module = DPOModule("builtin:tiny-mistral")
    module.configure_model()
    module.train()
    assert module.model.training and not module.reference.training
    assert not any(m.training for m in module.reference.modules())
    module.eval()
    module.train()
    assert not any(m.training for m in module.reference.modules())


def test_checkpoint_holds_policy_only_and_resume_rebuilds_reference(tmp_path, prefs_dir, tokenizer):
    datamodule = PreferenceDataModule(str(prefs_dir), tokenizer, batch_size=2, max_length=128, max_prompt_length=64)
    module = DPOModule("builtin:tiny-mistral", optim=OptimizerConfig(lr=1e-2, warmup_ratio=0.0))
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=datamodule)
    path = tmp_path / "step2.ckpt"
    trainer.save_checkpoint(path)

    checkpoint = torch.load(path, weights_only=True)  # plain data only: loads without pickled classes
    assert not [k for k in checkpoint["state_dict"] if k.startswith("reference.")]
    assert {k[len("model."):] for k in checkpoint["state_dict"]} == set(module.model.state_dict())

    resumed = DPOModule.load_from_checkpoint(path, weights_only=True)
    resumed.configure_model()
    fresh_reference = DPOModule("builtin:tiny-mistral")
    fresh_reference.configure_model()
    for k, v in resumed.reference.state_dict().items():
        assert torch.equal(v, fresh_reference.reference.state_dict()[k])

    trainer2 = _trainer(tmp_path, max_steps=4)
    module2 = DPOModule("builtin:tiny-mistral", optim=OptimizerConfig(lr=1e-2, warmup_ratio=0.0))
    trainer2.fit(module2, datamodule=datamodule, ckpt_path=path)
    assert trainer2.global_step == 4


def test_missing_policy_weights_in_checkpoint_are_an_error(tmp_path):
    module = DPOModule("builtin:tiny-mistral")
    module.configure_model()
    state = {f"model.{k}": v for k, v in module.model.state_dict().items()}
    state.pop("model.lm_head.weight")
    with pytest.raises(KeyError, match="lm_head"):
        module.on_load_checkpoint({"state_dict": state})


def test_validation_metrics_are_means_over_all_pairs(tmp_path, tokenizer):
    # 5 validation pairs in batches of 2: a mean of batch means would weight the last pair double.
    rows = [pref_row(f"Q{i}?", f"Answer number {i}.", "Nope " * (i + 1)) for i in range(5)]
    write_jsonl(tmp_path / "p" / "train_prefs.jsonl", rows)
    write_jsonl(tmp_path / "p" / "test_prefs.jsonl", rows)
    datamodule = PreferenceDataModule(str(tmp_path / "p"), tokenizer, batch_size=2, max_length=64, max_prompt_length=32)
    module = DPOModule("builtin:tiny-mistral", reference=ModelSpec("builtin:tiny-mistral", seed=7))
    trainer = _trainer(tmp_path)
    metrics = trainer.validate(module, datamodule=datamodule)[0]

    per_pair = {k: [] for k in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen")}
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            values = module.preference_step(batch)
            for k in per_pair:
                per_pair[k].append(values[k])
    for k, parts in per_pair.items():
        expected = torch.cat(parts).double().mean().item()
        assert metrics[f"val/{k}"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    margins = torch.cat(per_pair["rewards/margins"])
    assert metrics["val/rewards/accuracies"] == pytest.approx((margins > 0).double().mean().item())


def test_ready_made_model_objects(tmp_path, prefs_dir, tokenizer, tiny_model_dir):
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # eval mode, as from_pretrained returns
    module = DPOModule(policy, beta=0.5)
    assert module.model.training
    assert module.reference is not policy and not module.reference.training
    datamodule = PreferenceDataModule(str(prefs_dir), tokenizer, batch_size=2, max_length=128, max_prompt_length=64)
    _trainer(tmp_path, max_steps=1).fit(module, datamodule=datamodule)


@pytest.mark.parametrize("kwargs,match", [({"beta": 0}, "module.beta"), ({"loss_type": "kto"}, "module.loss_type"),
                                          ({"label_smoothing": 0.7}, "module.label_smoothing")])
def test_bad_hyperparameters_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPOModule("builtin:tiny-mistral", **kwargs)


def test_reference_free_compares_with_a_uniform_reference(tmp_path, prefs_dir, tokenizer):
    """reference_free: no reference model at all; rewards are beta times the policy's own log-probs."""
    datamodule = PreferenceDataModule(str(prefs_dir), tokenizer, batch_size=2, max_length=128, max_prompt_length=64)
    datamodule.setup("validate")
    module = DPOModule("builtin:tiny-mistral", beta=0.2, reference_free=True)
    module.configure_model()
    assert module.reference is None and module.reference_spec is None
    batch = next(iter(datamodule.val_dataloader()))
    with torch.no_grad():
        values = module.preference_step(batch)
    torch.testing.assert_close(values["rewards/chosen"], 0.2 * values["logps/chosen"])
    torch.testing.assert_close(values["rewards/rejected"], 0.2 * values["logps/rejected"])


def test_reference_dtype_rebuilds_the_reference_in_that_dtype():
    module = DPOModule(ModelSpec("builtin:tiny-mistral", dtype="float32"), reference_dtype="bfloat16")
    module.configure_model()
    assert next(module.model.parameters()).dtype == torch.float32
    assert next(module.reference.parameters()).dtype == torch.bfloat16
    assert module.hparams["reference_dtype"] == "bfloat16"
