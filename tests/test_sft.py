"""dSFT: data, loss masks, packing equivalence, metrics, and the SFT -> DPO hand-over."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.helpers import compose, write_jsonl
from train import train
from zephyr_lightning import OptimizerConfig, SFTDataModule, SFTModule
from zephyr_lightning.data.chat import BadRowError, tokenize_chat


def dialogue(i: int, turns: int = 2, system: bool = False) -> dict:
    messages = [{"role": "system", "content": "Be kind."}] if system else []
    for t in range(turns):
        messages += [{"role": "user", "content": f"Question {i}.{t}: what is {i} times {t}?"},
                     {"role": "assistant", "content": f"{i} times {t} is {i * t}. " * (1 + i % 3)}]
    return {"prompt": messages[-2]["content"], "prompt_id": f"dlg-{i}", "messages": messages}


@pytest.fixture
def chat_dir(tmp_path):
    rows = [dialogue(i, turns=1 + i % 3, system=i % 4 == 0) for i in range(14)]
    write_jsonl(tmp_path / "chat" / "train_sft.jsonl", rows[:10])
    write_jsonl(tmp_path / "chat" / "test_sft.jsonl", rows[10:])
    return tmp_path / "chat"


def test_loss_mask_is_the_chat_template_assistant_mask(chat_dir, tokenizer):
    dm = SFTDataModule(str(chat_dir), tokenizer, max_length=512)
    dm.setup("fit")
    row = dm.datasets["train"][3]
    source = dialogue(3, turns=1 + 3 % 3)
    chat = tokenize_chat(tokenizer, source["messages"])
    # data.add_bos=auto: <s> first (Mistral's tokenizer adds it to text), never scored.
    assert row["input_ids"] == [tokenizer.bos_token_id, *chat.input_ids]
    assert row["loss_mask"] == [0, *chat.assistant_mask]
    everything = SFTDataModule(str(chat_dir), tokenizer, max_length=512, loss_on="all")
    everything.setup("fit")
    assert set(everything.datasets["train"][3]["loss_mask"]) == {1}


@pytest.mark.parametrize(
    "messages,match",
    [
        ([{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Hey"}], "starts with 'assistant'"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}], "both 'user'"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}], "empty content"),
        ([{"role": "user", "content": "only a question"}], "no assistant turn"),
    ],
)
def test_bad_dialogue_names_prompt_id_or_is_skipped(tmp_path, tokenizer, messages, match):
    rows = [dialogue(0), {"prompt": "x", "prompt_id": "bad-dialogue-42", "messages": messages}]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(BadRowError, match=match) as err:
        SFTDataModule(str(path), tokenizer, train_split="train", val_split=None).setup("fit")
    assert "prompt_id=bad-dialogue-42" in str(err.value)
    skipping = SFTDataModule(str(path), tokenizer, train_split="train", val_split=None, on_bad_row="skip")
    skipping.setup("fit")
    assert len(skipping.datasets["train"]) == 1
    assert sum(n for s, n in skipping.stats["train"].items() if s.startswith("bad")) == 1


def test_long_dialogues_are_truncated_or_dropped_and_counted(tmp_path, tokenizer):
    rows = [dialogue(1, turns=1), dialogue(2, turns=3)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    short = len(tokenize_chat(tokenizer, rows[0]["messages"]).input_ids)
    dm = SFTDataModule(str(path), tokenizer, train_split="train", val_split=None, max_length=short + 5)
    dm.setup("fit")
    assert dm.stats["train"] == {"ok": 1, "truncated": 1}
    assert max(dm.datasets["train"]["length"]) == short + 5
    dropping = SFTDataModule(str(path), tokenizer, train_split="train", val_split=None, max_length=short + 5, on_too_long="drop")
    dropping.setup("fit")
    assert len(dropping.datasets["train"]) == 1


def _epoch_nll(module, loader):
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            logps = module.scored_logprobs(batch)
            total += -logps.double().sum().item()
            tokens += logps.numel()
    return total / tokens, tokens


def test_packed_loss_equals_unpacked_loss(chat_dir, tokenizer, caplog):
    module = SFTModule("builtin:tiny-mistral")
    module.configure_model()
    module.eval()
    results = {}
    for packing in (False, True):
        with caplog.at_level("INFO", logger="zephyr_lightning"):
            dm = SFTDataModule(str(chat_dir), tokenizer, max_length=512, packing=packing, batch_size=3)
            dm.setup("fit")
        results[packing] = _epoch_nll(module, dm.train_dataloader())
    assert results[True][1] == results[False][1]  # the same scored tokens
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-5, abs=1e-5)
    # The log reports padding with and without packing.
    assert "padding" in caplog.text and "packed vs" in caplog.text
    assert dm.padding["train"]["packed"] < dm.padding["train"]["unpacked"]


def test_validation_loss_and_perplexity_match_definitions(chat_dir, tokenizer, tmp_path):
    dm = SFTDataModule(str(chat_dir), tokenizer, max_length=512, packing=True, batch_size=2, eval_batch_size=1)
    module = SFTModule("builtin:tiny-mistral", optim=OptimizerConfig(lr=1e-3, schedule="cosine"))
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    expected, _ = _epoch_nll(module.eval(), dm.val_dataloader())
    assert metrics["val/loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["val/perplexity"] == pytest.approx(torch.exp(torch.tensor(expected)).item(), rel=1e-5)


def test_sft_experiment_exports_and_hands_over_to_dpo(tmp_path, monkeypatch):
    sft_dir = tmp_path / "sft"
    train(compose(["+experiment=sft", "trainer.fast_dev_run=true", "logger=csv",
                   "callbacks.sample_generation.max_new_tokens=4"], sft_dir))
    export = sft_dir / "hf"
    assert (export / "model.safetensors").exists() and (export / "tokenizer_config.json").exists()
    exported = AutoModelForCausalLM.from_pretrained(export)

    seen = {}
    original = L.Trainer.fit

    def spy(self, model, *args, **kwargs):
        seen["module"] = model
        model.configure_model()
        seen["policy_start"] = {k: v.clone() for k, v in model.model.state_dict().items()}
        return original(self, model, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "fit", spy)
    dpo_dir = tmp_path / "dpo"
    train(compose(["+experiment=dpo", "trainer.fast_dev_run=true", "logger=csv",
                   "callbacks.sample_generation.max_new_tokens=4", f"model.name_or_path={export}"], dpo_dir))
    module = seen["module"]
    # DPO starts from the SFT export and its reference is loaded from the same folder.
    assert module.reference_spec.name_or_path == str(export)
    for name, value in exported.state_dict().items():
        assert torch.equal(seen["policy_start"][name], value)
        assert torch.equal(module.reference.state_dict()[name], value)
    assert (dpo_dir / "hf" / "model.safetensors").exists()
