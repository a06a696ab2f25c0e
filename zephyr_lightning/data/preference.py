"""Preference pairs in the ``HuggingFaceH4/ultrafeedback_binarized`` schema, tokenized for DPO.

A row has ``prompt``, ``prompt_id``, ``chosen`` and ``rejected`` (each a full message list ending in
the assistant's answer) and optionally ``score_chosen`` / ``score_rejected``. The prompt is every
message before the final assistant turn, rendered with the tokenizer's chat template; the completion
is the final assistant turn plus EOS.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import Any

import datasets
import lightning as L
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from zephyr_lightning.data.chat import BadRowError, tokenize_prompt_completion, validate_messages
from zephyr_lightning.data.collators import PreferenceCollator
from zephyr_lightning.data.sources import load_split
from zephyr_lightning.models import ModelSpec, load_tokenizer

log = logging.getLogger(__name__)

ON_TOO_LONG = ("truncate", "drop")
ON_BAD_ROW = ("error", "skip")


def prompt_id_of(prompt: str) -> str:
    """The ultrafeedback_binarized convention: sha256 of the prompt text."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def row_label(source: str, split: str, row: dict[str, Any], index: int) -> str:
    """How errors name a row: its prompt_id when it has one, else its index in the split."""
    pid = row.get("prompt_id")
    return f"{source} [{split}] prompt_id={pid}" if pid else f"{source} [{split}] row {index}"


