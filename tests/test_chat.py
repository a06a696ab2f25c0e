"""Chat formatting against the tokenizer's own chat template."""

from __future__ import annotations

import pytest

from zephyr_lightning.data.chat import (
    BadRowError,
    tokenize_chat,
    tokenize_prompt_completion,
    validate_messages,
)

SINGLE = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 is 4."}]
WITH_SYSTEM = [{"role": "system", "content": "Be brief."}] + SINGLE
MULTI = [
    {"role": "system", "content": "You are kind."},
    {"role": "user", "content": "Hi  there"},
    {"role": "assistant", "content": " Hello!\n\nHow can I help?"},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Green, of course — and 🌿."},
]


def _template_ids(tokenizer, messages):
    out = tokenizer.apply_chat_template(messages, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("messages", [SINGLE, WITH_SYSTEM, MULTI], ids=["single", "system", "multi"])
def test_token_ids_equal_apply_chat_template(tokenizer, messages):
    chat = tokenize_chat(tokenizer, messages)
    assert chat.input_ids == _template_ids(tokenizer, messages)


@pytest.mark.parametrize("messages", [SINGLE, WITH_SYSTEM, MULTI], ids=["single", "system", "multi"])
def test_assistant_mask_covers_exactly_assistant_content_and_eos(tokenizer, messages):
    chat = tokenize_chat(tokenizer, messages)
    assistants = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(chat.assistant_spans) == len(assistants)
    for (first, end), content in zip(chat.assistant_spans, assistants):
        span = chat.input_ids[first:end]
        assert span[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(span[:-1]) == content.strip() or tokenizer.decode(span[:-1]) == content
    # Nothing outside the spans is marked.
    marked = {t for first, end in chat.assistant_spans for t in range(first, end)}
    assert [i for i, m in enumerate(chat.assistant_mask) if m] == sorted(marked)
    # The assistant header and the newline after </s> belong to the template, not to the assistant.
    text_outside = tokenizer.decode([t for t, m in zip(chat.input_ids, chat.assistant_mask) if not m])
    assert text_outside.count("<|assistant|>") == len(assistants)


def test_prompt_completion_split(tokenizer):
    pc = tokenize_prompt_completion(tokenizer, WITH_SYSTEM)
    prompt_text = tokenizer.apply_chat_template(WITH_SYSTEM[:-1], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(pc.prompt_ids).startswith(prompt_text.strip()[:20])
    assert tokenizer.decode(pc.prompt_ids).rstrip().endswith("<|assistant|>")
    assert pc.completion_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(pc.completion_ids, skip_special_tokens=True) == "2+2 is 4."
    full = _template_ids(tokenizer, WITH_SYSTEM)
    joined = pc.prompt_ids + pc.completion_ids
    # Prompt + completion is the template's token sequence, minus the template's trailing newline.
    assert full[: len(joined)] == joined
    assert tokenizer.decode(full[len(joined) :]).strip() == ""


def test_completion_gets_eos_when_template_has_none(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    pc = tokenize_prompt_completion(tok, SINGLE)
    assert pc.completion_ids[-1] == tok.eos_token_id
    assert tok.decode(pc.completion_ids[:-1]).strip() == "2+2 is 4."


@pytest.mark.parametrize(
    "messages,match",
    [
        ([], "non-empty list"),
        ([{"role": "assistant", "content": "hi"}], "starts with 'assistant'"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "both 'user'"),
        ([{"role": "user", "content": "  "}], "empty content"),
        ([{"role": "user"}], "needs 'role' and 'content'"),
        ([{"role": "robot", "content": "x"}], "role 'robot'"),
        ([{"role": "user", "content": "q"}], "must be the assistant"),
    ],
)
def test_validation_names_the_row(messages, match):
    with pytest.raises(BadRowError, match=match) as err:
        validate_messages(messages, where="prompt_id=abc123", final_assistant=True)
    assert "prompt_id=abc123" in str(err.value)
