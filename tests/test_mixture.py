"""Mixtures, schema conversion, filters, deduplication and decontamination on the shipped sources of
tests/data/mixture (its README lists what is planted where), through the real `datasets` loader, the
real tokenizer and, once, the real `python train.py`."""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import compose, write_jsonl
from zephyr_lightning import PreferenceDataModule, SFTDataModule
from zephyr_lightning.aif import load_prompt_set
from zephyr_lightning.aif.binarize import binarize_row
from zephyr_lightning.arguments import ArgumentError
from zephyr_lightning.callbacks import DataSummary
from zephyr_lightning.data.chat import tokenize_chat
from zephyr_lightning.data.decontamination import EvalIndex, EvalText
from zephyr_lightning.data.mixture import parse_mixture
from zephyr_lightning.data.normalize import words
from zephyr_lightning.data.schema import SchemaError
from zephyr_lightning.data.sources import prompt_id_of
from zephyr_lightning.modelcard import RunRecords, render_card
from zephyr_lightning.validation import validate_config

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "data_errors.md"
DATA = Path(__file__).resolve().parent / "data" / "mixture"
CHAT_A, CHAT_B, PREFS_A, FEEDBACK = (str(DATA / name) for name in ("chat_a", "chat_b", "prefs_a", "feedback"))
B_SPLITS = {"train_split": "train", "test_split": "test"}
NO_FILTERS = {"final_assistant": False, "model_disclaimer": False}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _sft(tokenizer, **kwargs) -> SFTDataModule:
    kwargs.setdefault("max_length", 256)
    dm = SFTDataModule(kwargs.pop("path", None), tokenizer, **kwargs)
    dm.setup("fit")
    return dm


def _removed(dm, split: str = "train") -> dict[str, dict[str, int]]:
    """Per source path: reason -> rows removed."""
    out: dict[str, dict[str, int]] = {}
    for (position, status), n in dm.source_stats[split].items():
        if status.startswith("removed: "):
            out.setdefault(dm.sources[position].path, {})[status.removeprefix("removed: ")] = n
    return out


def _prompts(dm, split: str = "train") -> set[str]:
    return set(dm.prepared(split).cleaned.rows["prompt"])


# ------------------------------------------------------------------------------------------- mixtures


def test_fractions_and_row_counts_take_seeded_samples_of_train_splits_and_whole_test_splits(tokenizer):
    mixture = {CHAT_A: 0.5, CHAT_B: {"rows": 4, **B_SPLITS}}
    dm = _sft(tokenizer, mixture=mixture, deduplicate="off", filters=NO_FILTERS, seed=3)
    a, b = dm.summary()["mixture"]
    # The handbook's count: int(fraction * rows) of the train split; a row count as given; test splits whole.
    assert (a["train"]["available"], a["train"]["taken"], b["train"]["taken"]) == (12, int(0.5 * 12), 4)
    assert (a["val"]["taken"], b["val"]["taken"]) == (3, 2) and dm.summary()["val"]["rows"] == 5
    assert dm.summary()["train"]["used"] == 10
    train = dm.prepared("train").cleaned.rows
    a_prompts = {r["prompt"] for r in _rows(DATA / "chat_a" / "train_sft.jsonl")}
    assert sum(p in a_prompts for p in train["prompt"]) == 6  # a subset of each source's rows
    assert sorted(Counter(train["_source"]).items()) == [(0, 6), (1, 4)]
    # Seeded: the same seed draws the same rows in the same (shuffled) order; another seed draws others.
    again = _sft(tokenizer, mixture=mixture, deduplicate="off", filters=NO_FILTERS, seed=3)
    assert again.datasets["train"]["prompt_id"] == dm.datasets["train"]["prompt_id"]
    other = _sft(tokenizer, mixture=mixture, deduplicate="off", filters=NO_FILTERS, seed=4)
    assert set(other.datasets["train"]["prompt_id"]) != set(dm.datasets["train"]["prompt_id"])
    assert train["_source"] != sorted(train["_source"])  # the sources are interleaved, not appended


def test_data_path_is_a_mixture_of_one_and_keeps_file_order(tokenizer):
    single = _sft(tokenizer, path=CHAT_A, deduplicate="off", filters=NO_FILTERS)
    mixed = _sft(tokenizer, mixture={CHAT_A: 1.0}, deduplicate="off", filters=NO_FILTERS)
    rows = _rows(DATA / "chat_a" / "train_sft.jsonl")
    assert single.datasets["train"]["prompt_id"] == [r["prompt_id"] for r in rows]
    assert mixed.datasets["train"]["prompt_id"] == single.datasets["train"]["prompt_id"]
    assert single.stats == mixed.stats and "mixture" not in single.summary() and "mixture" in mixed.summary()


