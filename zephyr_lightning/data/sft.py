"""Dialogues in the ``HuggingFaceH4/ultrachat_200k`` schema, tokenized for supervised fine-tuning.

A row has ``prompt``, ``prompt_id`` and ``messages`` (a list of ``{role, content}`` turns). The loss is
on assistant tokens (content and closing end-of-turn token) by default, or on every token.
"""

from __future__ import annotations

import logging
import random
from typing import Annotated, Any, Literal, get_args

from pydantic import Field
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from zephyr_lightning.arguments import PositiveInt, check_arguments
from zephyr_lightning.data.base import ChatDataModule, RowTokenizer
from zephyr_lightning.data.chat import BadRowError, tokenize_chat, validate_dialogue
from zephyr_lightning.data.collators import SFTCollator
from zephyr_lightning.data.packing import PackingStrategy, pack_lengths, padding_fraction
from zephyr_lightning.models import ModelSpec

log = logging.getLogger(__name__)

LossOn = Literal["assistant", "all"]
LOSS_ON: tuple[str, ...] = get_args(LossOn)


class SFTTokenizer(RowTokenizer):
    """One dialogue -> token ids and the mask of tokens the loss is on."""

    columns = ("prompt_id", "input_ids", "loss_mask", "length")

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, max_length: int, loss_on: str, **common: Any):
        super().__init__(tokenizer, **common)
        self.max_length = max_length
        self.loss_on = loss_on

    def placeholder(self, row: dict[str, Any]) -> dict[str, Any]:
        return {**super().placeholder(row), "length": 0}

    def tokenize_row(self, row: dict[str, Any], where: str) -> tuple[dict[str, Any], str]:
        messages = validate_dialogue(row, where=where)
        chat = tokenize_chat(self.tokenizer, messages, where=where, chat_format=self.chat_format)
        ids = chat.input_ids
        mask = chat.assistant_mask if self.loss_on == "assistant" else [1] * len(ids)
        status = "ok"
        if len(ids) > self.max_length:
            if self.on_too_long == "error":
                raise BadRowError(f"{where}: the dialogue has {len(ids)} tokens, more than max_length={self.max_length}")
            if self.on_too_long == "drop":
                return self.placeholder(row), "dropped: longer than max_length"
            ids, mask = ids[: self.max_length], mask[: self.max_length]
            status = "truncated"
            if not any(mask[1:]):
                return self.placeholder(row), "dropped: no assistant token within max_length"
        return {"prompt_id": self.prompt_id(row), "input_ids": ids, "loss_mask": mask, "length": len(ids)}, status


class PackedDataset(Dataset):
    """A view of a tokenized split as bins of dialogues; item ``i`` is the list of rows of bin ``i``."""

    def __init__(self, rows: Any, bins: list[list[int]]) -> None:
        self.rows = rows
        self.bins = bins

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, index: int) -> list[dict[str, Any]]:
        return [self.rows[i] for i in self.bins[index]]


class SFTDataModule(ChatDataModule):
    """dSFT data: dialogues from a hub data set or local files, with assistant-only (or full) loss masks
    and optional packing.

    Args:
        path: hub name (``HuggingFaceH4/ultrachat_200k``), local file or folder (holding
            ``<split>.jsonl``/``.json``/``.parquet``), or ``builtin:tiny_chat``; None with ``mixture``.
        tokenizer: a tokenizer, or the model spec / name to load one from.
        train_split, val_split: split names (ultrachat_200k: ``train_sft``, ``test_sft``).
        max_length: longest dialogue in tokens (longer ones are cut, dropped with ``on_too_long=drop``, or
            bad rows with ``on_too_long=error``), and the capacity of a packed row.
        loss_on: ``assistant`` (assistant turns and their end tokens) or ``all`` (every token).
        packing: several dialogues per row without padding; ``batch_size`` then counts rows.
        packing_strategy: ``best_fit_decreasing``, ``first_fit_decreasing`` or ``first_fit``.
        on_bad_row: ``error`` (naming the prompt_id) or ``skip`` (counted) for malformed dialogues.
        seed: the training shuffle (epoch ``e`` uses ``seed + e``), also used to estimate padding without
            packing for the log.
        Other arguments (``add_bos``, ``empty_system_turn``, ``mixture``, ``deduplicate``,
        ``decontamination`` and ``filters`` among them) as in `PreferenceDataModule` and `ChatDataModule`.
    """

    kind = "sft"
    row_tokenizer_class = SFTTokenizer

    def __init__(
        self,
        path: str | None,
        tokenizer: PreTrainedTokenizerBase | ModelSpec | str,
        *,
        train_split: str = "train_sft",
        val_split: str | None = "test_sft",
        max_length: Annotated[int, Field(ge=2)] = 2048,
        loss_on: LossOn = "assistant",
        packing: bool = False,
        packing_strategy: PackingStrategy = "best_fit_decreasing",
        pad_to_multiple_of: PositiveInt | None = None,
        **kwargs: Any,
    ) -> None:
        check_arguments(SFTDataModule, {**locals(), **kwargs}, prefix="data")
        super().__init__(path, tokenizer, train_split=train_split, val_split=val_split, **kwargs)
        self.max_length = max_length
        self.loss_on = loss_on
        self.packing = packing
        self.packing_strategy = packing_strategy
        self.collator = SFTCollator(self.tokenizer.pad_token_id, pad_to_multiple_of=pad_to_multiple_of)
        self.padding: dict[str, dict[str, float]] = {}

    def tokenizer_options(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "loss_on": self.loss_on}

    def after_setup(self) -> None:
        for key, data in list(self.datasets.items()):
            if isinstance(data, PackedDataset) or key in self.padding:
                continue
            lengths = data["length"]
            batch_size = self.batch_size if key == "train" else self.eval_batch_size
            order = list(range(len(lengths)))
            random.Random(self.seed).shuffle(order)
            unpacked = [[lengths[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]
            self.padding[key] = {"unpacked": padding_fraction(lengths, unpacked)}
            if not self.packing:
                log.info("%s [%s]: padding is %.1f%% of tokens (packing off)", self.source_label, self.splits[key],
                         100 * self.padding[key]["unpacked"])
                continue
            bins = pack_lengths(lengths, self.max_length, self.packing_strategy)
            rows = [sum(lengths[i] for i in b) for b in bins]
            packed = [rows[s : s + batch_size] for s in range(0, len(rows), batch_size)]
            self.padding[key]["packed"] = padding_fraction(lengths, packed)
            self.datasets[key] = PackedDataset(data, bins)
            log.info(
                "%s [%s]: packed %d dialogues into %d rows of <= %d tokens (%s); padding %.1f%% of tokens "
                "packed vs %.1f%% unpacked",
                self.source_label, self.splits[key], len(lengths), len(bins), self.max_length, self.packing_strategy,
                100 * self.padding[key]["packed"], 100 * self.padding[key]["unpacked"],
            )
