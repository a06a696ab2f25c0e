"""How a conversation becomes the token ids a model is trained on or prompted with.

One `ChatFormat` is shared by every place that turns messages into tokens: the SFT and DPO data
(`zephyr_lightning.data.chat`), AIF generation, sample generation and evaluation, so a model is prompted
exactly as it was trained. The choices and how they compare with TRL 1.16 and the alignment handbook:
docs/conventions.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

AddBos = Literal["auto"] | bool


@dataclass(frozen=True)
class ChatFormat:
    """How conversations become tokens, the same for SFT, DPO, AIF generation and sample generation.

    Args:
        add_bos: put the tokenizer's BOS token (``<s>``) before the rendered chat. ``auto`` does what the
            tokenizer does when it encodes text (Mistral's and Llama's add BOS; see `adds_bos`). Never doubled: a
            template that writes ``bos_token`` itself gets none added. The alignment handbook's Zephyr
            checkpoints were trained with ``<s>`` first (their tokenizer adds it); TRL 1.16 renders with
            ``apply_chat_template`` and adds none.
        empty_system_turn: insert an empty system turn into conversations that have none, as the
            alignment handbook's data preparation does (``<|system|>\n</s>`` with Zephyr's template).
            Off by default, like TRL.
    """

    add_bos: AddBos = "auto"
    empty_system_turn: bool = False

    def messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """The conversation as rendered: with an empty system turn first when that is asked for and missing."""
        if self.empty_system_turn and messages and messages[0]["role"] != "system":
            return [{"role": "system", "content": ""}, *messages]
        return messages

    def bos(self, tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
        """``[bos_id]`` when a BOS goes before ``text`` (rendered chat), else ``[]``."""
        bos = tokenizer.bos_token
        if tokenizer.bos_token_id is None or (bos and text.startswith(bos)):
            return []
        wanted = adds_bos(tokenizer) if self.add_bos == "auto" else self.add_bos
        return [tokenizer.bos_token_id] if wanted else []

    def encode_prompt(self, tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a conversation to be answered (the template's generation prompt appended), as the
        training data of the same format would have them before the assistant's turn."""
        text = render(tokenizer, self.messages(messages), add_generation_prompt=True)
        return self.bos(tokenizer, text) + list(tokenizer(text, add_special_tokens=False)["input_ids"])


RAW = ChatFormat(add_bos=False)  # exactly `apply_chat_template`'s tokens


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer itself puts BOS first when it encodes text with its special tokens (its
    ``add_bos_token`` setting, however the tokenizer class implements it)."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], **kwargs: Any) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