def test_test_rows_limit_a_test_split_and_fraction_zero_gives_test_rows_only(tokenizer):
    dm = _sft(tokenizer, mixture={CHAT_A: {"test_rows": 1}, CHAT_B: {"fraction": 0, **B_SPLITS}}, filters=NO_FILTERS)
    a, b = dm.summary()["mixture"]
    assert (a["val"]["taken"], b["train"]["taken"], b["val"]["taken"]) == (1, 0, 2)


# ------------------------------------------------------------------------------------ schema mapping


def test_sharegpt_conversations_are_mapped_to_messages(tokenizer):
    raw = _rows(DATA / "chat_b" / "train.jsonl")[1]
    expected = [{"role": "user", "content": raw["conversations"][0]["value"]},
                {"role": "assistant", "content": raw["conversations"][1]["value"]}]
    for mapping in ({}, {"columns": {"conversations": "messages"}}):  # found by its shape, or mapped by name
        dm = _sft(tokenizer, mixture={CHAT_B: {**B_SPLITS, **mapping}}, filters=NO_FILTERS, deduplicate="off")
        rows = dm.prepared("train").cleaned.rows
        at = rows["prompt"].index(raw["conversations"][0]["value"])
        assert rows[at]["messages"] == expected
        tokenized = dm.datasets["train"][at]
        assert tokenized["input_ids"] == [tokenizer.bos_token_id, *tokenize_chat(tokenizer, expected).input_ids]


def test_ultrafeedback_completions_are_binarized_the_zephyr_way(tokenizer):
    dm = PreferenceDataModule(None, tokenizer, mixture={PREFS_A: 1.0, FEEDBACK: {"train_split": "train", "test_rows": 0}},
                              deduplicate="off", filters=NO_FILTERS, seed=5, max_length=256, max_prompt_length=128)
    dm.setup("fit")
    rows = dm.prepared("train").cleaned.rows
    converted = {row["prompt"]: row for row in rows if row["_source"] == 1}
    for raw in _rows(DATA / "feedback" / "train.jsonl"):
        expected = binarize_row(raw, seed=5)  # the AIF step's binarization, the reference
        if isinstance(expected, str):
            assert raw["instruction"] not in converted
            continue
        row = converted[raw["instruction"]]
        assert (row["chosen"], row["rejected"], row["prompt_id"]) == (expected["chosen"], expected["rejected"],
                                                                      expected["prompt_id"])
    assert _removed(dm) == {FEEDBACK: {"binarize: all scores tie": 1}}
    # The same source as dSFT data: its chosen conversations, as ultrafeedback_binarized made train_sft.
    sft = _sft(tokenizer, mixture={FEEDBACK: {"train_split": "train", "test_rows": 0}}, filters=NO_FILTERS, seed=5)
    raw = _rows(DATA / "feedback" / "train.jsonl")[0]
    rows = sft.prepared("train").cleaned.rows
    assert rows[rows["prompt"].index(raw["instruction"])]["messages"] == binarize_row(raw, seed=5)["chosen"]


@pytest.mark.parametrize("entry,match", [
    ({"columns": {"dialogue": "messages"}}, r"chat_b \[train\]: columns maps 'dialogue' to 'messages', but the source "
                                            r"has no column 'dialogue' \(its columns: \['id', 'conversations'\]\)"),
    ({"columns": {"conversations": "turns"}}, r"chat_b \[train\]: columns maps 'conversations' to 'turns', which is not"),
    ({"columns": {"id": "conversations"}}, r"chat_b \[train\]: columns maps 'id' to 'conversations', but the source "
                                           r"already has a 'conversations' column"),
])
def test_a_bad_mapping_is_refused_naming_the_source(tokenizer, entry, match):
    with pytest.raises(SchemaError, match=match):
        _sft(tokenizer, mixture={CHAT_A: 1.0, CHAT_B: {**B_SPLITS, **entry}})


def test_a_source_in_no_known_schema_is_refused_naming_it_and_its_columns(tokenizer):
    with pytest.raises(SchemaError, match=r"chat_a \[(train|test)_sft\]: cannot read its rows as preference pairs: expected "
                                          r"'chosen' and 'rejected' .* its columns are \['prompt', 'prompt_id', 'messages'\]"):
        PreferenceDataModule(None, tokenizer, mixture={PREFS_A: 1.0, CHAT_A: {"train_split": "train_sft", "test_split": "test_sft"}}).setup("fit")


