"""Preference pairs in the ``HuggingFaceH4/ultrafeedback_binarized`` schema, tokenized for DPO.

A row has ``prompt``, ``prompt_id``, ``chosen`` and ``rejected`` (each a full message list ending in
the assistant's answer) and optionally ``score_chosen`` / ``score_rejected``. The prompt is every
message before the final assistant turn, rendered with the tokenizer's chat template; the completion
is the final assistant turn plus EOS.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field
from transformers import PreTrainedTokenizerBase

from zephyr_lightning.arguments import PositiveInt, check_arguments, cross_check
from zephyr_lightning.data.base import ChatDataModule, RowTokenizer
from zephyr_lightning.data.chat import BadRowError, tokenize_prompt_completion, validate_pair
from zephyr_lightning.data.collators import PreferenceCollator
from zephyr_lightning.models import ModelSpec


class PreferenceTokenizer(RowTokenizer):
    """One preference row -> prompt, chosen and rejected token ids (completions without the prompt)."""

    columns = ("prompt_id", "prompt_input_ids", "chosen_input_ids", "rejected_input_ids")

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, max_length: int, max_prompt_length: int, **common: Any):
        super().__init__(tokenizer, **common)
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length

    def tokenize_row(self, row: dict[str, Any], where: str) -> tuple[dict[str, Any], str]:
        chosen, rejected = validate_pair(row, where=where)
        pc = tokenize_prompt_completion(self.tokenizer, chosen, where=where, chat_format=self.chat_format)
        pr = tokenize_prompt_completion(self.tokenizer, rejected, where=where, chat_format=self.chat_format)
        if pc.prompt_ids != pr.prompt_ids:
            raise BadRowError(f"{where}: chosen and rejected prompts tokenize differently")
        prompt, chosen_ids, rejected_ids = pc.prompt_ids, pc.completion_ids, pr.completion_ids
        status = "ok"
        if len(prompt) > self.max_prompt_length:
            if self.on_too_long == "error":
                raise BadRowError(
                    f"{where}: the prompt has {len(prompt)} tokens, more than max_prompt_length={self.max_prompt_length}"
                )
            if self.on_too_long == "drop":
                return self.placeholder(row), "dropped: prompt longer than max_prompt_length"
            prompt = prompt[-self.max_prompt_length :]  # keep the end: the question nearest the answer
            status = "truncated"
        room = self.max_length - len(prompt)
        if max(len(chosen_ids), len(rejected_ids)) > room:
            if self.on_too_long == "error":
                longest = len(prompt) + max(len(chosen_ids), len(rejected_ids))
                raise BadRowError(f"{where}: prompt + completion has {longest} tokens, more than max_length={self.max_length}")
            if self.on_too_long == "drop":
                return self.placeholder(row), "dropped: longer than max_length"
            chosen_ids, rejected_ids = chosen_ids[:room], rejected_ids[:room]
            status = "truncated"
        values = {
            "prompt_id": self.prompt_id(row),
            "prompt_input_ids": prompt,
            "chosen_input_ids": chosen_ids,
            "rejected_input_ids": rejected_ids,
        }
        return values, status


def _prompt_shorter_than_pair(arguments: dict) -> tuple[str, str] | None:
    if arguments["max_prompt_length"] >= arguments["max_length"]:
        return "max_prompt_length", f"must be < data.max_length ({arguments['max_length']})"
    return None


@cross_check(_prompt_shorter_than_pair)
class PreferenceDataModule(ChatDataModule):
    """DPO data: preference pairs from a hub data set or local files, tokenized with a chat template.

    Args:
        path: hub name (``HuggingFaceH4/ultrafeedback_binarized``), local file or folder (a folder holds
            ``<split>.jsonl``/``.json``/``.parquet``), or ``builtin:tiny_prefs``; None with ``mixture``.
        tokenizer: a tokenizer, or the model spec / name to load one from.
        train_split, val_split: split names (``val_split=None``: no validation).
        max_length: longest prompt + completion, in tokens.
        max_prompt_length: longest prompt; longer prompts keep their end.
        on_too_long: ``truncate`` (counted), ``drop`` (counted) or ``error`` (a bad row: ``on_bad_row``
            decides) for rows over the limits.
        on_bad_row: ``error`` (stop, naming the row) or ``skip`` (counted) for malformed rows.
        batch_size: pairs per device per step; ``eval_batch_size`` defaults to it.
        num_proc: processes for tokenization (``datasets.map``); results are cached.
        max_train_samples, max_val_samples: keep only the first N rows (quick runs).
        packing: lay each batch's chosen and rejected sequences end to end in one row (no padding; the
            same losses as padding). Pair it with ``model.attn_implementation=varlen`` or
            ``flash_attention_2`` on GPU; on CPU sdpa handles it with a block-diagonal mask.
        seed: the training shuffle (epoch ``e`` uses ``seed + e``; the order resumes exactly mid-epoch).
        pad_to_multiple_of: round the padded length up (tensor-core friendly shapes on GPU).
        name: hub configuration name; cache_dir: datasets cache.
        add_bos, empty_system_turn: the `ChatFormat` (BOS before the chat: ``auto`` follows the tokenizer;
            an empty system turn where there is none: off), shared with SFT, AIF generation and samples.
        mixture, deduplicate, decontamination, filters: several sources instead of ``path`` (``path=None``),
            and the rows removed before tokenization (see `ChatDataModule`).
    """

    kind = "prefs"
    row_tokenizer_class = PreferenceTokenizer

    def __init__(
        self,
        path: str | None,
        tokenizer: PreTrainedTokenizerBase | ModelSpec | str,
        *,
        train_split: str = "train_prefs",
        val_split: str | None = "test_prefs",
        max_length: Annotated[int, Field(ge=2)] = 1024,
        max_prompt_length: PositiveInt = 512,
        packing: bool = False,
        pad_to_multiple_of: PositiveInt | None = None,
        **kwargs: Any,
    ) -> None:
        check_arguments(PreferenceDataModule, {**locals(), **kwargs}, prefix="data")
        super().__init__(path, tokenizer, train_split=train_split, val_split=val_split, **kwargs)
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.collator = PreferenceCollator(self.tokenizer.pad_token_id, pad_to_multiple_of=pad_to_multiple_of, packing=packing)

    def tokenizer_options(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "max_prompt_length": self.max_prompt_length}
