"""The local reward-model judge and the callable judge."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import MistralConfig, MistralForSequenceClassification

from tests.helpers import write_jsonl
from zephyr_lightning.aif import (
    CallableJudge,
    JudgeItem,
    RewardModelJudge,
    heuristic_score,
    judge_completions,
)
from zephyr_lightning.models import TINY_MISTRAL_CONFIG


def _save_classifier(path, tokenizer, num_labels: int):
    config = MistralConfig(**{**TINY_MISTRAL_CONFIG, "num_labels": num_labels})
    torch.manual_seed(0)
    MistralForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tokenizer):
    return _save_classifier(tmp_path_factory.mktemp("reward_model"), tokenizer, num_labels=1)


ITEMS = [
    JudgeItem("What is 2 + 2?", "4.", "p1"),
    JudgeItem("Tell me about the moon.", "The moon orbits the Earth about once every 27 days and has no atmosphere.", "p2"),
    JudgeItem("Hi", "Hello! How can I help you today?", "p3"),
]


def test_reward_model_scores_equal_unbatched_forward_of_the_chat_template(reward_model_dir, tokenizer):
    judge = RewardModelJudge(str(reward_model_dir), batch_size=2)
    seen = {}
    judgements = judge.judge(ITEMS, on_result=lambda i, j: seen.setdefault(i, j))
    assert all(j.ok for j in judgements) and sorted(seen) == [0, 1, 2]
    # Reference: each conversation alone (no padding), tokenized by the tokenizer's own chat template.
    model = MistralForSequenceClassification.from_pretrained(reward_model_dir).eval()
    for item, judgement in zip(ITEMS, judgements):
        messages = [{"role": "user", "content": item.prompt}, {"role": "assistant", "content": item.response}]
        ids = tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"]
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0, 0].item()
        assert judgement.score == pytest.approx(expected, abs=1e-5)
    assert len({j.score for j in judgements}) == 3


def test_reward_model_marks_unscorable_items_failed(reward_model_dir):
    judge = RewardModelJudge(str(reward_model_dir), max_length=40)
    long_item = JudgeItem("Explain", "word " * 50, "long")
    empty_item = JudgeItem("Explain", "  ", "empty")
    short, long_, empty = judge.judge([ITEMS[0], long_item, empty_item])
    assert short.ok
    assert not long_.ok and "prompt_id=long" in long_.error and "max_length=40" in long_.error
    assert not empty.ok and "prompt_id=empty" in empty.error


def test_reward_model_must_have_one_output(tmp_path, tokenizer):
    path = _save_classifier(tmp_path / "two", tokenizer, num_labels=2)
    with pytest.raises(ValueError, match="num_labels=2"):
        RewardModelJudge(str(path)).judge(ITEMS[:1])
    with pytest.raises(ValueError, match="not a reward model"):
        RewardModelJudge("builtin:tiny-mistral")


def length_score(prompt: str, response: str) -> float:
    if "boom" in response:
        raise RuntimeError("cannot score this")
    return float(len(response))


def test_callable_judge_by_import_path_and_failures_do_not_stop_the_run(tmp_path):
    rows = [
        {"prompt_id": "a", "instruction": "Q1?", "completions": [{"model": "m", "response": "abc"}, {"model": "m", "response": "boom"}]},
        {"prompt_id": "b", "instruction": "Q2?", "completions": [{"model": "m", "response": "abcdef"}, {"model": "m", "response": "abc"}]},
    ]
    source = write_jsonl(tmp_path / "g.jsonl", rows)
    judge = CallableJudge("tests.test_aif_judges.length_score")
    summary = judge_completions(str(source), judge, tmp_path / "judged.jsonl", cache_path=tmp_path / "c.jsonl", show_progress=False)
    judged = [json.loads(x) for x in (tmp_path / "judged.jsonl").read_text().splitlines()]
    assert [c["overall_score"] for c in judged[0]["completions"]] == [3.0, None]
    assert "prompt_id=a" in judged[0]["completions"][1]["judge_error"] and "cannot score this" in judged[0]["completions"][1]["judge_error"]
    assert [c["overall_score"] for c in judged[1]["completions"]] == [6.0, 3.0]
    # ("Q1?", "abc") and ("Q2?", "abc") are different prompts: both judged; nothing was cached before.
    assert (summary.judged, summary.failed, summary.from_cache) == (3, 1, 0)
    with pytest.raises(ValueError, match="cannot be imported"):
        CallableJudge("tests.test_aif_judges.no_such_function")


def test_heuristic_score_follows_its_formula():
    # 4 words, 3 distinct; prompt content words {capital, france}, of which "france" is used.
    response = "Paris Paris in France"
    expected = round(1 + 9 * (0.4 * 3 / 4 + 0.3 * 4 / 50 + 0.3 * 1 / 2), 2)
    assert heuristic_score("What is the capital of France?", response) == expected
    assert heuristic_score("Anything?", "") == 1.0


def test_reward_model_grades_a_turn_in_its_conversation_and_compares_two_answers(reward_model_dir, tokenizer):
    judge = RewardModelJudge(str(reward_model_dir), batch_size=3)
    history = (("What is 2 + 2?", "4."),)
    score = JudgeItem("And 3 + 3?", "6.", "q", kind="score", history=history)
    pair = JudgeItem("And 3 + 3?", "6.", "q", kind="pairwise", history=history, response_b="Seven, I think.",
                     history_b=(("What is 2 + 2?", "Five."),))
    refusal = JudgeItem("Say hi.", "Hi!", "r", kind="refusal")
    graded, compared, refused = judge.judge([score, pair, refusal])
    model = MistralForSequenceClassification.from_pretrained(reward_model_dir).eval()

    def logit(turns):
        messages = [{"role": r, "content": c} for u, a in turns for r, c in (("user", u), ("assistant", a))]
        ids = tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"]
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0, 0].item()

    a = logit([*history, ("And 3 + 3?", "6.")])
    b = logit([("What is 2 + 2?", "Five."), ("And 3 + 3?", "Seven, I think.")])
    assert graded.score == pytest.approx(a, abs=1e-5)
    assert compared.verdict == ("A" if a > b else "B") and compared.score is None
    assert not refused.ok and "cannot give 'refusal'" in refused.error


def test_callable_judge_kinds():
    def by_length(prompt, response, reference=None):
        return float(len(response)) + (100.0 if reference and reference in response else 0.0)

    judge = CallableJudge(by_length, refusal_fn="zephyr_lightning.aif.judges.heuristic_refusal", tie_margin=1.0)
    items = [
        JudgeItem("Q", "abc", kind="score", references=("zz",)),
        JudgeItem("Q2", "a zz b", kind="score", history=(("Q", "x"),), references=("r1", "zz")),  # turn 2's reference
        JudgeItem("Q", "abcd", kind="pairwise", response_b="abc"),      # 4 vs 3: within the tie margin
        JudgeItem("Q", "abcdef", kind="pairwise", response_b="abc"),
        JudgeItem("Q", "I'm sorry, but I can't help with that.", kind="refusal"),
        JudgeItem("Q", "Sure: here it is.", kind="refusal"),
    ]
    out = judge.judge(items)
    assert [j.score for j in out[:2]] == [3.0, 106.0]
    assert [j.verdict for j in out[2:]] == ["tie", "A", "refused", "complied"]
    assert "refusal" not in CallableJudge(by_length).kinds
    assert not CallableJudge(by_length).judge(items[4:5])[0].ok