def test_sources_whose_columns_differ_in_type_are_refused_naming_both(tokenizer, tmp_path):
    rows = _rows(DATA / "chat_a" / "train_sft.jsonl")[:3]
    for i, row in enumerate(rows):
        row["messages"][0]["content"] = i  # numbers, not text: a type no text column can take
    write_jsonl(tmp_path / "numbers" / "train_sft.jsonl", rows)
    with pytest.raises(SchemaError, match=r"sources '.*chat_a' and '.*numbers' cannot be mixed: column\(s\) \['messages'\]"):
        _sft(tokenizer, mixture={CHAT_A: 1.0, str(tmp_path / "numbers"): {"test_rows": 0}})


# ------------------------------------------------------------------------------ filters and duplicates


def test_duplicates_test_overlap_and_filters_are_removed_and_counted_by_source(tokenizer):
    dm = _sft(tokenizer, mixture={CHAT_A: 1.0, CHAT_B: B_SPLITS})
    assert _removed(dm) == {
        CHAT_A: {"prompt in test split": 1, "filter: model disclaimer": 1},  # a10, a11
        CHAT_B: {"duplicate prompt": 1, "duplicate row": 1, "filter: no final assistant turn": 1},  # b6, b9, b8
    }
    kept = _prompts(dm)
    assert "how do i SHARPEN a kitchen knife" not in kept and "How do I sharpen a kitchen knife?" in kept  # A comes first
    assert "What is the boiling point of water at sea level?" not in kept
    summary = dm.summary()
    assert summary["train"]["removed"] == {"prompt in test split": 1, "filter: model disclaimer": 1, "duplicate prompt": 1,
                                           "duplicate row": 1, "filter: no final assistant turn": 1}
    counts = summary["train"]
    assert counts["rows"] == 22 == counts["used"] + sum(counts["removed"].values()) and counts["used"] == 17
    # `row`: only the same conversation twice (and prompts of the test split) go; `off`: nothing.
    rows = _sft(tokenizer, mixture={CHAT_A: 1.0, CHAT_B: B_SPLITS}, deduplicate="row", filters=NO_FILTERS)
    assert _removed(rows) == {CHAT_A: {"prompt in test split": 1}, CHAT_B: {"duplicate row": 1}}
    off = _sft(tokenizer, mixture={CHAT_A: 1.0, CHAT_B: B_SPLITS}, deduplicate="off", filters=NO_FILTERS)
    assert _removed(off) == {}


def test_repeated_prompt_ids_and_exact_duplicate_rows_of_one_file(tmp_path, tokenizer):
    rows = _rows(DATA / "chat_a" / "train_sft.jsonl")[:4]
    rows.append(dict(rows[0]))  # the same row again
    other = dict(rows[1], prompt="A different question?", messages=[{"role": "user", "content": "A different question?"},
                                                                     {"role": "assistant", "content": "Yes."}])
    rows.append(other)  # rows[1]'s prompt_id with another prompt
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    dm = _sft(tokenizer, path=str(path), train_split="train", val_split=None)
    assert dm.summary()["train"]["removed"] == {"duplicate row": 1, "duplicate prompt_id": 1}
    assert len(dm.datasets["train"]) == 4


def _duplicate_pairs(tmp_path: Path) -> Path:
    """A preference file with every kind of duplicate: rows 0-3 are distinct; then two exact copies, a second pair
    for prompt 1 under its own id, prompt 2's id on another prompt, and prompt 0 again in other case and spacing."""
    from tests.helpers import pref_row

    rows = [pref_row(q, "Here is how.", "No.", prompt_id=f"id{i}") for i, q in enumerate(
        ["How do I repot a fern?", "How do I fold a paper crane?", "How do I sharpen a kitchen knife?", "Why is the sky blue?"])]
    rows += [dict(rows[0]), dict(rows[3]),
             pref_row("How do I fold a paper crane?", "Start with a square.", "Buy one.", prompt_id="id1"),
             pref_row("How do I boil an egg?", "Simmer it.", "Fry it.", prompt_id="id2"),
             pref_row("how do i REPOT a fern", "Gently.", "Roughly.", prompt_id="id9")]
    return write_jsonl(tmp_path / "pairs" / "train.jsonl", rows)


def _pairs_module(path: Path, tokenizer, deduplicate: str) -> PreferenceDataModule:
    dm = PreferenceDataModule(str(path.parent), tokenizer, train_split="train", val_split=None, max_length=256,
                              max_prompt_length=128, deduplicate=deduplicate, filters=NO_FILTERS)
    dm.setup("fit")
    return dm


