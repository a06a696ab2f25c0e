"""Generation from tiny local models, and the resumable JSONL it relies on."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from zephyr_lightning.aif import LocalGenerator, Prompt, generate_completions
from zephyr_lightning.aif.generate import shard_dir
from zephyr_lightning.aif.io import CorruptJsonlError, JsonlWriter, read_done
from zephyr_lightning.data.sources import prompt_id_of
from zephyr_lightning.models import load_causal_lm

TEXTS = ["What is two plus two?", "Name a colour.", "Write one word about the sea, please, in a short sentence."]
PROMPTS = [Prompt(prompt_id_of(t), t) for t in TEXTS]


def tiny(name: str, seed: int, **kwargs) -> LocalGenerator:
    kwargs = {"batch_size": 2, "max_new_tokens": 4, "temperature": 1.0, "top_p": 1.0, **kwargs}
    return LocalGenerator({"name_or_path": "builtin:tiny-mistral", "seed": seed}, name=name, **kwargs)


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_k_completions_per_prompt_from_each_model_and_resume(tmp_path, monkeypatch, caplog):
    out = tmp_path / "generations.jsonl"
    generators = [tiny("tiny-a", 0), tiny("tiny-b", 1)]
    summary = generate_completions(PROMPTS, generators, out, num_completions=3, source="test", show_progress=False)
    rows = read_rows(out)
    assert summary.rows_written == 3 and [r["instruction"] for r in rows] == TEXTS
    for r in rows:
        assert r["prompt_id"] == prompt_id_of(r["instruction"]) and r["models"] == ["tiny-a", "tiny-b"]
        assert [c["model"] for c in r["completions"]] == ["tiny-a"] * 3 + ["tiny-b"] * 3
        assert all(isinstance(c["response"], str) for c in r["completions"])
        # Sampled, so the three completions of one model differ.
        assert len({c["response"] for c in r["completions"][:3]}) > 1

    # A crash while writing tiny-b's last row: the row is torn. The restart drops it with a warning,
    # asks tiny-b for that one prompt only, and tiny-a for nothing.
    shard = shard_dir(out) / "tiny-b.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:-1]) + lines[-1][:20])
    asked: list[list[str]] = []
    original = LocalGenerator.generate

    def spy(self, prompts, n):
        asked.append([self.name, *prompts])
        return original(self, prompts, n)

    monkeypatch.setattr(LocalGenerator, "generate", spy)
    with caplog.at_level(logging.WARNING):
        again = generate_completions(PROMPTS, [tiny("tiny-a", 0), tiny("tiny-b", 1)], out, num_completions=3, show_progress=False)
    assert "incomplete last line" in caplog.text
    assert asked == [["tiny-b", TEXTS[-1]]]
    assert again.per_model["tiny-a"] == {"already_done": 3, "generated": 0, "failed": 0}
    assert [r["prompt_id"] for r in read_rows(out)] == [p.prompt_id for p in PROMPTS]

    # Resuming with other sampling settings would mix two distributions: refused, naming what changed.
    with pytest.raises(ValueError, match=r"different settings \(changed: \['temperature'\]\)"):
        generate_completions(PROMPTS, [tiny("tiny-a", 0, temperature=0.5)], out, num_completions=3)


def test_left_padded_batches_generate_what_single_prompts_do(tmp_path):
    """Greedy decoding of a left-padded batch must equal decoding each prompt alone."""
    greedy = tiny("g", 0, do_sample=False, max_new_tokens=6, batch_size=3)
    batched = greedy.generate(TEXTS, 1)
    single = [greedy.generate([t], 1)[0] for t in TEXTS]
    assert batched == single
    # And the prompt really was rendered with the chat template (after <s>: data.add_bos=auto, as in training):
    # continue it by hand and compare.
    model, tokenizer = greedy._model, greedy._tokenizer
    ids = tokenizer.apply_chat_template([{"role": "user", "content": TEXTS[0]}], add_generation_prompt=True, return_dict=True)["input_ids"]
    ids = torch.tensor([[tokenizer.bos_token_id, *ids]])
    with torch.no_grad():
        for _ in range(6):
            next_id = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    assert tokenizer.decode(ids[0, -6:], skip_special_tokens=True).strip() == batched[0][0]
    # A prompt over max_prompt_length fails alone (not truncated); the others are unaffected.
    lengths = [1 + len(tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True)["input_ids"])
               for t in TEXTS]
    limited = tiny("g", 0, do_sample=False, max_new_tokens=6, max_prompt_length=max(lengths) - 1)
    limited._model, limited._tokenizer = model, tokenizer
    results = limited.generate(TEXTS, 1)
    assert results[:2] == batched[:2] and isinstance(results[2], ValueError)
    assert f"{max(lengths)} tokens > max_prompt_length" in str(results[2])
    assert load_causal_lm("builtin:tiny-mistral").training  # the generator's eval() did not leak into loading


def test_greedy_with_several_completions_is_refused():
    with pytest.raises(ValueError, match="identical completions"):
        tiny("g", 0, do_sample=False).generate(TEXTS[:1], 2)


def test_jsonl_writer_resumes_and_rejects_corruption(tmp_path, caplog):
    path = tmp_path / "rows.jsonl"
    with JsonlWriter(path) as writer:
        for i in range(3):
            writer.write({"id": str(i), "text": "é"})
    assert read_done(path, key=lambda r: r["id"]) == {"0", "1", "2"}
    # A complete object missing only its newline (killed between the two writes) is kept.
    with open(path, "a") as f:
        f.write(json.dumps({"id": "3"}))
    assert read_done(path, key=lambda r: r["id"]) == {"0", "1", "2", "3"}
    # A torn last line is dropped with a warning, and appending after it yields a valid file.
    with open(path, "a") as f:
        f.write('{"id": "4", "te')
    with caplog.at_level(logging.WARNING):
        assert read_done(path, key=lambda r: r["id"]) == {"0", "1", "2", "3"}
    assert "incomplete last line" in caplog.text
    with JsonlWriter(path) as writer:
        writer.write({"id": "4"})
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["0", "1", "2", "3", "4"]
    # Damage before the last line is not a crash artefact: an error naming the line, nothing removed.
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "not json\n" + "".join(lines[1:]))
    before = path.read_bytes()
    with pytest.raises(CorruptJsonlError, match=r"rows\.jsonl:2: not valid JSON"):
        read_done(path, key=lambda r: r["id"])
    assert path.read_bytes() == before
