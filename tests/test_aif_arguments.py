"""The AIF classes and steps check their arguments by the declarations in their signatures, and say
which config key is wrong."""

from __future__ import annotations

import pytest

from zephyr_lightning.aif import (
    LocalGenerator,
    OpenAIChatGenerator,
    OpenAIJudge,
    RewardModelJudge,
    binarize,
    binarize_row,
    generate_completions,
)
from zephyr_lightning.arguments import ArgumentError, argument_errors


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: OpenAIJudge("gpt-4o", concurrency=0), "judge.concurrency=0: must be >= 1"),
        (lambda: OpenAIJudge("gpt-4o", temperature=-0.5), "judge.temperature=-0.5: must be >= 0"),
        (lambda: OpenAIJudge("gpt-4o", max_retries=-1), "judge.max_retries=-1: must be >= 0"),
        (lambda: OpenAIJudge("gpt-4o", timeout=0), "judge.timeout=0: must be > 0"),
        (lambda: OpenAIJudge(""), "judge.model='': must not be empty"),
        (lambda: OpenAIJudge("m", base_url="localhost:8000/v1"), "judge.base_url='localhost:8000/v1': must start with http"),
        (lambda: OpenAIJudge("m", response_format="yaml"), "judge.response_format='yaml': must be one of"),
        (lambda: RewardModelJudge("some/reward-model", batch_size=0), "judge.batch_size=0: must be >= 1"),
        (lambda: OpenAIChatGenerator("http://x/v1", "m", n_per_request=0), "generator.n_per_request=0: must be >= 1"),
        (lambda: OpenAIChatGenerator("http://x/v1", "m", top_p=1.5), "generator.top_p=1.5: must be <= 1"),
        (lambda: LocalGenerator("builtin:tiny-mistral", max_new_tokens=0), "generator.max_new_tokens=0: must be >= 1"),
        (lambda: LocalGenerator("builtin:tiny-mistral", temperature=0.0), "generator.temperature=0.0: must be > 0 when sampling"),
        (lambda: generate_completions([], [], "out.jsonl", num_completions=0), "generate.num_completions=0: must be >= 1"),
        (lambda: binarize("judged.jsonl", "out", rejected="worst"), "binarize.rejected='worst': must be one of ['random', 'lowest']"),
        (lambda: binarize("judged.jsonl", "out", test_size=-1), "binarize.test_size=-1: must be >= 0"),
        (lambda: binarize_row({}, rejected="best"), "binarize.rejected='best'"),
    ],
)
def test_a_bad_argument_names_its_key(make, message):
    with pytest.raises(ArgumentError) as info:
        make()
    assert message in str(info.value)


def test_good_arguments_pass_and_greedy_needs_no_temperature():
    LocalGenerator("builtin:tiny-mistral", do_sample=False, temperature=0.0)
    OpenAIJudge("m", base_url="http://localhost:8000/v1", response_format=None, concurrency=1, max_retries=0)


def test_config_validation_reads_the_same_declarations():
    # What config validation does with a composed `judge:` node: the same words, before anything is built.
    node = {"_target_": "zephyr_lightning.aif.OpenAIJudge", "model": "gpt-4o", "concurrency": 0, "backoff_base": 1.0}
    errors = argument_errors(node["_target_"], node, prefix="judge")
    assert "judge.concurrency=0: must be >= 1" in errors
    # A key that no longer means anything (the hand-rolled backoff) is named, not silently ignored.
    assert any(e.startswith("judge.backoff_base=1.0: not an argument of OpenAIJudge") for e in errors)