def test_duplicates_that_deduplicate_keeps_are_counted_and_warned_about(tmp_path, tokenizer, caplog):
    """`off` drops nothing but counts exact duplicate rows and repeated prompt_ids (and prompts) in one warning
    line and in data_summary.json; `row` drops the duplicate rows and still counts one id on two prompts."""
    import types

    path = _duplicate_pairs(tmp_path)
    with caplog.at_level("WARNING", logger="zephyr_lightning"):
        off = _pairs_module(path, tokenizer, "off")
    assert len(off.datasets["train"]) == 9 and off.summary()["train"]["removed"] == {}
    kept = {"duplicate row": 2, "repeated prompt_id": 1, "duplicate prompt_id": 1, "duplicate prompt": 1}
    assert off.summary()["train"]["duplicates_kept"] == kept
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"{path.parent} [train]: 2 duplicate row, 1 repeated prompt_id, 1 duplicate prompt_id, "
                        "1 duplicate prompt kept (data.deduplicate=off; data.deduplicate=prompt removes them, "
                        "data.deduplicate=row only the duplicate rows)"]
    # What the DataSummary callback writes at the start of fit, and the metric and log line it gives.
    trainer = types.SimpleNamespace(datamodule=off, is_global_zero=True, default_root_dir=str(tmp_path / "run"),
                                    loggers=[], global_step=0)
    DataSummary().on_fit_start(trainer, None)
    written = json.loads((tmp_path / "run" / "data_summary.json").read_text())
    assert written["train"]["duplicates_kept"] == kept and written["cleaning"]["deduplicate"] == "off"
    assert DataSummary.metrics(written)["data/train/duplicates_kept"] == 5
    assert "9 of 9 rows used (2 kept: duplicate row; 1 kept: repeated prompt_id;" in DataSummary.describe(written)

    caplog.clear()
    with caplog.at_level("WARNING", logger="zephyr_lightning"):
        row = _pairs_module(path, tokenizer, "row")
    assert row.summary()["train"]["removed"] == {"duplicate row": 2} and len(row.datasets["train"]) == 7
    assert row.summary()["train"]["duplicates_kept"] == {"duplicate prompt_id": 1}  # a second pair per prompt is fine
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{path.parent} [train]: 1 duplicate prompt_id kept (data.deduplicate=row; one prompt_id names two prompts: "
        "fix the ids, or data.deduplicate=prompt keeps the first)"]

    caplog.clear()
    with caplog.at_level("WARNING", logger="zephyr_lightning"):
        prompt = _pairs_module(path, tokenizer, "prompt")
    assert prompt.summary()["train"]["removed"] == {"duplicate row": 2, "duplicate prompt": 2, "duplicate prompt_id": 1}
    assert prompt.summary()["train"]["duplicates_kept"] == {} and len(prompt.datasets["train"]) == 4
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_file_that_is_both_train_and_test_is_not_emptied(tmp_path, tokenizer, caplog):
    path = write_jsonl(tmp_path / "all.jsonl", _rows(DATA / "chat_a" / "train_sft.jsonl")[:5])
    with caplog.at_level("WARNING", logger="zephyr_lightning"):
        dm = _sft(tokenizer, path=str(path))
    assert len(dm.datasets["train"]) == 5 and len(dm.datasets["val"]) == 5
    assert "is both a training and a validation file" in caplog.text


def test_filters_on_preference_pairs_read_the_chosen_answer_and_lengths(tokenizer):
    rows = _rows(DATA / "prefs_a" / "train_prefs.jsonl")
    dm = PreferenceDataModule(PREFS_A, tokenizer, max_length=256, max_prompt_length=128)
    dm.setup("fit")
    assert dm.summary()["train"]["removed"] == {"filter: model disclaimer": 1}
    kept = set(dm.datasets["train"]["prompt_id"])
    assert rows[6]["prompt_id"] not in kept and rows[7]["prompt_id"] in kept  # rejected "I don't have ..." is kept
    # Length bounds, each named; the expected counts come from the file itself.
    limits = {"max_prompt_chars": 30, "min_response_chars": 14}
    dm = PreferenceDataModule(PREFS_A, tokenizer, max_length=256, max_prompt_length=128, val_split=None,
                              filters={"model_disclaimer": False, **limits})
    dm.setup("fit")
    too_long = [r for r in rows if len(r["prompt"]) > 30]
    too_short = [r for r in rows if len(r["prompt"]) <= 30 and min(len(r["chosen"][-1]["content"]),
                                                                   len(r["rejected"][-1]["content"])) < 14]
    assert too_long and too_short
    assert dm.summary()["train"]["removed"] == {"filter: prompt longer than max_prompt_chars": len(too_long),
                                                "filter: response shorter than min_response_chars": len(too_short)}


@pytest.mark.parametrize("name,bound", [("min_prompt_chars", 30), ("max_prompt_chars", 30), ("min_response_chars", 60),
                                        ("max_response_chars", 60)])
