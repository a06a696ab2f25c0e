"""Lightning strategies on 2 CPU processes (gloo): disjoint data, identical weights, sharded reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers import pref_row, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "scripts" / "distributed_dpo.py"


def _run(strategy: str, tmp_path: Path, *extra: str) -> Path:
    rows = [pref_row(f"Question {i}?", f"Answer {i}.", "No.") for i in range(16)]
    write_jsonl(tmp_path / "data" / "train_prefs.jsonl", rows)
    out = tmp_path / "out"
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(SCRIPT), strategy, str(tmp_path / "data"), str(out), *extra],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_ddp_ranks_see_disjoint_data_and_end_with_identical_weights(tmp_path):
    out = _run("ddp", tmp_path)
    seen = [json.loads((out / f"rank{r}.json").read_text())["seen"] for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 8
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 16
    weights = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    from zephyr_lightning.models import build_tiny_mistral

    initial = build_tiny_mistral(seed=0).state_dict()
    assert not torch.equal(initial["lm_head.weight"], weights[0]["model.lm_head.weight"])  # it trained


def test_lora_under_ddp_trains_identical_adapters_on_an_untouched_base(tmp_path):
    """DDP with LoRA (reference = the policy with its adapters disabled, inside the DDP forward): both ranks end
    with the same adapters, which trained, and the base weights exactly as built."""
    out = _run("ddp", tmp_path, "lora")
    weights = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    lora_b = [k for k in weights[0] if "lora_B" in k]
    assert lora_b and all(weights[0][k].abs().max() > 0 for k in lora_b)  # B starts at zero: it trained
    from zephyr_lightning.models import build_tiny_mistral

    initial = build_tiny_mistral(seed=0).state_dict()
    prefix = "model.base_model.model."
    base = {k[len(prefix):].replace(".base_layer", ""): v for k, v in weights[0].items() if "lora_" not in k}
    assert base.keys() == initial.keys()
    assert all(torch.equal(base[k], initial[k]) for k in initial)


def test_lora_under_fsdp_trains_identical_adapters_on_an_untouched_base(tmp_path):
    """LoRA dDPO wrapped as `fsdp_strategy` wraps it (each decoder layer a unit holding frozen base weights and
    trainable adapters, use_orig_params=True, full shard, bf16-mixed), on 2 CPU processes through torch's FSDP
    (Lightning refuses FSDP on CPU; tests/scripts/fsdp_lora.py says how it stands in)."""
    rows = [pref_row(f"Question {i}?", f"Answer {i}.", "No.") for i in range(16)]
    write_jsonl(tmp_path / "data" / "train_prefs.jsonl", rows)
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "scripts" / "fsdp_lora.py"), str(tmp_path / "data"),
                             str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / "out" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    first, second = ranks
    assert first["units"] == first["layers"] + 1  # the root (the module) and one unit per decoder layer
    assert first["trainable_dtypes"] == ["torch.float32"]  # FSDP trains the float32 shards; bf16 is compute only
    gathered, initial = first["gathered"], first["initial"]
    # The full state dict carries the unwrapped names (no FSDP prefixes, no flat parameters): what checkpoints
    # and the export read, adapter keys included.
    assert gathered.keys() == initial.keys() and set(first["adapter_keys"]) < gathered.keys()
    assert gathered.keys() == second["gathered"].keys()
    assert all(torch.equal(gathered[k], second["gathered"][k]) for k in gathered)  # both ranks hold one model
    adapters = set(first["adapter_keys"])
    assert all(".lora_A." in k or ".lora_B." in k for k in adapters)
    assert all(torch.equal(gathered[k], initial[k]) for k in gathered.keys() - adapters)  # the base is untouched
    assert all(not torch.equal(gathered[k], initial[k]) for k in adapters)  # every adapter matrix trained
    # The reference (the policy with its adapters disabled, inside FSDP) after the adapters trained is exactly
    # the reference before: disabling the adapters leaves the base alone.
    assert torch.equal(first["first_reference"], first["last_reference"])
    assert torch.equal(second["first_reference"], second["last_reference"])
