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


def test_chat_format_adds_one_bos_like_the_tokenizer_and_shifts_the_mask(tokenizer):
    from zephyr_lightning.chat_format import ChatFormat

    raw = tokenize_chat(tokenizer, MULTI)
    auto = tokenize_chat(tokenizer, MULTI, chat_format=ChatFormat())  # Mistral's tokenizer adds <s>
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    assert auto.input_ids == [tokenizer.bos_token_id, *raw.input_ids]
    assert auto.assistant_mask == [0, *raw.assistant_mask]
    assert auto.assistant_spans == [(a + 1, b + 1) for a, b in raw.assistant_spans]
    assert tokenize_chat(tokenizer, MULTI, chat_format=ChatFormat(add_bos=False)).input_ids == raw.input_ids


def test_a_template_that_writes_bos_gets_no_second_one(tokenizer):
    import copy

    from zephyr_lightning.chat_format import ChatFormat

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    ids = tokenize_chat(tok, SINGLE, chat_format=ChatFormat(add_bos=True)).input_ids
    assert ids == _template_ids(tok, SINGLE) and ids.count(tokenizer.bos_token_id) == 1


def test_empty_system_turn_as_the_handbook_inserts_it(tokenizer):
    from zephyr_lightning.chat_format import ChatFormat

    chat = tokenize_chat(tokenizer, SINGLE, chat_format=ChatFormat(add_bos=False, empty_system_turn=True))
    assert chat.input_ids == _template_ids(tokenizer, [{"role": "system", "content": ""}, *SINGLE])
    assert tokenizer.decode(chat.input_ids).startswith("<|system|>\n</s>")
    # A conversation that has a system turn keeps it.
    kept = tokenize_chat(tokenizer, WITH_SYSTEM, chat_format=ChatFormat(add_bos=False, empty_system_turn=True))
    assert kept.input_ids == _template_ids(tokenizer, WITH_SYSTEM)


@pytest.mark.parametrize("add_bos,empty_system_turn", [("auto", False), (False, True)])
def test_generation_prompts_are_the_training_prompts(tokenizer, add_bos, empty_system_turn):
    """What AIF and sample generation feed the model is exactly the prompt part of a training pair."""
    from zephyr_lightning.chat_format import ChatFormat

    fmt = ChatFormat(add_bos=add_bos, empty_system_turn=empty_system_turn)
    pair = tokenize_prompt_completion(tokenizer, SINGLE, chat_format=fmt)
    # The training prompt ends after the assistant header's newline; the generation prompt ends at the header.
    generation = fmt.encode_prompt(tokenizer, SINGLE[:-1])
    assert pair.prompt_ids[: len(generation)] == generation
    assert tokenizer.decode(pair.prompt_ids[len(generation):]).strip() == ""