def test_length_filters_each_count_under_their_name(tokenizer, name, bound):
    rows = _rows(DATA / "chat_a" / "train_sft.jsonl")
    what, side = name.split("_")[1], name.split("_")[0]
    def length_out(r):  # the rule, by hand: the prompt, or any assistant turn, past the bound
        lengths = [len(r["prompt"])] if what == "prompt" else [len(t["content"]) for t in r["messages"] if t["role"] == "assistant"]
        return any(n < bound for n in lengths) if side == "min" else any(n > bound for n in lengths)
    expected = sum(map(length_out, rows))
    assert 0 < expected < len(rows)
    dm = _sft(tokenizer, path=CHAT_A, val_split=None, deduplicate="off", filters={**NO_FILTERS, name: bound})
    relation = "shorter than" if side == "min" else "longer than"
    assert dm.summary()["train"]["removed"] == {f"filter: {what} {relation} {name}": expected}


def test_a_row_count_above_the_split_is_refused_naming_the_source(tokenizer):
    with pytest.raises(SchemaError, match=r"chat_a \[train_sft\]: rows=50, but the split has 12 rows"):
        _sft(tokenizer, mixture={CHAT_A: 50, CHAT_B: B_SPLITS})


def test_a_mixture_without_training_rows_is_refused(tokenizer):
    with pytest.raises(ValueError, match=r"no source gives training rows"):
        _sft(tokenizer, mixture={CHAT_A: 0.0, CHAT_B: {"fraction": 0, **B_SPLITS}})


def test_a_single_file_in_a_mixture_is_a_train_split_only(tokenizer):
    file = str(DATA / "chat_a" / "train_sft.jsonl")
    dm = _sft(tokenizer, mixture={file: 1.0, CHAT_B: B_SPLITS}, filters=NO_FILTERS, deduplicate="off")
    a, b = dm.summary()["mixture"]
    assert (a["train"]["taken"], a["val"]["taken"], b["val"]["taken"]) == (12, 0, 2)


# ---------------------------------------------------------------------------------- decontamination


def test_planted_contamination_is_found_by_exact_match_and_by_13_gram_overlap(tokenizer):
    questions = {"questions": [str(DATA / "questions.jsonl")]}
    dm = _sft(tokenizer, mixture={CHAT_A: 1.0, CHAT_B: B_SPLITS}, decontamination=questions, filters=NO_FILTERS,
              deduplicate="off")
    assert _removed(dm) == {CHAT_A: {"contaminated: exact match": 1}, CHAT_B: {"contaminated: 13-gram overlap": 1}}
    matches = {(m["source"], m["row"], m["question_id"], m["turn"], m["match"]) for m in dm.contamination()}
    assert matches == {(CHAT_A, 9, "101", 1, "exact"), (CHAT_B, 7, "102", 1, "13-gram")}
    overlap = next(m["overlap"] for m in dm.contamination() if m["match"] == "13-gram")
    question = words(_rows(DATA / "questions.jsonl")[1]["turns"][0])
    grams = {tuple(question[i:i + 13]) for i in range(len(question) - 12)}
    text = words(_rows(DATA / "chat_b" / "train.jsonl")[7]["conversations"][2]["value"])
    found = {tuple(text[i:i + 13]) for i in range(len(text) - 12)} & grams
    assert overlap == round(len(found) / len(grams), 4) and 0.5 <= overlap < 1  # counted by hand
    summary = dm.summary()["decontamination"]
    assert summary["matched_question_ids"] == {str(DATA / "questions.jsonl"): ["101", "102"]}
    assert summary["removed"] == {"exact match": 1, "13-gram overlap": 1} and summary["evaluation_turns"] == 6
    # A stricter threshold leaves the partial copy in; the exact one always goes.
    strict = _sft(tokenizer, mixture={CHAT_A: 1.0, CHAT_B: B_SPLITS}, filters=NO_FILTERS, deduplicate="off",
                  decontamination={**questions, "threshold": 1.0})
    assert _removed(strict) == {CHAT_A: {"contaminated: exact match": 1}}


def _naive_matches(rows: list[list[str]], texts: list[str], n: int, threshold: float) -> list[set[int]]:
    """The definition, directly: sets of word n-gram tuples and normalised strings."""
    out = []
    for row in rows:
        row_words = [words(t) for t in row]
        row_grams = {tuple(w[i:i + n]) for w in row_words for i in range(len(w) - n + 1)}
        found = set()
        for index, text in enumerate(texts):
            w = words(text)
            grams = {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}
            exact = bool(w) and any(rw == w for rw in row_words)
            if exact or (grams and len(grams & row_grams) >= max(1, math.ceil(threshold * len(grams)))):
                found.add(index)
        out.append(found)
    return out


