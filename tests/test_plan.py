"""The memory planner against measured bytes on CPU (tiny models, tensor byte counts of a real DPO step), its
config reading, the plan command, and the train command's refusal of a run that cannot fit."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import CONF_DIR, compose
from zephyr_lightning import DPOModule, ModelSpec, OptimizerConfig, PreferenceDataModule
from zephyr_lightning.optim import build_optimizer
from zephyr_lightning.plan import (
    KNOWN_SHAPES,
    LLAMA2_70B,
    MISTRAL_7B,
    LoraShape,
    ModelShape,
    ShapeUnknown,
    model_shape,
    plan_from_config,
    plan_memory,
    scaling_table,
)

ARCH = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2}
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


def _storage_bytes(tensors) -> int:
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def _measure(module: DPOModule, batch: dict) -> dict[str, int]:
    """Bytes of each component of one real DPO step, counted tensor by tensor."""
    policy = list(module.model.parameters())
    measured = {"weights": _storage_bytes(policy),
                "reference": _storage_bytes(module.reference.parameters()) if module.reference is not None else 0}
    parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:  # activations, not weights kept for backward
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    module.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = module.preference_step(batch)["loss"].mean()
    measured["activations"] = sum(saved.values())
    loss.backward()
    measured["gradients"] = _storage_bytes([p.grad for p in policy if p.grad is not None])
    optimizer = build_optimizer(module.model.named_parameters(), OptimizerConfig(lr=1e-3), 10)["optimizer"]
    optimizer.step()
    measured["optimizer"] = _storage_bytes([t for state in optimizer.state.values() for t in state.values()
                                            if torch.is_tensor(t) and t.numel() > 1])
    return measured


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "checkpointed"])
def test_plan_is_within_15_percent_of_measured_bytes(lora, checkpointing, tokenizer):
    data = PreferenceDataModule("builtin:tiny_prefs", tokenizer, batch_size=4, max_length=192, max_prompt_length=96,
                                max_train_samples=4, max_val_samples=4)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    spec = ModelSpec(attn_implementation="sdpa", config_overrides=ARCH, gradient_checkpointing=checkpointing,
                     peft=LORA if lora else None)
    module = DPOModule(spec)
    module.configure_model()
    measured = _measure(module, batch)

    plan = plan_memory(model_shape({"name_or_path": "builtin:tiny-mistral", "config_overrides": ARCH}),
                       tokens=batch["input_ids"].numel(), scored_tokens=int(batch["loss_mask"].sum()),
                       lora=LoraShape.from_settings(LORA) if lora else None,
                       reference="shared" if lora else "separate", gradient_checkpointing=checkpointing)
    for name, value in measured.items():
        assert plan.components[name] == pytest.approx(value, rel=0.15), (name, plan.components[name], value)
    planned = sum(plan.components[name] for name in measured)
    assert planned == pytest.approx(sum(measured.values()), rel=0.15)
    # The activations are a real share of the step, so the comparison above tests the formula.
    assert measured["activations"] > 0.1 * sum(measured.values()) or checkpointing


def _plan(overrides, tmp_path, **kwargs):
    return plan_from_config(OmegaConf.to_container(compose(overrides, tmp_path), resolve=True), **kwargs)


def test_plans_of_the_recipes_count_what_each_holds(tmp_path):
    full = _plan(["+experiment=zephyr_7b_dpo_full"], tmp_path)
    assert (full.devices, full.strategy) == (8, "fsdp")
    assert full.components["reference"] == full.components["weights"] > 0  # a float32 reference, sharded alike
    shape = MISTRAL_7B
    assert full.components["weights"] == pytest.approx(shape.parameters * 4 / 8)
    assert full.components["optimizer"] == pytest.approx(2 * full.components["weights"])
    qlora = _plan(["+experiment=zephyr_7b_dpo_qlora"], tmp_path)
    assert qlora.components["reference"] == 0 and qlora.components["masters"] == 0  # adapters off: no second model
    adapters = LoraShape(r=128, target_modules=tuple(LORA["target_modules"])).parameters(shape)
    assert qlora.components["gradients"] == pytest.approx(adapters * 4)  # float32 adapters only
    nf4 = 0.5 + 1 / 64 + 4 / (64 * 256)  # bytes per weight: 4 bits, 8-bit block scales, their float32 scales
    float32_rest = (shape.embedding_parameters + shape.norm_parameters) * 4  # upcast by prepare_model_for_kbit_training
    assert qlora.components["weights"] == pytest.approx(shape.decoder_linear_parameters * nf4 + float32_rest + adapters * 4)
    precomputed = _plan(["+experiment=zephyr_7b_dpo_full", "module.precompute_reference=true"], tmp_path)
    assert precomputed.components["reference"] == 0
    one = _plan(["+experiment=zephyr_7b_dpo_full"], tmp_path, devices=1)
    assert one.total > 4 * full.total and not one.fits(141) and full.fits(80)
    assert (full.activations_other > full.components["activations"]) == full.gradient_checkpointing


def test_shapes_come_from_the_config_the_table_or_nowhere(tmp_path, tiny_model_dir):
    assert model_shape({"name_or_path": str(tiny_model_dir)}).hidden_size == 64  # its config.json
    assert model_shape({"name_or_path": "mistralai/Mistral-7B-v0.1"}) == MISTRAL_7B
    assert MISTRAL_7B.parameters == 7_241_732_096  # Mistral-7B-v0.1's parameter count
    assert LLAMA2_70B.parameters == 68_976_648_192  # Llama-2-70b-hf's
    assert set(KNOWN_SHAPES) >= {"HuggingFaceH4/mistral-7b-sft-beta", "meta-llama/Llama-2-70b-hf"}
    with pytest.raises(ShapeUnknown, match=r"model.name_or_path='someone/unknown-model'"):
        model_shape({"name_or_path": "someone/unknown-model"})
    assert ModelShape.from_config({"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
                                   "num_hidden_layers": 1, "num_attention_heads": 2}).num_key_value_heads == 2


def test_plan_command_prints_every_component_and_the_gpus(capsys):
    from zephyr_lightning.cli.plan import main

    main(["--devices", "1,8", "+experiment=zephyr_7b_dpo_qlora"])
    out = capsys.readouterr().out
    for word in ("weights", "gradients", "optimizer", "masters", "reference", "activations", "without activation",
                 "24 GB", "40 GB", "80 GB", "141 GB", "1 x single device", "8 x single device"):
        assert word in out, word


def test_readme_table_is_the_planners(tmp_path):
    readme = (CONF_DIR.parent / "README.md").read_text()
    assert scaling_table() in readme


def test_train_refuses_a_cuda_run_that_cannot_fit_before_loading(tmp_path, monkeypatch):
    import zephyr_lightning.cli.train as cli
    from train import train

    class Card:
        total_memory = 4 * 2**30

    monkeypatch.setattr(cli, "runs_on_cuda", lambda cfg: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Card())
    loads = []
    monkeypatch.setattr(ModelSpec, "load_model", lambda self: loads.append(self))
    big = ["+experiment=dpo", "+model.config_overrides.hidden_size=1024", "+model.config_overrides.num_hidden_layers=16",
           "+model.config_overrides.intermediate_size=4096", "data.batch_size=64"]
    with pytest.raises(cli.MemoryPlanError, match=r"needs about \d+\.\d GiB per device .* the GPU has 4\.0 GiB"):
        train(compose(big, tmp_path))
    assert loads == []
    # The embedded default fits; memory_check=false lets a big one through to the (here: CPU) run.
    cli._check_memory(OmegaConf.to_container(compose(["+experiment=dpo"], tmp_path), resolve=True))
    cli._check_memory(OmegaConf.to_container(compose([*big, "memory_check=false"], tmp_path), resolve=True))
