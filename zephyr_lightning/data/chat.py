"""Chat formatting: validate message lists, render them with the tokenizer's chat template, and find
which tokens belong to assistant turns.

The assistant spans come from the template itself: each assistant turn is located in the rendered
text by rendering the conversation up to that turn, and tokens are assigned to spans through the
tokenizer's character offsets. So the token ids are exactly those of
``tokenizer.apply_chat_template(messages)``, for any template that renders a conversation's
prefix as a prefix of its text (all common templates do).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from zephyr_lightning.chat_format import RAW, ChatFormat, render
from zephyr_lightning.data.sources import BadRowError, json_type

ROLES = ("system", "user", "assistant")
def validate_messages(messages: Any, *, where: str, final_assistant: bool = False) -> list[dict[str, str]]:
    """Check a conversation and return it as plain ``{role, content}`` dicts.

    Rules: a non-empty list; each turn has a known role and non-empty string content; it starts with
    a system or user turn; no two turns in a row have the same role; with ``final_assistant`` the
    last turn is the assistant's. ``where`` names the row in errors (e.g. ``"prompt_id=ab12"``).
    """
    if not isinstance(messages, Sequence) or isinstance(messages, str) or len(messages) == 0:
        raise BadRowError(f"{where}: expected a non-empty list of messages, got {type(messages).__name__}")
    clean: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise BadRowError(f"{where}: message {i} needs 'role' and 'content' keys, got {message!r:.120}")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise BadRowError(f"{where}: message {i} has role {role!r}; expected one of {list(ROLES)}")
        if content is not None and not isinstance(content, str):
            raise BadRowError(f"{where}: message {i} ({role}) has content that is {json_type(content)} "
                              f"({content!r:.60}), not a string")
        if content is None or not content.strip():
            raise BadRowError(f"{where}: message {i} ({role}) has empty content")
        if i > 0 and role == clean[-1]["role"]:
            raise BadRowError(f"{where}: messages {i - 1} and {i} are both {role!r}; roles must alternate")
        if i > 0 and role == "system":
            raise BadRowError(f"{where}: message {i} is a system turn; only the first turn may be one")
        clean.append({"role": role, "content": content})
    if clean[0]["role"] not in ("system", "user"):
        raise BadRowError(f"{where}: the conversation starts with {clean[0]['role']!r}, not a system or user turn")
    if clean[0]["role"] == "system" and len(clean) > 1 and clean[1]["role"] != "user":
        raise BadRowError(f"{where}: the system turn must be followed by a user turn")
    if final_assistant and clean[-1]["role"] != "assistant":
        raise BadRowError(f"{where}: the last message is {clean[-1]['role']!r}; it must be the assistant's completion")
    return clean


def validate_dialogue(row: dict[str, Any], *, where: str) -> list[dict[str, str]]:
    """A dSFT row's ``messages`` (`validate_messages`), with at least one assistant turn to learn from."""
    if row.get("messages") is None:  # a JSON-lines row without the key reads as null
        raise BadRowError(f"{where}: no 'messages' (missing or null)")
    messages = validate_messages(row["messages"], where=where)
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRowError(f"{where}: the dialogue has no assistant turn to learn from")
    return messages


def validate_pair(row: dict[str, Any], *, where: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """A preference row's ``chosen`` and ``rejected`` (`validate_messages`, each ending with the assistant's
    answer), with the same prompt and different answers."""
    for key in ("chosen", "rejected"):
        if row.get(key) is None:  # a JSON-lines row without the key reads as null
            raise BadRowError(f"{where}: no {key!r} (missing or null)")
    chosen = validate_messages(row["chosen"], where=f"{where} (chosen)", final_assistant=True)
    rejected = validate_messages(row["rejected"], where=f"{where} (rejected)", final_assistant=True)
    if chosen[:-1] != rejected[:-1]:
        raise BadRowError(f"{where}: chosen and rejected have different prompts")
    if chosen[-1]["content"] == rejected[-1]["content"]:
        raise BadRowError(f"{where}: chosen and rejected completions are identical")
    return chosen, rejected

@dataclass
class TokenizedChat:
    """Token ids of a rendered conversation and a 0/1 mask of the assistant tokens (content + end token)."""

    input_ids: list[int]
    assistant_mask: list[int]
    # (first, last + 1) token index of each assistant turn, in order.
    assistant_spans: list[tuple[int, int]]


def _assistant_char_spans(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], text: str, where: str):
    """Character span of each assistant turn: from its content to the end of its turn text, trailing
    whitespace excluded (so Zephyr's ``</s>`` counts and the newline after it does not)."""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i]) if i else ""
        upto = render(tokenizer, messages[: i + 1])
        if not text.startswith(upto) or not upto.startswith(before):
            raise BadRowError(
                f"{where}: the chat template does not render a conversation's beginning as a prefix of the "
                "whole; assistant tokens cannot be located (use a standard template via model.chat_template)"
            )
        start = upto.find(message["content"], len(before))
        if start < 0:
            # Templates that trim content: find the trimmed text instead.
            start = upto.find(message["content"].strip(), len(before))
        if start < 0:
            raise BadRowError(f"{where}: the chat template changes assistant message {i}; cannot locate it")
        spans.append((start, len(upto.rstrip())))
    return spans


def tokenize_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    *,
    where: str = "row",
    chat_format: ChatFormat = RAW,
) -> TokenizedChat:
    """Tokenize a conversation as ``tokenizer.apply_chat_template(messages)`` does (after ``chat_format``'s
    BOS and empty system turn, when asked for), with the mask of assistant tokens."""
    messages = chat_format.messages(messages)
    if not tokenizer.is_fast:
        raise TypeError(
            f"{type(tokenizer).__name__} is a slow tokenizer; token offsets (needed to locate assistant turns) "
            "require a fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True))"
        )
    text = render(tokenizer, messages)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    char_spans = _assistant_char_spans(tokenizer, messages, text, where)
    bos = chat_format.bos(tokenizer, text)
    ids = bos + list(encoding["input_ids"])
    mask = [0] * len(ids)
    token_spans = []
    offsets = [(0, 0)] * len(bos) + list(encoding["offset_mapping"])
    cursor = len(bos)
    for start, end in char_spans:
        first = None
        for t in range(cursor, len(ids)):
            tok_start, tok_end = offsets[t]
            if tok_end <= start:
                continue
            if tok_start >= end:
                break
            mask[t] = 1
            first = t if first is None else first
            cursor = t + 1
        if first is None:
            raise BadRowError(f"{where}: an assistant turn produced no tokens")
        token_spans.append((first, cursor))
    return TokenizedChat(ids, mask, token_spans)


@dataclass
class PromptCompletion:
    """A conversation split before its final assistant turn."""

    prompt_ids: list[int]
    completion_ids: list[int]


def tokenize_prompt_completion(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    *,
    where: str = "row",
    chat_format: ChatFormat = RAW,
) -> PromptCompletion:
    """Prompt = every token before the final assistant turn's content (its header included);
    completion = the final assistant turn's tokens, ending with EOS (appended if the template has none).
    Tokens the template puts after the turn (e.g. Zephyr's trailing newline) are not part of either."""
    chat = tokenize_chat(tokenizer, messages, where=where, chat_format=chat_format)
    first, end = chat.assistant_spans[-1]
    completion = chat.input_ids[first:end]
    if tokenizer.eos_token_id is not None and completion[-1] != tokenizer.eos_token_id:
        completion.append(tokenizer.eos_token_id)
    return PromptCompletion(chat.input_ids[:first], completion)
