"""One test case per row of docs/data_errors.md: the error names the row (or file and line), and with
data.on_bad_row=skip the row is skipped and counted in the stats, the log and data_summary.json."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from tests.helpers import pref_row, write_jsonl
from zephyr_lightning import PreferenceDataModule, SFTDataModule
from zephyr_lightning.callbacks import DataSummary
from zephyr_lightning.data.chat import BadRowError
from zephyr_lightning.data.sources import DataError, load_split_report

DOC = Path(__file__).resolve().parent.parent / "docs" / "data_errors.md"
BAD_ID = "bad-row-7"


def sft_row(prompt: str, answer: str, prompt_id: str) -> dict:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {"prompt": prompt, "prompt_id": prompt_id, "messages": messages}


def _good_prefs(n: int = 3) -> list[dict]:
    return [pref_row(f"Question {i}?", f"Answer {i}.", "No.", prompt_id=f"good-{i}") for i in range(n)]


def _good_sft(n: int = 3) -> list[dict]:
    return [sft_row(f"Question {i}?", f"Answer {i}.", f"good-{i}") for i in range(n)]


def _drop_key(message: dict, key: str) -> None:
    del message[key]


# id -> (kind, how to break a row, text the error must contain, extra DataModule arguments)
ROW_CASES = {
    "missing-role": [
        ("prefs", lambda r: _drop_key(r["chosen"][1], "role"), "needs 'role' and 'content'", {}),
        ("sft", lambda r: _drop_key(r["messages"][1], "role"), "needs 'role' and 'content'", {}),
    ],
    "unknown-role": [
        ("prefs", lambda r: r["rejected"][0].update(role="human"), "has role 'human'", {}),
        ("sft", lambda r: r["messages"][0].update(role="human"), "has role 'human'", {}),
    ],
    "roles-not-alternating": [
        ("prefs", lambda r: r["chosen"].insert(1, {"role": "user", "content": "Again?"}), "roles must alternate", {}),
        ("sft", lambda r: r["messages"].insert(1, {"role": "user", "content": "Again?"}), "roles must alternate", {}),
    ],
    "starts-with-assistant": [
        ("prefs", lambda r: r["chosen"].insert(0, {"role": "assistant", "content": "Hi."}),
         "starts with 'assistant'", {}),
        ("sft", lambda r: r["messages"].insert(0, {"role": "assistant", "content": "Hi."}),
         "starts with 'assistant'", {}),
    ],
    "empty-content": [
        ("prefs", lambda r: r["chosen"][-1].update(content="  "), "empty content", {}),
        ("sft", lambda r: r["messages"][-1].update(content=""), "empty content", {}),
    ],
    "content-not-text": [
        ("prefs", lambda r: r["chosen"][-1].update(content=5), "has content that is a JSON number (5), not a string", {}),
        ("sft", lambda r: r["messages"][0].update(content=["a", "b"]), "has content that is a JSON list", {}),
    ],
    "final-turn-not-assistant": [
        ("prefs", lambda r: r["rejected"].pop(), "last message is 'user'", {}),
    ],
    "no-assistant-turn": [
        ("sft", lambda r: r["messages"].pop(), "no assistant turn", {}),
    ],
    "different-prompts": [
        ("prefs", lambda r: r["rejected"][0].update(content="Another question?"), "different prompts", {}),
    ],
    "identical-completions": [
        ("prefs", lambda r: r["rejected"][-1].update(content=r["chosen"][-1]["content"]), "identical", {}),
    ],
    "missing-column": [
        ("prefs", lambda r: r.pop("rejected"), "no 'rejected' (missing or null)", {}),
        ("sft", lambda r: r.pop("messages"), "no 'messages' (missing or null)", {}),
    ],
    "prompt-too-long": [
        ("prefs", lambda r: r["chosen"][0].update(content=" ".join(["word"] * 80)) or r["rejected"][0].update(
            content=" ".join(["word"] * 80)), "more than max_prompt_length=32", {"on_too_long": "error"}),
    ],
    "too-long": [
        ("prefs", lambda r: r["chosen"][-1].update(content=" ".join(["long"] * 80)),
         "more than max_length=64", {"on_too_long": "error"}),
        ("sft", lambda r: r["messages"][-1].update(content=" ".join(["long"] * 80)),
         "more than max_length=64", {"on_too_long": "error"}),
    ],
}

# id -> (bytes of the bad line, text the error must contain, the counted reason)
LINE_CASES = {
    "invalid-utf8": (b'{"prompt": "caf\xff\xfe", "prompt_id": "x"}', "invalid UTF-8 (byte 0xff", "invalid UTF-8"),
    "invalid-json": (b'{"prompt": "cut off', "invalid JSON (Unterminated string", "invalid JSON"),
    "not-an-object": (b"[1, 2]", "not a JSON object (a JSON list)", "not a JSON object"),
}


def _datamodule(kind: str, path: Path, tokenizer, **kwargs):
    common = dict(train_split="train", val_split=None, batch_size=2, **kwargs)
    if kind == "prefs":
        return PreferenceDataModule(str(path), tokenizer, max_length=64, max_prompt_length=32, **common)
    return SFTDataModule(str(path), tokenizer, max_length=64, **common)


def _skipped(dm) -> int:
    return sum(n for status, n in dm.stats["train"].items() if status.startswith("bad"))


FILE_CASES = ("empty-file", "empty-row", "every-line-unreadable", "no-usable-rows")


def test_every_documented_case_has_a_test():
    from tests.test_user_errors import USER_ERROR_CASES

    documented = set(re.findall(r"^\| `([a-z0-9-]+)` \|", DOC.read_text(), flags=re.M))
    tested = set(ROW_CASES) | set(LINE_CASES) | set(FILE_CASES) | set(USER_ERROR_CASES)
    assert documented == tested


def _bad_row(kind: str, case_id: str, mutate) -> dict:
    prompt_id = f"{BAD_ID}-{case_id}"
    prompt = f"Broken {case_id}?"  # distinct: rows with one prompt would be duplicates (data.deduplicate)
    row = pref_row(prompt, "Yes.", "No.", prompt_id=prompt_id) if kind == "prefs" else sft_row(prompt, "Yes.", prompt_id)
    mutate(row)
    return row


@pytest.mark.parametrize(
    "case_id,kind,mutate,match,kwargs",
    [(cid, *case) for cid, cases in ROW_CASES.items() for case in cases],
    ids=[f"{cid}-{case[0]}" for cid, cases in ROW_CASES.items() for case in cases],
)
def test_bad_row_error_names_the_row(tmp_path, tokenizer, case_id, kind, mutate, match, kwargs):
    dm = _datamodule(kind, tmp_path, tokenizer, **kwargs)
    row = _bad_row(kind, case_id, mutate)
    tokenize = dm.row_tokenizer("train")
    with pytest.raises(BadRowError, match=re.escape(match)) as err:
        tokenize({key: [value] for key, value in row.items()}, [0])  # what datasets.map calls, one row
    assert f"prompt_id={BAD_ID}-{case_id}" in str(err.value) and str(tmp_path) in str(err.value)


@pytest.mark.parametrize("kind", ["prefs", "sft"])
def test_bad_rows_are_skipped_and_counted(tmp_path, tokenizer, caplog, kind):
    """Every case of the table for this kind in one file, read through datasets with on_bad_row=skip."""
    cases = [(cid, case) for cid, cs in ROW_CASES.items() for case in cs if case[0] == kind]
    bad = [_bad_row(kind, cid, mutate) for cid, (_, mutate, _, _) in cases]
    good = _good_prefs() if kind == "prefs" else _good_sft()
    path = write_jsonl(tmp_path / "train.jsonl", [good[0], *bad, *good[1:]])
    with caplog.at_level(logging.INFO, logger="zephyr_lightning"):
        # on_too_long=error makes the over-long cases bad rows too (see the table).
        dm = _datamodule(kind, path, tokenizer, on_bad_row="skip", on_too_long="error")
        dm.setup("fit")

    assert dm.datasets["train"]["prompt_id"] == [r["prompt_id"] for r in good]
    assert _skipped(dm) == len(cases)
    reasons = " | ".join(status for status in dm.stats["train"] if status.startswith("bad"))
    for _, (_, _, match, _) in cases:
        assert match in reasons
    total = len(good) + len(cases)
    assert f"{len(good)} of {total} rows used; " in caplog.text and " bad: " in caplog.text
    summary = dm.summary()["train"]
    assert summary["rows"] == total and summary["used"] == len(good)
    assert sum(summary["skipped_bad"].values()) == len(cases)


def test_over_long_rows_follow_on_too_long_first(tmp_path, tokenizer):
    rows = _good_prefs()
    long = pref_row(" ".join(["word"] * 80), "Yes.", "No.", prompt_id=BAD_ID)
    path = write_jsonl(tmp_path / "train.jsonl", [*rows, long])
    truncating = _datamodule("prefs", path, tokenizer, on_bad_row="error")
    truncating.setup("fit")
    assert truncating.stats["train"]["truncated"] == 1 and len(truncating.datasets["train"]) == 4
    dropping = _datamodule("prefs", path, tokenizer, on_bad_row="error", on_too_long="drop")
    dropping.setup("fit")
    assert dropping.summary()["train"]["dropped"] == {"prompt longer than max_prompt_length": 1}


@pytest.mark.parametrize("case_id", sorted(LINE_CASES))
def test_unreadable_line_names_file_and_line_or_is_skipped(tmp_path, tokenizer, caplog, case_id):
    line, match, reason = LINE_CASES[case_id]
    rows = _good_prefs()
    path = tmp_path / "train.jsonl"
    good = [json.dumps(r).encode() for r in rows]
    path.write_bytes(b"\n".join([good[0], line, good[1], b"", good[2]]) + b"\n")

    with pytest.raises(BadRowError) as err:
        _datamodule("prefs", path, tokenizer).setup("fit")
    assert f"{path}: 1 unreadable line(s): line 2: {match}" in str(err.value)

    with caplog.at_level(logging.INFO, logger="zephyr_lightning"):
        dm = _datamodule("prefs", path, tokenizer, on_bad_row="skip")
        dm.setup("fit")
    assert dm.datasets["train"]["prompt_id"] == ["good-0", "good-1", "good-2"]
    assert dm.stats["train"][f"bad: {reason}"] == 1
    assert f"{path}:2: {match}" in caplog.text
    assert "3 of 4 rows used" in caplog.text
    assert dm.summary()["train"]["unreadable_lines"] == [f"{path}:2: " + dm.unreadable["train"][0].reason]


def test_no_usable_rows_is_always_an_error(tmp_path, tokenizer):
    rows = [pref_row("Same?", "Same.", "Same.", prompt_id=f"dup-{i}") for i in range(2)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=r"\[train\]: no usable rows; of 2 rows: 2 bad: chosen and rejected "
                                        r"completions are identical$"):
        _datamodule("prefs", path, tokenizer, on_bad_row="skip").setup("fit")


@pytest.mark.parametrize("content", [b"", b"\n  \n\t\n"], ids=["0-bytes", "blank-lines"])
def test_an_empty_file_says_it_is_empty(tmp_path, tokenizer, content):
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    what = "empty (0 bytes)" if not content else "only blank lines"
    for on_bad_row in ("error", "skip"):
        with pytest.raises(DataError, match=re.escape(f"{path}: the file is {what}; split 'train' has no rows")):
            _datamodule("prefs", tmp_path, tokenizer, on_bad_row=on_bad_row).setup("fit")


def test_a_file_of_unreadable_lines_says_no_row_is_left(tmp_path, tokenizer):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"not json\n\n[1, 2]\n{\"cut\n")
    with pytest.raises(DataError, match=re.escape(f"{path}: no usable rows: every line is unreadable "
                                                  "(2 invalid JSON, 1 not a JSON object)")):
        _datamodule("prefs", path, tokenizer, on_bad_row="skip").setup("fit")


def test_a_null_line_is_named_by_its_line_in_the_file(tmp_path, tokenizer):
    """Rows of a local JSON-lines file are named by file line (blank and skipped lines counted), not by
    their index among the rows."""
    good = [json.dumps(r).encode() for r in _good_prefs()]
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join([good[0], b"", b"null", good[1], b"{}", good[2]]) + b"\n")
    with pytest.raises(BadRowError, match=re.escape(f"{path}:3 [train]: the row is empty")):
        _datamodule("prefs", path, tokenizer, on_bad_row="error").setup("fit")
    dm = _datamodule("prefs", path, tokenizer, on_bad_row="skip")
    dm.setup("fit")
    assert dm.datasets["train"]["prompt_id"] == ["good-0", "good-1", "good-2"]
    assert dm.stats["train"]["bad: the row is empty (every column is null: a line `null` or `{}`)"] == 2

    # An unreadable line (here 4) is skipped before datasets reads the file: the rows after it keep
    # their own line numbers.
    path.write_bytes(b"\n".join([good[0], b"", b"null", b"{broken", good[1], b"{}", good[2]]) + b"\n")
    lines = load_split_report(str(path), "train", on_bad_line="skip").lines
    assert [lines.line(i) for i in range(5)] == [1, 5, 6, 7, None]  # line 3 (null) is unreadable too


def test_rows_of_a_local_file_are_named_by_line_and_prompt_id(tmp_path, tokenizer):
    rows = _good_prefs()
    rows[1]["chosen"][-1]["content"] = 5
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(BadRowError) as err:
        _datamodule("prefs", path, tokenizer).setup("fit")
    assert str(err.value).startswith(f"{path}:2 [train] prompt_id=good-1 (chosen): message 1 (assistant) has "
                                     "content that is a JSON number (5), not a string")


def test_skips_reach_data_summary_json_and_the_loggers(tmp_path, tokenizer):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    rows = _good_prefs(4)
    bad = pref_row("Broken?", "Same.", "Same.", prompt_id=BAD_ID)
    path = tmp_path / "data" / "train.jsonl"
    write_jsonl(path, [*rows, bad])
    with open(path, "ab") as f:
        f.write(b'{"cut off\n')
    dm = _datamodule("prefs", path, tokenizer, on_bad_row="skip")

    from zephyr_lightning import DPOModule, OptimizerConfig

    module = DPOModule("builtin:tiny-mistral", optim=OptimizerConfig(lr=1e-3, warmup_ratio=0.0))
    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=1, logger=CSVLogger(tmp_path, name="csv"),
                        callbacks=[DataSummary()], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    summary = json.loads((tmp_path / "data_summary.json").read_text())
    assert summary["train"]["rows"] == 6 and summary["train"]["used"] == 4
    assert summary["train"]["skipped_bad"] == {"chosen and rejected completions are identical": 1, "invalid JSON": 1}
    assert summary["train"]["unreadable_lines"][0].startswith(f"{path}:6: invalid JSON")
    metrics = next(tmp_path.glob("csv/**/metrics.csv")).read_text()
    assert "data/train/skipped_bad" in metrics
