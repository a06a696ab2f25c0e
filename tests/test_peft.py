"""LoRA and QLoRA through PEFT: one copy of the base in dDPO, the reference as the adapter-free base, adapter-only
checkpoints, adapter and merged exports, dSFT -> dDPO both ways, QLoRA refused on CPU before anything loads."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM

from tests.fake_hub import FakeHub
from tests.helpers import capture_fitted, compose, pref_row, write_jsonl
from tests.test_modelcard import TOKEN, assert_token_only_in_authorization_header, card_metadata, folder_files
from train import train
from zephyr_lightning import DPOModule, ModelSpec, OptimizerConfig, PreferenceDataModule
from zephyr_lightning.arguments import ArgumentError
from zephyr_lightning.callbacks import HFExport
from zephyr_lightning.export import export_checkpoint
from zephyr_lightning.export import main as export_main
from zephyr_lightning.logprobs import pair_logprobs
from zephyr_lightning.modelcard import is_hub_id
from zephyr_lightning.models import build_tiny_mistral
from zephyr_lightning.validation import ConfigError, validate_config

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Short runs of the shipped experiments: 12 steps of 8 pairs, 32 validation pairs, no sample generation.
SHORT = ["logger=csv", "~callbacks.sample_generation", "trainer.max_epochs=1", "+data.max_train_samples=96",
         "+data.max_val_samples=32"]


def _ids() -> torch.Tensor:
    return torch.randint(3, 32000, (2, 23), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    return model.eval()(_ids()).logits


def _bytes(module: torch.nn.Module) -> int:
    """Bytes of every distinct tensor storage a module holds (parameters and buffers)."""
    storages = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _fit(monkeypatch, overrides, output_dir):
    """train() on the composed config; returns the LightningModule it fitted and the final metrics."""
    original = L.Trainer.fit
    captured = capture_fitted(monkeypatch)
    metrics = train(compose(overrides, output_dir))
    monkeypatch.setattr(L.Trainer, "fit", original)  # the next call spies on the real fit, not on this spy
    return captured["module"], metrics


@pytest.fixture(scope="module")
def prefs_dir(tmp_path_factory):
    rows = [pref_row(f"What is {i} plus {i}?", f"It is {2 * i}. " * (1 + i % 3), "No idea " * (1 + i % 2))
            for i in range(12)]
    folder = tmp_path_factory.mktemp("prefs")
    write_jsonl(folder / "train_prefs.jsonl", rows[:8])
    write_jsonl(folder / "test_prefs.jsonl", rows[8:])
    return folder


def _batch(prefs_dir, tokenizer):
    data = PreferenceDataModule(str(prefs_dir), tokenizer, batch_size=4, max_length=96, max_prompt_length=48)
    data.setup("fit")
    return data, next(iter(data.val_dataloader()))


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    options = dict(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    return L.Trainer(**{**options, **kwargs})


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """`python train.py +experiment=dpo model/peft=lora`, shortened: the fitted module, metrics and run folder."""
    run_dir = tmp_path_factory.mktemp("lora_dpo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "disabled")
        module, metrics = _fit(patch, ["+experiment=dpo", "model/peft=lora", *SHORT], run_dir)
    return module, metrics, run_dir


def test_embedded_lora_default_learns(lora_run):
    module, metrics, _ = lora_run
    trainable = [p for p in module.model.parameters() if p.requires_grad]
    assert trainable and sum(p.numel() for p in trainable) < 0.02 * sum(p.numel() for p in module.model.parameters())
    # A policy equal to its reference scores 0 (strictly greater rewards only): 12 LoRA steps must move it.
    assert metrics["val/rewards/accuracies"] > 0.5, metrics
    assert metrics["train/updated_share"] >= 0.9  # float32 adapters keep every update


def test_checkpoint_holds_the_adapter_weights_only(lora_run):
    module, _, run_dir = lora_run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    keys = set(checkpoint["state_dict"])
    assert keys == module.adapter_keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    adapter_numel = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    assert sum(t.numel() for t in checkpoint["state_dict"].values()) == adapter_numel
    assert checkpoint["hyper_parameters"]["policy"]["peft"]["r"] == 16  # plain data: rebuilds the same adapter


def test_adapter_folder_loads_with_peft_and_merged_export_equals_it(lora_run, tmp_path):
    module, _, run_dir = lora_run
    trained = _logits(module.model)
    adapter = PeftModel.from_pretrained(build_tiny_mistral(seed=0), run_dir / "hf-adapter")
    torch.testing.assert_close(_logits(adapter), trained, rtol=0, atol=1e-5)
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "hf")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged), trained, rtol=0, atol=1e-5)
    assert (_logits(build_tiny_mistral(seed=0)) - trained).abs().max() > 1e-3  # the adapter changed the model
    # `python -m zephyr_lightning.export` of the adapter-only checkpoint writes the same two folders.
    out = export_checkpoint(run_dir / "checkpoints" / "last.ckpt", tmp_path / "export")
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(out)), trained, rtol=0, atol=1e-5)
    assert (tmp_path / "export-adapter" / "adapter_model.safetensors").exists()

    # The two model cards the run wrote: the Hub's metadata, the base, the LoRA settings, the kind of export.
    merged_card, adapter_card = (run_dir / "hf" / "README.md").read_text(), (run_dir / "hf-adapter" / "README.md").read_text()
    merged_meta, adapter_meta = card_metadata(merged_card), card_metadata(adapter_card)
    assert adapter_meta["library_name"] == "peft" and merged_meta["library_name"] == "transformers"
    assert adapter_meta["tags"] == ["zephyr-lightning", "dpo", "lora", "peft"] and merged_meta["tags"] == ["zephyr-lightning", "dpo", "lora"]
    # The base is builtin:tiny-mistral, which the Hub cannot resolve: no base_model in the metadata (a Hub id
    # would be there: test_modelcard.py), and the prose names it; the adapter's own config names it too.
    assert "base_model" not in merged_meta and "base_model" not in adapter_meta
    base = module.model_spec.name_or_path
    for card in (merged_card, adapter_card):
        assert f"fine-tune of `{base}`" in card.split("## Use it")[0], card[:600]
        for row in ("| LoRA rank (r) | 16 |", "| LoRA alpha | 16 |", "| LoRA dropout | 0.05 |",
                    "| LoRA target modules | " + ", ".join(sorted(TARGETS)) + " |"):
            assert row in card, row
    assert "the trained LoRA adapter only" in adapter_card and "AutoPeftModelForCausalLM" in adapter_card
    assert "merged into its weights" in merged_card and "AutoPeftModelForCausalLM" not in merged_card


@pytest.fixture
def fake_hub(monkeypatch):
    """A loopback Hub (tests/fake_hub.py) with a token in the environment; every file answered "regular"."""
    import huggingface_hub

    with FakeHub(lfs_suffixes=()) as hub:
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield hub


def test_only_global_rank_zero_pushes_and_an_adapter_run_pushes_the_folder_chosen(lora_run, fake_hub, monkeypatch):
    """The callback's end of fit on a fake trainer (rank gate), the export itself already written by the run:
    a non-zero rank takes part in the gather but writes and pushes nothing; rank 0 pushes. With the built-in
    base, ``push_export=auto`` pushes the merged model (an adapter of ``builtin:tiny-mistral`` loads nowhere
    else); ``adapter`` pushes the adapter folder."""
    _, _, run_dir = lora_run
    gathered = []

    def trainer(rank_zero: bool):
        strategy = SimpleNamespace(lightning_module_state_dict=lambda: gathered.append(rank_zero) or {})
        return SimpleNamespace(is_global_zero=rank_zero, strategy=strategy)

    def end_of_fit(callback: HFExport, rank_zero: bool) -> None:
        monkeypatch.setattr(callback, "export", lambda *args: None)  # the run wrote run_dir/hf and hf-adapter
        callback.on_fit_end(trainer(rank_zero), None)

    merged = HFExport(run_dir / "hf", push_to_hub=True, hub_model_id="me/lora")
    end_of_fit(merged, rank_zero=False)
    assert gathered == [False] and fake_hub.requests == [] and fake_hub.repos == {}
    end_of_fit(merged, rank_zero=True)
    assert fake_hub.files("me/lora") == folder_files(run_dir / "hf")
    assert "model.safetensors" in fake_hub.files("me/lora")  # auto -> merged: the builtin base is not on the Hub

    adapter = HFExport(run_dir / "hf", push_to_hub=True, hub_model_id="me/lora-adapter", push_export="adapter")
    end_of_fit(adapter, rank_zero=False)
    assert "me/lora-adapter" not in fake_hub.repos
    end_of_fit(adapter, rank_zero=True)
    assert fake_hub.files("me/lora-adapter") == folder_files(run_dir / "hf-adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(fake_hub.files("me/lora-adapter"))
    assert_token_only_in_authorization_header(fake_hub)
    with pytest.raises(ArgumentError, match=r"callbacks\.hf_export\.push_export='both': .*'auto', 'adapter', 'merged'"):
        HFExport(run_dir / "hf", push_export="both")


def test_export_command_pushes_an_adapter_run_as_chosen(lora_run, fake_hub, tmp_path):
    """`python -m zephyr_lightning.export` on an adapter run's exports (copied; the adapter's base rewritten to a
    Hub id, as a 7B recipe's is): auto pushes the adapter then, as TRL and the handbook do; --push-export
    merged the merged model; the merged folder named without --push-export is pushed as it is."""
    _, _, run_dir = lora_run
    for name in ("hf", "hf-adapter"):
        shutil.copytree(run_dir / name, tmp_path / "run" / name)
    config_file = tmp_path / "run" / "hf-adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    assert not is_hub_id(config["base_model_name_or_path"])  # the run's own: the built-in model
    config_file.write_text(json.dumps({**config, "base_model_name_or_path": "HuggingFaceH4/mistral-7b-sft-beta"}))
    merged, adapter = tmp_path / "run" / "hf", tmp_path / "run" / "hf-adapter"

    export_main([str(merged), "--push-to-hub", "me/auto", "--push-export", "auto"])
    assert fake_hub.files("me/auto") == folder_files(adapter)
    export_main([str(merged), "--push-to-hub", "me/merged", "--push-export", "merged"])
    assert fake_hub.files("me/merged") == folder_files(merged)
    export_main([str(merged), "--push-to-hub", "me/as-is"])
    assert fake_hub.files("me/as-is") == folder_files(merged)
    export_main([str(adapter), "--push-to-hub", "me/adapter-as-is", "--push-export", "merged"])
    assert fake_hub.files("me/adapter-as-is") == folder_files(adapter)  # an adapter folder named is the adapter
    assert_token_only_in_authorization_header(fake_hub)


def test_lora_dpo_holds_one_base_and_its_reference_is_the_untouched_base(prefs_dir, tokenizer, tmp_path):
    data, batch = _batch(prefs_dir, tokenizer)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=TARGETS)
    module = DPOModule(ModelSpec(peft=lora), optim=OptimizerConfig(lr=1e-2, warmup_ratio=0.0))
    _trainer(tmp_path, max_steps=3, limit_val_batches=0).fit(module, datamodule=data)

    base = build_tiny_mistral(seed=0)
    adapters = sum(p.numel() * p.element_size() for p in module.model.parameters() if p.requires_grad)
    assert _bytes(module) == _bytes(base) + adapters  # base + adapters
    full = DPOModule(ModelSpec())
    full.configure_model()
    assert _bytes(full) == 2 * _bytes(base)  # what a separate reference costs: the comparison can fail

    module.train()  # as in a training step: dropout on (the reference pass must not see it)
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    policy = pair_logprobs(module.model, batch)
    reference = module.reference_logps(batch, policy)
    with torch.no_grad():
        untouched = pair_logprobs(base.eval(), batch)
    torch.testing.assert_close(reference.chosen, untouched.chosen, rtol=0, atol=1e-5)
    torch.testing.assert_close(reference.rejected, untouched.rejected, rtol=0, atol=1e-5)
    assert (policy.chosen - untouched.chosen).abs().max() > 1e-3  # the adapters trained
    assert module.model.training and {n for n, p in module.model.named_parameters() if p.requires_grad} == trainable


def test_precomputed_reference_with_lora_gives_the_shared_reference_losses(prefs_dir, tokenizer, tmp_path):
    # Adapters that do not start as a no-op (init_lora_weights=False), so rewards are not all zero.
    lora = {"r": 4, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False}

    def validate(module):
        data = PreferenceDataModule(str(prefs_dir), tokenizer, batch_size=2, max_length=96, max_prompt_length=48)
        return _trainer(tmp_path).validate(module, datamodule=data, verbose=False)[0]

    live_module = DPOModule(ModelSpec(peft=lora))
    cache = tmp_path / "cache"
    pre_module = DPOModule(ModelSpec(peft=lora), precompute_reference=True, reference_cache_dir=str(cache))
    for module in (live_module, pre_module):
        module.configure_model()
    pre_module.model.load_state_dict(live_module.model.state_dict())  # the same adapters in both
    live, pre = validate(live_module), validate(pre_module)
    assert pre_module.reference is None and not pre_module.reference_shares_policy
    assert abs(live["val/rewards/margins"]) > 1e-3
    for key, value in live.items():
        assert pre[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert len(list(cache.glob("*.pt"))) == 1


def test_sft_to_dpo_from_the_merged_export_and_continuing_the_adapter(tokenizer, tmp_path, monkeypatch):
    _fit(monkeypatch, ["+experiment=sft", "model/peft=lora", *SHORT[:3], "trainer.max_steps=4",
                                "trainer.limit_val_batches=1"], tmp_path / "sft")
    sft_adapted = PeftModel.from_pretrained(build_tiny_mistral(seed=0), tmp_path / "sft" / "hf-adapter").eval()
    dpo_short = ["+experiment=dpo", *SHORT, "trainer.max_steps=3", "trainer.limit_val_batches=1"]
    data = PreferenceDataModule("builtin:tiny_prefs", tokenizer, batch_size=4, max_length=128, max_prompt_length=64,
                                max_train_samples=4, max_val_samples=4)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        sft_logps = pair_logprobs(sft_adapted, batch)
        assert (sft_logps.chosen - pair_logprobs(build_tiny_mistral(seed=0).eval(), batch).chosen).abs().max() > 1e-3

    # 1. From the merged export, with a new adapter: the reference is that export (adapters disabled).
    merged_run, _ = _fit(monkeypatch, [*dpo_short, "model/peft=lora", f"model.name_or_path={tmp_path / 'sft' / 'hf'}"],
                         tmp_path / "dpo_merged")
    reference = merged_run.reference_logps(batch, pair_logprobs(merged_run.model, batch))
    torch.testing.assert_close(reference.chosen, sft_logps.chosen, rtol=0, atol=1e-4)

    # 2. Continuing the SFT adapter: it keeps training; a frozen copy on the same base is the reference.
    continued, _ = _fit(monkeypatch, [*dpo_short, f"model.name_or_path={tmp_path / 'sft' / 'hf-adapter'}"],
                        tmp_path / "dpo_continued")
    assert set(continued.model.peft_config) == {"default", "reference"}
    policy = pair_logprobs(continued.model, batch)
    reference = continued.reference_logps(batch, policy)
    torch.testing.assert_close(reference.chosen, sft_logps.chosen, rtol=0, atol=1e-5)
    torch.testing.assert_close(reference.rejected, sft_logps.rejected, rtol=0, atol=1e-5)
    assert (policy.chosen - reference.chosen).abs().max() > 1e-3  # the continued adapter moved on
    checkpoint = torch.load(tmp_path / "dpo_continued" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"] and all(".default." in k for k in checkpoint["state_dict"])
    exported = PeftModel.from_pretrained(build_tiny_mistral(seed=0), tmp_path / "dpo_continued" / "hf-adapter")
    torch.testing.assert_close(_logits(exported), _logits(continued.model), rtol=0, atol=1e-5)


def test_qlora_is_refused_on_cpu_before_any_model_loads(tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(ModelSpec, "load_model", lambda self: loads.append("model"))
    monkeypatch.setattr("zephyr_lightning.models.load_tokenizer", lambda spec: loads.append("tokenizer"))
    with pytest.raises(ConfigError) as raised:
        train(compose(["+experiment=dpo", "model/peft=lora", "model.quantization=4bit"], tmp_path))
    assert len(raised.value.errors) == 1, raised.value.errors
    assert raised.value.errors[0].startswith("model.quantization='4bit': ") and "CUDA" in raised.value.errors[0]
    assert loads == []
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"model\.quantization='8bit': .*CUDA"):
        ModelSpec(quantization="8bit", peft={"r": 4}).load_model()


def test_quantized_weights_without_adapters_are_not_trainable(tmp_path):
    cfg = compose(["+experiment=sft", "model.quantization=4bit", "trainer.accelerator=gpu"], tmp_path)
    errors = validate_config(OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_container(cfg, resolve=False))
    assert any(e.startswith("model.quantization='4bit': 4bit weights are frozen") for e in errors), errors
    with pytest.raises(ArgumentError, match=r"model\.quantization='4bit': 4bit weights are frozen"):
        DPOModule(ModelSpec(quantization="4bit"))
    DPOModule(ModelSpec(), reference=ModelSpec(quantization="4bit"))  # a frozen reference may be quantized


def test_adapters_are_float32_on_a_bf16_base(tmp_path):
    model = ModelSpec(dtype="bfloat16", peft={"r": 4, "target_modules": ["q_proj"]}).load_model()
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    assert dtypes == {torch.float32} and model.get_base_model().lm_head.weight.dtype == torch.bfloat16

    def errors(*extra):
        cfg = compose(["+experiment=dpo", "model.dtype=bfloat16", "optim.lr=5e-7", *extra], tmp_path)
        return validate_config(OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_container(cfg, resolve=False))

    assert errors("model/peft=lora") == []  # float32 adapters keep lr 5e-7 updates
    assert errors() and errors()[0].startswith("optim.lr=5e-07")  # bf16 weights trained in place would not


def test_lora_settings_are_checked_with_their_keys(tmp_path):
    with pytest.raises(ArgumentError, match=r"model\.peft\.r=0: must be >= 1"):
        ModelSpec(peft={"r": 0})
    cfg = compose(["+experiment=dpo", "model/peft=lora", "model.peft.lora_dropout=1.5", "model.peft.bias=some",
                   "+model.peft.rank=8"], tmp_path)
    errors = validate_config(OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_container(cfg, resolve=False))
    assert any(e.startswith("model.peft.lora_dropout=1.5: must be < 1") for e in errors), errors
    assert any(e.startswith("model.peft.bias='some': must be one of") for e in errors), errors
    assert any(e.startswith("model.peft.rank=8: not an argument of LoraConfig") for e in errors), errors


def _errors(cfg) -> list[str]:
    return validate_config(OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_container(cfg, resolve=False))


@pytest.mark.parametrize("recipe", ["zephyr_7b_sft_qlora", "zephyr_7b_dpo_qlora"])
def test_qlora_recipes_are_valid_but_for_the_missing_gpu(recipe, tmp_path, hub_names_unchecked):
    cfg = compose([f"+experiment={recipe}"], tmp_path)
    assert cfg.model.quantization == "4bit" and cfg.model.peft._target_ == "peft.LoraConfig"
    assert (cfg.model.dtype, cfg.trainer.precision, cfg.trainer.devices) == ("bfloat16", "bf16-mixed", 1)
    assert cfg.model.peft.r == (16 if "sft" in recipe else 128) == cfg.model.peft.lora_alpha
    assert [e.split(":")[0] for e in _errors(cfg)] == ["model.quantization='4bit'"]  # only: no CUDA here
    ddp = compose([f"+experiment={recipe}", "strategy=ddp", "trainer.devices=8"], tmp_path)
    assert [e.split(":")[0] for e in _errors(ddp)] == ["model.quantization='4bit'"]


def test_lora_under_fsdp_needs_one_dtype_per_unit(tmp_path, hub_names_unchecked):
    lora_fsdp = ["+experiment=zephyr_7b_dpo_qlora", "model.quantization=null", "strategy=fsdp", "trainer.devices=8",
                 "model.name_or_path=HuggingFaceH4/mistral-7b-sft-beta"]
    assert _errors(compose([*lora_fsdp, "model.dtype=float32"], tmp_path)) == []
    errors = _errors(compose(lora_fsdp, tmp_path))  # the recipe's bf16 base beside float32 adapters
    assert len(errors) == 1 and errors[0].startswith("model.dtype='bfloat16': under FSDP"), errors
    qlora_fsdp = _errors(compose(["+experiment=zephyr_7b_dpo_qlora", "strategy=fsdp", "trainer.devices=8"], tmp_path))
    assert any("QLoRA runs on one GPU or under strategy=ddp" in e for e in qlora_fsdp), qlora_fsdp


def test_builtin_models_load_from_their_cached_folder(tmp_path, monkeypatch):
    from zephyr_lightning.models import bitsandbytes_config, builtin_folder

    monkeypatch.setenv("ZEPHYR_LIGHTNING_CACHE", str(tmp_path))
    folder = builtin_folder(ModelSpec(seed=3, config_overrides={"num_hidden_layers": 1}))
    assert builtin_folder(ModelSpec(seed=3, config_overrides={"num_hidden_layers": 1})) == folder  # saved once
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(folder)),
                               _logits(build_tiny_mistral(3, num_hidden_layers=1)), rtol=0, atol=0)
    nf4 = bitsandbytes_config("4bit", torch.bfloat16)
    assert (nf4.load_in_4bit, nf4.bnb_4bit_quant_type, nf4.bnb_4bit_use_double_quant, nf4.bnb_4bit_compute_dtype) \
        == (True, "nf4", True, torch.bfloat16)
    assert bitsandbytes_config("8bit", None).load_in_8bit


def test_qlora_path_on_bitsandbytes_cpu_kernels(prefs_dir, tokenizer, tmp_path, monkeypatch):
    """QLoRA end to end where bitsandbytes' CPU kernels exist (they are slow; runs are refused on CPU): a
    4-bit base, float32 adapters, the reference as the 4-bit base, adapter-only checkpoints, and a merged export
    built on the unquantized base."""
    bitsandbytes = pytest.importorskip("bitsandbytes")
    import zephyr_lightning.models as models
    from zephyr_lightning.export import export_adapter_run

    monkeypatch.setenv("ZEPHYR_LIGHTNING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "quantization_problem", lambda quantization, on_cuda=None: None)
    monkeypatch.setattr(models, "quantized_device", lambda: "cpu")
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    spec = ModelSpec(quantization="4bit", peft=lora)
    data, batch = _batch(prefs_dir, tokenizer)
    module = DPOModule(spec, optim=OptimizerConfig(lr=1e-2, warmup_ratio=0.0))
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    base = module.model.get_base_model()
    assert isinstance(base.model.layers[0].mlp.down_proj.base_layer, bitsandbytes.nn.Linear4bit)
    assert {p.dtype for p in module.model.parameters() if p.requires_grad} == {torch.float32}

    quantized_base = models.load_causal_lm(spec.without_adapters()).eval()  # the same 4-bit weights, no adapter
    module.train()
    reference = module.reference_logps(batch, pair_logprobs(module.model, batch))
    with torch.no_grad():
        torch.testing.assert_close(reference.chosen, pair_logprobs(quantized_base, batch).chosen, rtol=0, atol=1e-5)

    # (After the comparison: on CPU, bitsandbytes repacks 4-bit weights for its CPU kernels at the first forward
    # and unpacks them when a state dict is taken, which moves its outputs by ~1e-5 relative; CUDA has no such step.)
    trainer.save_checkpoint(tmp_path / "qlora.ckpt")
    state = torch.load(tmp_path / "qlora.ckpt", weights_only=True)["state_dict"]
    assert set(state) == module.adapter_keys

    adapter_state = {k[len("model."):]: v for k, v in state.items()}
    merged_dir, adapter_dir = export_adapter_run(spec, adapter_state, tokenizer, tmp_path / "hf")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    on_full_precision = PeftModel.from_pretrained(build_tiny_mistral(seed=0), adapter_dir)
    torch.testing.assert_close(_logits(merged), _logits(on_full_precision), rtol=0, atol=1e-5)
    assert (_logits(merged) - _logits(module.model)).abs().max() > 1e-3  # not the 4-bit weights


def test_a_shared_reference_takes_no_dtype_of_its_own(tmp_path):
    with pytest.raises(ArgumentError, match=r"module\.reference_dtype='bfloat16': the reference is the policy's own base"):
        DPOModule(ModelSpec(peft={"r": 4}), reference_dtype="bfloat16")
    DPOModule(ModelSpec(peft={"r": 4}), reference_dtype="bfloat16", precompute_reference=True)  # loaded apart: fine
    errors = _errors(compose(["+experiment=dpo", "model/peft=lora", "module.reference_dtype=bfloat16"], tmp_path))
    assert [e.split(":")[0] for e in errors] == ["module.reference_dtype='bfloat16'"], errors
