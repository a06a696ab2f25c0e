"""PreferenceDataModule on real `datasets` files and the real tokenizer."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.helpers import pref_row, write_jsonl
from zephyr_lightning import PreferenceDataModule
from zephyr_lightning.data.chat import BadRowError, tokenize_prompt_completion


def _module(path, tokenizer, **kwargs):
    kwargs.setdefault("train_split", "train")
    kwargs.setdefault("val_split", None)
    return PreferenceDataModule(str(path), tokenizer, **kwargs)


def test_rows_are_tokenized_as_prompt_and_completions(tmp_path, tokenizer):
    row = pref_row("Capital of Peru?", "Lima.", "No idea.", system="Be brief.")
    dm = _module(write_jsonl(tmp_path / "train.jsonl", [row]), tokenizer)
    dm.setup("fit")
    item = dm.datasets["train"][0]
    chosen = tokenize_prompt_completion(tokenizer, row["chosen"])
    rejected = tokenize_prompt_completion(tokenizer, row["rejected"])
    # data.add_bos=auto: Mistral's tokenizer adds <s> to text, so the prompt starts with it (the template does not).
    assert item["prompt_input_ids"] == [tokenizer.bos_token_id, *chosen.prompt_ids]
    assert chosen.prompt_ids == rejected.prompt_ids
    assert item["chosen_input_ids"] == chosen.completion_ids
    assert item["rejected_input_ids"] == rejected.completion_ids
    assert item["prompt_id"] == row["prompt_id"]


def test_batch_stacks_chosen_then_rejected_with_completion_mask(tmp_path, tokenizer):
    rows = [pref_row(f"Question {i}?", "A long helpful answer " * (i + 1), "No.") for i in range(3)]
    dm = _module(write_jsonl(tmp_path / "train.jsonl", rows), tokenizer, batch_size=3)
    dm.setup("fit")
    batch = dm.collator([dm.datasets["train"][i] for i in range(3)])
    assert batch["input_ids"].shape[0] == 6 and batch["prompt_id"] == [r["prompt_id"] for r in rows]
    for i in range(3):
        item = dm.datasets["train"][i]
        for side, offset in (("chosen", 0), ("rejected", 3)):
            seq = item["prompt_input_ids"] + item[f"{side}_input_ids"]
            n = len(seq)
            assert batch["input_ids"][i + offset, :n].tolist() == seq
            assert batch["attention_mask"][i + offset].sum() == n
            assert batch["loss_mask"][i + offset].tolist() == [0] * len(item["prompt_input_ids"]) + [1] * len(
                item[f"{side}_input_ids"]
            ) + [0] * (batch["input_ids"].shape[1] - n)
            assert torch.all(batch["input_ids"][i + offset, n:] == tokenizer.pad_token_id)


def test_truncation_keeps_prompt_end_and_is_counted(tmp_path, tokenizer, caplog):
    long_prompt = " ".join(f"word{i}" for i in range(200)) + " FINAL QUESTION?"
    rows = [pref_row(long_prompt, "Answer " * 100, "No."), pref_row("Short?", "Yes.", "No.")]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with caplog.at_level(logging.INFO, logger="zephyr_lightning"):
        dm = _module(path, tokenizer, max_length=64, max_prompt_length=32)
        dm.setup("fit")
    assert dm.stats["train"] == {"truncated": 1, "ok": 1}
    assert "1 truncated" in caplog.text
    item = dm.datasets["train"][0]
    assert len(item["prompt_input_ids"]) == 32
    assert tokenizer.decode(item["prompt_input_ids"]).rstrip().endswith("<|assistant|>")
    assert "FINAL QUESTION?" in tokenizer.decode(item["prompt_input_ids"])
    assert len(item["prompt_input_ids"]) + len(item["chosen_input_ids"]) == 64

    dropping = _module(path, tokenizer, max_length=64, max_prompt_length=32, on_too_long="drop")
    dropping.setup("fit")
    assert len(dropping.datasets["train"]) == 1
    assert sum(n for status, n in dropping.stats["train"].items() if status.startswith("dropped")) == 1


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda r: r["chosen"].pop(), "last message is 'user'"),
        (lambda r: r["rejected"][0].update(content="A different question"), "different prompts"),
        (lambda r: r["chosen"][-1].update(content=""), "empty content"),
        (lambda r: r["rejected"][-1].update(content=r["chosen"][-1]["content"]), "identical"),
    ],
)
def test_malformed_row_names_prompt_id(tmp_path, tokenizer, mutate, match):
    rows = [pref_row("Fine?", "Yes.", "No."), pref_row("Broken?", "Yes.", "No.", prompt_id="broken-row-7")]
    mutate(rows[1])
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(BadRowError, match=match) as err:
        _module(path, tokenizer).setup("fit")
    assert "prompt_id=broken-row-7" in str(err.value)
    assert str(path) in str(err.value)

    skipping = _module(path, tokenizer, on_bad_row="skip")
    skipping.setup("fit")
    assert len(skipping.datasets["train"]) == 1
    assert sum(n for status, n in skipping.stats["train"].items() if status.startswith("bad")) == 1


def test_local_folder_with_split_files_and_parquet(tmp_path, tokenizer):
    import datasets

    rows = [pref_row(f"Q{i}?", "Yes.", "No.") for i in range(6)]
    write_jsonl(tmp_path / "prefs" / "train_prefs.jsonl", rows[:4])
    datasets.Dataset.from_list(rows[4:]).to_parquet(str(tmp_path / "prefs" / "test_prefs.parquet"))
    dm = PreferenceDataModule(str(tmp_path / "prefs"), tokenizer)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 4 and len(dm.datasets["val"]) == 2


def test_missing_split_and_bad_settings_are_named(tmp_path, tokenizer):
    write_jsonl(tmp_path / "prefs" / "train_prefs.jsonl", [pref_row("Q?", "Yes.", "No.")])
    with pytest.raises(FileNotFoundError, match="test_prefs"):
        PreferenceDataModule(str(tmp_path / "prefs"), tokenizer).setup("fit")
    with pytest.raises(ValueError, match="max_prompt_length"):
        PreferenceDataModule(str(tmp_path / "prefs"), tokenizer, max_length=64, max_prompt_length=64)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PreferenceDataModule("./no/such/file.jsonl", tokenizer).setup("fit")


def test_builtin_data_set_loads(tokenizer):
    # The toy pairs repeat questions (conf/data/tiny_prefs.yaml): all 400 + 80 rows load without deduplication.
    dm = PreferenceDataModule("builtin:tiny_prefs", tokenizer, max_length=256, max_prompt_length=128, deduplicate="off")
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 400 and len(dm.datasets["val"]) == 80
    assert dm.stats["train"]["ok"] == 400
