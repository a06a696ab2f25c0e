"""DPO's speed paths must not change the numbers: packed batches, varlen attention, precomputed
reference log-probs, memory-lean log-probs; and the attention choice."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch

from tests.helpers import pref_row, write_jsonl
from zephyr_lightning import DPOModule, ModelSpec, OptimizerConfig, PreferenceDataModule
from zephyr_lightning.logprobs import linear_logprobs
from zephyr_lightning.models import build_tiny_mistral, resolve_attn_implementation


@pytest.fixture
def prefs_dir(tmp_path):
    rows = [pref_row(f"What is {i} times {i + 1}?", f"Sure! It is {i * (i + 1)}." * (1 + i % 3), "No idea " * (1 + i % 2))
            for i in range(12)]
    write_jsonl(tmp_path / "prefs" / "train_prefs.jsonl", rows[:8])
    write_jsonl(tmp_path / "prefs" / "test_prefs.jsonl", rows[8:])
    return tmp_path / "prefs"


def _all_values(module, datamodule, loader="val_dataloader"):
    out = {}
    with torch.no_grad():
        for batch in getattr(datamodule, loader)():
            for k, v in module.preference_step(batch).items():
                out.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in out.items()}


@pytest.mark.parametrize("attn", ["sdpa", "varlen"])
def test_packed_batches_give_the_padded_losses(prefs_dir, tokenizer, attn):
    module = DPOModule(ModelSpec(attn_implementation=attn), reference=ModelSpec(seed=3, attn_implementation=attn))
    module.configure_model()
    module.eval()
    results = {}
    for packing in (False, True):
        dm = PreferenceDataModule(str(prefs_dir), tokenizer, batch_size=3, eval_batch_size=3, max_length=128,
                                  max_prompt_length=64, packing=packing)
        dm.setup("fit")
        batch = next(iter(dm.val_dataloader()))
        assert ("attention_mask" in batch) != packing and ("position_ids" in batch) == packing
        results[packing] = _all_values(module, dm)
    for key in results[False]:
        torch.testing.assert_close(results[True][key], results[False][key], rtol=1e-5, atol=1e-5)
    assert results[False]["loss"].std() > 0  # different pairs, different losses: the comparison means something


def test_packed_batch_has_no_padding(prefs_dir, tokenizer):
    dm = PreferenceDataModule(str(prefs_dir), tokenizer, batch_size=4, max_length=128, max_prompt_length=64, packing=True)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (1, batch["num_tokens"])
    assert batch["cu_seq_lens"].tolist()[-1] == batch["num_tokens"] and len(batch["cu_seq_lens"]) == 9


def test_precomputed_reference_gives_live_reference_losses(prefs_dir, tokenizer, tmp_path, monkeypatch):
    def trainer():
        return L.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)

    reference = ModelSpec(seed=5)
    live = DPOModule("builtin:tiny-mistral", reference=reference)
    dm_live = PreferenceDataModule(str(prefs_dir), tokenizer, batch_size=2, max_length=128, max_prompt_length=64)
    live_metrics = trainer().validate(live, datamodule=dm_live, verbose=False)[0]

    cache = tmp_path / "ref_cache"
    pre = DPOModule("builtin:tiny-mistral", reference=reference, precompute_reference=True, reference_cache_dir=str(cache))
    dm_pre = PreferenceDataModule(str(prefs_dir), tokenizer, batch_size=2, max_length=128, max_prompt_length=64)
    pre_metrics = trainer().validate(pre, datamodule=dm_pre, verbose=False)[0]
    assert pre.reference is None  # never loaded for training
    for key, value in live_metrics.items():
        assert pre_metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert len(list(cache.glob("*.pt"))) == 1  # the validation split, stored whole

    # A second run reuses the stored numbers without loading the reference at all; fit works.
    loads = []
    original = ModelSpec.load_model
    monkeypatch.setattr(ModelSpec, "load_model", lambda self: loads.append(self.seed) or original(self))
    again = DPOModule("builtin:tiny-mistral", reference=reference, precompute_reference=True,
                      reference_cache_dir=str(cache), optim=OptimizerConfig(lr=1e-3))
    dm_again = PreferenceDataModule(str(prefs_dir), tokenizer, batch_size=2, max_length=128, max_prompt_length=64)
    trainer().fit(again, datamodule=dm_again)
    assert loads == [5, 0]  # the reference (seed 5) once, for the train split it had not seen; then the policy
    assert len(list(cache.glob("*.pt"))) == 2
    loads.clear()
    again2 = DPOModule("builtin:tiny-mistral", reference=reference, precompute_reference=True, reference_cache_dir=str(cache))
    trainer().fit(again2, datamodule=PreferenceDataModule(str(prefs_dir), tokenizer, batch_size=2, max_length=128,
                                                          max_prompt_length=64))
    assert loads == [0]  # the policy only


def test_precomputed_values_are_keyed_by_data_and_reference(prefs_dir, tokenizer, tmp_path):
    from zephyr_lightning.reference import entry_key, reference_fingerprint

    dm = PreferenceDataModule(str(prefs_dir), tokenizer, max_length=128, max_prompt_length=64)
    dm.setup("fit")
    other = PreferenceDataModule(str(prefs_dir), tokenizer, max_length=100, max_prompt_length=64)
    other.setup("fit")
    a, b = reference_fingerprint(ModelSpec(seed=0)), reference_fingerprint(ModelSpec(seed=1))
    assert a != b and a == reference_fingerprint(ModelSpec(seed=0))
    assert entry_key(a, dm.datasets["val"]) != entry_key(a, other.datasets["val"])  # tokenisation settings
    assert entry_key(a, dm.datasets["val"]) != entry_key(a, dm.datasets["train"])  # data
    folder = tmp_path / "m"
    build_tiny_mistral(seed=0).save_pretrained(folder)
    before = reference_fingerprint(ModelSpec(str(folder)))
    build_tiny_mistral(seed=1).save_pretrained(folder)
    assert reference_fingerprint(ModelSpec(str(folder))) != before  # weights, not just the name


def test_log_prob_backward_never_keeps_full_vocab_logits():
    vocab, tokens = 1000, 300
    hidden = torch.randn(tokens, 16, requires_grad=True)
    weight = torch.randn(vocab, 16, requires_grad=True)
    labels = torch.randint(0, vocab, (tokens,))
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = linear_logprobs(hidden, weight, labels, chunk_elements=vocab * 50)
    out.sum().backward()
    assert max(saved) < tokens * vocab / 4  # only hidden, weight, labels and a per-token log-sum-exp


def test_attention_auto_choice_is_logged_once(monkeypatch, caplog):
    import zephyr_lightning.models as models

    models._log_attention_choice.cache_clear()
    with caplog.at_level(logging.INFO, logger="zephyr_lightning"):
        assert resolve_attn_implementation("auto", on_cuda=False) == "sdpa"
        assert resolve_attn_implementation("auto", on_cuda=False) == "sdpa"
    assert caplog.text.count("attention: sdpa (no CUDA device)") == 1
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else None)
    assert resolve_attn_implementation("auto", on_cuda=True) == "flash_attention_2"
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    assert resolve_attn_implementation("auto", on_cuda=True) == "varlen"
    with pytest.raises(ValueError, match="model.attn_implementation"):
        resolve_attn_implementation("flash")


def test_compiled_decoder_layers_keep_names_and_numbers():
    # The "eager" backend runs the dynamo capture without inductor's compile time: the wiring is what
    # is checked here (the GPU benchmark measures inductor's speed).
    from zephyr_lightning.models import load_causal_lm

    plain = load_causal_lm(ModelSpec(attn_implementation="varlen")).eval()
    compiled = load_causal_lm(ModelSpec(attn_implementation="varlen", compile="eager")).eval()
    assert list(plain.state_dict()) == list(compiled.state_dict())
    ids = torch.randint(3, 32000, (1, 20), generator=torch.Generator().manual_seed(0))
    position_ids = torch.cat([torch.arange(12), torch.arange(8)])[None]
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids, position_ids=position_ids).logits,
                                   plain(ids, position_ids=position_ids).logits, rtol=1e-5, atol=1e-5)


def test_varlen_attention_under_autocast_over_fp32_weights_computes_in_one_dtype():
    """bf16-mixed over fp32 weights: rotary hands fp32 queries/keys beside bf16 values; the varlen path (whose
    CUDA kernels take one 16-bit dtype) computes in the autocast dtype, and matches per-sequence sdpa."""
    from zephyr_lightning.attention import _kernel_inputs, varlen_attention_forward

    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 4, 10, 16, generator=g) for _ in range(2))
    v = torch.randn(1, 4, 10, 16, generator=g).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert {t.dtype for t in _kernel_inputs(q, k, v)} == {torch.bfloat16}
        positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]])
        out, _ = varlen_attention_forward(torch.nn.Module(), q, k, v, None, position_ids=positions)
    assert out.dtype == torch.bfloat16
    for start, end in ((0, 4), (4, 10)):
        alone = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, start:end].bfloat16(), k[:, :, start:end].bfloat16(), v[:, :, start:end], is_causal=True)
        torch.testing.assert_close(out[:, start:end], alone.transpose(1, 2), rtol=2e-2, atol=2e-2)
    assert {t.dtype for t in _kernel_inputs(q, k, v)} == {torch.bfloat16}  # no autocast: the 16-bit one