class PreferenceTokenizer:
    """``datasets.map`` function: one preference row -> prompt, chosen and rejected token ids.

    A class rather than a closure so that ``datasets`` can hash it for its cache and pickle it for
    ``num_proc`` workers.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        source: str,
        split: str,
        max_length: int,
        max_prompt_length: int,
        on_too_long: str,
        on_bad_row: str,
    ) -> None:
        self.tokenizer = tokenizer
        self.source = source
        self.split = split
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.on_too_long = on_too_long
        self.on_bad_row = on_bad_row

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {
            k: []
            for k in ("prompt_id", "prompt_input_ids", "chosen_input_ids", "rejected_input_ids", "status")
        }
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        for row, index in zip(rows, indices):
            where = row_label(self.source, self.split, row, index)
            try:
                prompt, chosen, rejected, status = self.tokenize_row(row, where)
            except BadRowError as err:
                if self.on_bad_row == "error":
                    raise
                log.debug("skipping %s", err)
                prompt, chosen, rejected, status = [], [], [], f"bad: {str(err).split(': ', 1)[-1]}"
            out["prompt_id"].append(str(row.get("prompt_id") or prompt_id_of(str(row.get("prompt", "")))))
            out["prompt_input_ids"].append(prompt)
            out["chosen_input_ids"].append(chosen)
            out["rejected_input_ids"].append(rejected)
            out["status"].append(status)
        return out

    def tokenize_row(self, row: dict[str, Any], where: str) -> tuple[list[int], list[int], list[int], str]:
        for key in ("chosen", "rejected"):
            if key not in row:
                raise BadRowError(f"{where}: missing column {key!r}")
        chosen = validate_messages(row["chosen"], where=f"{where} (chosen)", final_assistant=True)
        rejected = validate_messages(row["rejected"], where=f"{where} (rejected)", final_assistant=True)
        if chosen[:-1] != rejected[:-1]:
            raise BadRowError(f"{where}: chosen and rejected have different prompts")
        if chosen[-1]["content"] == rejected[-1]["content"]:
            raise BadRowError(f"{where}: chosen and rejected completions are identical")
        pc = tokenize_prompt_completion(self.tokenizer, chosen, where=where)
        pr = tokenize_prompt_completion(self.tokenizer, rejected, where=where)
        if pc.prompt_ids != pr.prompt_ids:
            raise BadRowError(f"{where}: chosen and rejected prompts tokenize differently")
        prompt, chosen_ids, rejected_ids = pc.prompt_ids, pc.completion_ids, pr.completion_ids
        status = "ok"
        if len(prompt) > self.max_prompt_length:
            if self.on_too_long == "drop":
                return [], [], [], "dropped: prompt longer than max_prompt_length"
            prompt = prompt[-self.max_prompt_length :]  # keep the end: the question nearest the answer
            status = "truncated"
        room = self.max_length - len(prompt)
        if max(len(chosen_ids), len(rejected_ids)) > room:
            if self.on_too_long == "drop":
                return [], [], [], "dropped: longer than max_length"
            chosen_ids, rejected_ids = chosen_ids[:room], rejected_ids[:room]
            status = "truncated"
        return prompt, chosen_ids, rejected_ids, status


class PreferenceDataModule(L.LightningDataModule):
    """DPO data: preference pairs from a hub data set or local files, tokenized with a chat template.

    Args:
        path: hub name (``HuggingFaceH4/ultrafeedback_binarized``), local file or folder (a folder holds
            ``<split>.jsonl``/``.json``/``.parquet``), or ``builtin:tiny_prefs``.
        tokenizer: a tokenizer, or the model spec / name to load one from.
        train_split, val_split: split names (``val_split=None``: no validation).
        max_length: longest prompt + completion, in tokens.
        max_prompt_length: longest prompt; longer prompts keep their end.
        on_too_long: ``truncate`` (counted) or ``drop`` (counted) rows over the limits.
        on_bad_row: ``error`` (stop, naming the row) or ``skip`` (counted) for malformed rows.
        batch_size: pairs per device per step; ``eval_batch_size`` defaults to it.
        num_proc: processes for tokenization (``datasets.map``); results are cached.
        max_train_samples, max_val_samples: keep only the first N rows (quick runs).
        name: hub configuration name; cache_dir: datasets cache.
    """

    def __init__(
        self,
        path: str,
        tokenizer: PreTrainedTokenizerBase | ModelSpec | str,
        *,
        train_split: str = "train_prefs",
        val_split: str | None = "test_prefs",
        max_length: int = 1024,
        max_prompt_length: int = 512,
        on_too_long: str = "truncate",
        on_bad_row: str = "error",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        num_proc: int | None = None,
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
        pad_to_multiple_of: int | None = None,
        name: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if not 0 < max_prompt_length < max_length:
            raise ValueError(
                f"data.max_prompt_length ({max_prompt_length}) must be > 0 and < data.max_length ({max_length})"
            )
        if on_too_long not in ON_TOO_LONG:
            raise ValueError(f"data.on_too_long={on_too_long!r} is not one of {list(ON_TOO_LONG)}")
        if on_bad_row not in ON_BAD_ROW:
            raise ValueError(f"data.on_bad_row={on_bad_row!r} is not one of {list(ON_BAD_ROW)}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.path = path
        self.tokenizer = tokenizer if isinstance(tokenizer, PreTrainedTokenizerBase) else load_tokenizer(tokenizer)
        self.splits = {"train": train_split, "val": val_split}
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.on_too_long = on_too_long
        self.on_bad_row = on_bad_row
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.num_proc = num_proc
        self.max_samples = {"train": max_train_samples, "val": max_val_samples}
        self.name = name
        self.cache_dir = cache_dir
        self.collator = PreferenceCollator(self.tokenizer.pad_token_id, pad_to_multiple_of=pad_to_multiple_of)
        self.datasets: dict[str, datasets.Dataset] = {}
        # Per split: how many rows were kept, truncated, dropped or skipped (and why).
        self.stats: dict[str, Counter] = {}

    def _tokenized(self, stage: str) -> datasets.Dataset | None:
        split = self.splits[stage]
        if split is None:
            return None
        raw = load_split(self.path, split, name=self.name, cache_dir=self.cache_dir)
        if self.max_samples[stage] is not None:
            raw = raw.select(range(min(self.max_samples[stage], len(raw))))
        fn = PreferenceTokenizer(
            self.tokenizer,
            source=self.path,
            split=split,
            max_length=self.max_length,
            max_prompt_length=self.max_prompt_length,
            on_too_long=self.on_too_long,
            on_bad_row=self.on_bad_row,
        )
        return raw.map(
            fn,
            batched=True,
            with_indices=True,
            remove_columns=raw.column_names,
            num_proc=self.num_proc,
            desc=f"tokenizing {split}",
        )

    def prepare_data(self) -> None:
        # Runs on one process per node: fills the datasets cache that setup() then reads on every rank.
        for stage in ("train", "val"):
            self._tokenized(stage)

    def setup(self, stage: str | None = None) -> None:
        for key in ("train", "val"):
            if key in self.datasets:
                continue
            data = self._tokenized(key)
            if data is None:
                continue
            statuses = Counter(data["status"])
            self.stats[key] = statuses
            kept = data.filter(lambda s: s in ("ok", "truncated"), input_columns="status")
            if len(kept) == 0:
                raise ValueError(f"{self.path} [{self.splits[key]}]: no usable rows ({dict(statuses)})")
            self.datasets[key] = kept.remove_columns("status")
            self._log_stats(key, statuses)

    def _log_stats(self, key: str, statuses: Counter) -> None:
        total = sum(statuses.values())
        summary = ", ".join(f"{n} {status}" for status, n in statuses.most_common() if status != "ok")
        log.info(
            "%s [%s]: %d of %d pairs used%s (max_length=%d, max_prompt_length=%d)",
            self.path,
            self.splits[key],
            statuses["ok"] + statuses["truncated"],
            total,
            f"; {summary}" if summary else "",
            self.max_length,
            self.max_prompt_length,
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.datasets["train"],
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self.datasets:
            return []
        return DataLoader(
            self.datasets["val"],
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