@pytest.mark.parametrize("n,threshold", [(13, 0.5), (4, 0.2), (3, 1.0)])
def test_index_matching_equals_the_definition(n, threshold):
    rng = random.Random(n)
    vocab = [f"w{i}" for i in range(40)]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(2, 40))) for _ in range(30)]
    rows = []
    for _ in range(80):
        row = [" ".join(rng.choice(vocab + ["zz"]) for _ in range(rng.randint(0, 40))) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.7:  # a part of an evaluation text (at times all of it), in other case and punctuation
            source = rng.choice(texts).split()
            length = rng.randint(len(source) // 2, len(source))
            start = rng.randint(0, len(source) - length)
            row.insert(rng.randint(0, len(row)), "Q: " + " ".join(source[start : start + length]).upper() + "!")
        rows.append(row)
    index = EvalIndex([EvalText("s", str(i), 1, t) for i, t in enumerate(texts)], ngram=n, threshold=threshold)
    found = [{m.eval_index for m in row} for row in index.find(rows)]
    expected = _naive_matches(rows, texts, n, threshold)
    assert found == expected
    assert sum(map(len, expected)) >= 10 and sum(len(e) for e, row in zip(expected, rows) if len(row) > 1) > 0


# ---------------------------------------------------------------------------------------- AIF prompts


def test_aif_prompts_take_a_mixture_with_the_same_cleaning():
    alpaca, questions = DATA / "alpaca_eval.jsonl", DATA / "questions.jsonl"
    result = load_prompt_set(mixture={CHAT_A: 1.0, FEEDBACK: {"train_split": "train"}}, split="train_sft",
                             decontamination={"questions": [str(alpaca), str(questions)]})
    feedback = _rows(DATA / "feedback" / "train.jsonl")
    texts = [p.instruction for p in result.prompts]
    assert feedback[0]["instruction"] in texts and texts.count("How do I clean a cast iron pan?") == 1
    assert len(texts) == 12 + 5 - 3
    sources = {s["path"]: s for s in result.summary["sources"]}
    assert sources[CHAT_A]["removed"] == {"contaminated: exact match": 1}  # a9: question 101
    # Row 2 is a3's text: for prompts the text is the row, so it is a duplicate row.
    assert sources[FEEDBACK]["removed"] == {"duplicate row": 1, "contaminated: exact match": 1}
    # AlpacaEval has no ids: a question's id is the sha256 of its text, as for prompts.
    assert result.summary["decontamination"]["matched_question_ids"] == {
        str(alpaca): [prompt_id_of(_rows(alpaca)[0]["instruction"])], str(questions): ["101"]}


def test_aif_command_reads_a_prompt_mixture_and_writes_its_counts_and_matches(tmp_path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from zephyr_lightning.aif.__main__ import CONF_DIR, run

    overrides = [
        "step=generate", "prompts.path=null", "prompts.limit=2", "generate.models.tiny_b=null",
        "generate.num_completions=1", "generate.models.tiny_a.max_new_tokens=2",
        f'prompts.mixture=[{{path: "{CHAT_A}", fraction: 1.0, train_split: train_sft}}, {{path: "{FEEDBACK}"}}]',
        f'prompts.decontamination={{questions: ["{DATA / "questions.jsonl"}"]}}',
        f"run_dir={tmp_path}", "progress_bar=false",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("aif", overrides=overrides)
    summary = run(cfg)
    assert summary["generate"]["rows_written"] == 2 and summary["prompts"]["prompts"] == 2
    assert [s["path"] for s in summary["prompts"]["sources"]] == [CHAT_A, FEEDBACK]
    assert json.loads((tmp_path / "summary.json").read_text())["prompts"]["decontamination"]["matched_question_ids"] == {
        str(DATA / "questions.jsonl"): ["101"]}
    matches = [json.loads(line) for line in (tmp_path / "decontamination.jsonl").read_text().splitlines()]
    assert [(m["source"], m["row"], m["question_id"]) for m in matches] == [(CHAT_A, 9, "101")]


# -------------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("kwargs,message", [
    ({"path": CHAT_A, "mixture": {CHAT_B: 1.0}}, "data.mixture={'" + CHAT_B + "': 1.0}: replaces data.path; set data.path=null"),
    ({"path": None}, "data.path=None: give data.path (one source) or data.mixture (several)"),
    ({"path": None, "mixture": {CHAT_A: 1.5}}, "source '" + CHAT_A + "': 1.5 is neither a fraction (<= 1) nor a whole row count"),
    ({"path": None, "mixture": {CHAT_A: {"fraction": 0.5, "rows": 3}}}, "source '" + CHAT_A + "': give fraction or rows, not both"),
    ({"path": None, "mixture": [{"path": CHAT_A, "fraction": 2}]}, "source '" + CHAT_A + "': fraction=2: must be <= 1"),
    ({"path": None, "mixture": [CHAT_A, {"path": CHAT_A, "rows": 3}]}, "source '" + CHAT_A + "' is listed twice"),
    ({"path": CHAT_A, "filters": {"min_prompt_chars": -1}}, "data.filters.min_prompt_chars=-1: must be >= 0"),
    ({"path": CHAT_A, "filters": {"min_prompt_chars": 9, "max_prompt_chars": 3}}, "min_prompt_chars=9 is more than max_prompt_chars=3"),
    ({"path": CHAT_A, "decontamination": {"questions": ["q.jsonl"], "threshold": 0}}, "data.decontamination.threshold=0: must be > 0"),
    ({"path": CHAT_A, "deduplicate": "yes"}, "data.deduplicate='yes': must be one of"),
])
def test_settings_are_checked_by_their_declarations(tokenizer, kwargs, message):
    with pytest.raises(ArgumentError) as raised:
        SFTDataModule(kwargs.pop("path"), tokenizer, **kwargs)
    assert message in str(raised.value)


def test_a_mixture_composes_validates_and_instantiates_from_the_command_line(tmp_path):
    cfg = compose(["+experiment=sft", "data.path=null", "data.deduplicate=prompt",
                   f'data.mixture=[{{path: "{CHAT_A}", fraction: 0.5}}, {{path: "{CHAT_B}", rows: 3, train_split: train, '
                   "test_split: test, columns: {conversations: messages}}]"], tmp_path)
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert validate_config(plain, OmegaConf.to_container(cfg, resolve=False)) == []
    sources = parse_mixture(plain["data"]["mixture"])
    assert [(s.path, s.fraction, s.rows, s.columns) for s in sources] == [
        (CHAT_A, 0.5, None, {}), (CHAT_B, None, 3, {"conversations": "messages"})]
    for override, message in ((f"data.mixture={{{CHAT_A}: 2.5}}", "2.5 is neither a fraction (<= 1) nor a whole row count"),
                              (f"data.mixture={{{CHAT_A}: 0.5}}", "replaces data.path; set data.path=null")):
        bad = compose(["+experiment=sft", override], tmp_path)
        errors = validate_config(OmegaConf.to_container(bad, resolve=True), OmegaConf.to_container(bad, resolve=False))
        assert len(errors) == 1 and errors[0].startswith("data.mixture=") and message in errors[0], errors


def test_summary_metrics_and_card_show_sources_filters_and_contamination(tokenizer):
    dm = _sft(tokenizer, mixture={CHAT_A: 1.0, CHAT_B: B_SPLITS}, decontamination={"questions": [str(DATA / "questions.jsonl")]})
    summary = json.loads(json.dumps(dm.summary()))  # what data_summary.json holds
    metrics = DataSummary.metrics(summary)
    assert metrics["data/train/removed"] == sum(summary["train"]["removed"].values()) == 7
    name = re.sub(r"[^\w.-]+", "_", CHAT_B).strip("_")
    assert metrics[f"data/train/sources/{name}/removed"] == 4
    assert "1 removed: duplicate row" in DataSummary.describe(summary)
    card = render_card(RunRecords(config={"data": {"path": None}}, data_summary=summary))
    data = card.split("## Training data")[1].split("\n## ")[0]
    for text in (f"- `{CHAT_A}`", f"- `{CHAT_B}`", "contaminated: 13-gram overlap: 1", "duplicate prompt: 1",
                 "filter: no final assistant turn: 1", "matched_question_ids", "101, 102", "deduplicate: prompt",
                 "| train | train_sft | 22 | 15 |"):
        assert text in data, (text, data)


def test_train_command_with_a_mixture_writes_the_counts_and_the_matches(tmp_path):
    """`python train.py` as a user runs it, with a mixture and decontamination given on the command line."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    overrides = [
        "data.path=null", "data.deduplicate=prompt",
        f'data.mixture=[{{path: "{CHAT_A}", fraction: 1.0}}, {{path: "{CHAT_B}", train_split: train, test_split: test}}]',
        f'data.decontamination={{questions: ["{DATA / "questions.jsonl"}"]}}',
        "trainer.max_steps=2", "trainer.limit_val_batches=1", "callbacks.sample_generation.max_new_tokens=2",
    ]
    result = subprocess.run([sys.executable, "train.py", "+experiment=sft", f"hydra.run.dir={tmp_path}", "logger=csv",
                             *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "data_summary.json").read_text())
    assert summary["decontamination"]["matched_question_ids"] == {str(DATA / "questions.jsonl"): ["101", "102"]}
    assert [e["path"] for e in summary["mixture"]] == [CHAT_A, CHAT_B]
    matches = [json.loads(line) for line in (tmp_path / "decontamination.jsonl").read_text().splitlines()]
    assert sorted(m["question_id"] for m in matches) == ["101", "102"]
    log = (tmp_path / "train.log").read_text()
    assert "(fraction 1): 12 of 12 rows taken, 9 used" in log and "1 contaminated: 13-gram overlap" in log
    assert "contaminated: exact match: 1" in (tmp_path / "hf" / "README.md").read_text()


# Each case of docs/data_errors.md's mixture table -> the test that shows it.
DOCUMENTED = {
    "removed: contaminated: exact match": test_planted_contamination_is_found_by_exact_match_and_by_13_gram_overlap,
    "removed: contaminated: 13-gram overlap": test_planted_contamination_is_found_by_exact_match_and_by_13_gram_overlap,
    "removed: filter: no final assistant turn": test_duplicates_test_overlap_and_filters_are_removed_and_counted_by_source,
    "removed: filter: model disclaimer": test_filters_on_preference_pairs_read_the_chosen_answer_and_lengths,
    "removed: filter: prompt shorter than min_prompt_chars": test_length_filters_each_count_under_their_name,
    "removed: filter: prompt longer than max_prompt_chars": test_length_filters_each_count_under_their_name,
    "removed: filter: response shorter than min_response_chars": test_length_filters_each_count_under_their_name,
    "removed: filter: response longer than max_response_chars": test_length_filters_each_count_under_their_name,
    "removed: prompt in test split": test_duplicates_test_overlap_and_filters_are_removed_and_counted_by_source,
    "removed: duplicate row": test_repeated_prompt_ids_and_exact_duplicate_rows_of_one_file,
    "removed: duplicate prompt_id": test_repeated_prompt_ids_and_exact_duplicate_rows_of_one_file,
    "removed: duplicate prompt": test_duplicates_test_overlap_and_filters_are_removed_and_counted_by_source,
    "kept: duplicate row": test_duplicates_that_deduplicate_keeps_are_counted_and_warned_about,
    "kept: repeated prompt_id": test_duplicates_that_deduplicate_keeps_are_counted_and_warned_about,
    "kept: duplicate prompt_id": test_duplicates_that_deduplicate_keeps_are_counted_and_warned_about,
    "kept: duplicate prompt": test_duplicates_that_deduplicate_keeps_are_counted_and_warned_about,
    "removed: binarize: all scores tie": test_ultrafeedback_completions_are_binarized_the_zephyr_way,
    "refused: bad column mapping": test_a_bad_mapping_is_refused_naming_the_source,
    "refused: unknown schema": test_a_source_in_no_known_schema_is_refused_naming_it_and_its_columns,
    "refused: column types differ": test_sources_whose_columns_differ_in_type_are_refused_naming_both,
    "refused: too few rows": test_a_row_count_above_the_split_is_refused_naming_the_source,
    "refused: no training rows": test_a_mixture_without_training_rows_is_refused,
    "refused: mixture setting": test_settings_are_checked_by_their_declarations,
    "warning: one file is train and test": test_a_file_that_is_both_train_and_test_is_not_emptied,
}


def test_every_documented_mixture_case_has_a_test():
    section = DOC.read_text().split("## Mixtures, duplicates, filters and evaluation prompts", 1)[1]
    section = re.split(r"^#{1,2} ", section, maxsplit=1, flags=re.M)[0]  # up to the next section
    documented = re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)
    assert sorted(documented) == sorted(DOCUMENTED)
    assert all(test.__name__.startswith("test_") for test in DOCUMENTED.values())
    # Every reason the cleaning code can give is a documented case: a new one fails here until it has a row.
    import zephyr_lightning.data.cleaning as cleaning

    source = Path(cleaning.__file__).read_text()
    reasons = set(re.findall(r'"((?:filter: |duplicate |repeated |prompt in test|contaminated: exact)[^"]*)"', source))
    assert len(reasons) >= 10, reasons
    cases = {case.split(": ", 1)[1] for case in DOCUMENTED if case.startswith(("removed: ", "kept: "))}
    assert reasons <= cases, sorted(reasons - cases)


def test_aif_prompts_count_the_duplicates_they_keep(tmp_path, caplog):
    """Prompts sharing a prompt_id are always dropped (generation keys rows by it); the same prompt under
    another id is kept with deduplicate=off, counted in the summary and warned about, and removed with prompt."""
    path = _duplicate_pairs(tmp_path)
    with caplog.at_level("WARNING", logger="zephyr_lightning"):
        off = load_prompt_set(str(path.parent), split="train", deduplicate="off")
    assert len(off.prompts) == 6 and off.summary["duplicates_kept"] == {"duplicate prompt": 1}
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{path.parent} [train]: 1 duplicate prompt kept (prompts.deduplicate=off; prompts.deduplicate=prompt removes "
        "them, prompts.deduplicate=row only the duplicate rows)"]
    deduplicated = load_prompt_set(str(path.parent), split="train", deduplicate="prompt")
    assert len(deduplicated.prompts) == 5 and deduplicated.summary["duplicates_kept"] == {}
