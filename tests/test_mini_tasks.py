"""Mini-Zephyr's task family, judge and teacher, against their definitions (hand-computed scores)."""

from __future__ import annotations

import json
import random

import pytest

from recipes.mini_zephyr import (
    NotATaskError,
    Task,
    TaskFamily,
    grade,
    judge_score,
    parse_prompt,
    write_teacher_data,
)
from recipes.mini_zephyr.tasks import sample_tasks
from zephyr_lightning.aif.judges import CallableJudge, JudgeItem
from zephyr_lightning.data.chat import validate_messages

PLAIN = "Reply with the answer only."
JSON_ = 'Reply in JSON, as {"answer": "..."}.'
SENTENCE = "Reply in one sentence."


def score(quality: float) -> float:
    """The judge's scale, written out: 1 + 9 x (0.8 x correctness + 0.2 x format)."""
    return round(1 + 9 * quality, 2)


@pytest.mark.parametrize(
    ("prompt", "response", "expected"),
    [
        # addition: digits aligned from the right; a missed carry loses one digit of two
        (f"What is 7 + 5? {PLAIN}", "12", score(1.0)),
        (f"What is 7 + 5? {PLAIN}", "13", score(0.8 * 0.5 + 0.2)),
        (f"What is 7 + 5? {PLAIN}", "21", score(0.2)),
        (f"What is 7 + 5? {PLAIN}", "2", score(0.8 * 0.5 + 0.2)),
        (f"What is 7 + 5? {PLAIN}", "12 12", score(0.8 * 0.0)),  # two numbers: no single answer, not the format
        (f"What is 7 + 5? {PLAIN}", "", score(0.0)),
        # the requested format, or the answer read from chatter with the format lost
        (f"What is 7 + 5? {JSON_}", '{"answer": "12"}', score(1.0)),
        (f"What is 7 + 5? {JSON_}", "Sure! The answer is 12. Glad to help.", score(0.8)),
        (f"What is 7 + 5? {JSON_}", "12", score(0.8)),
        (f"What is 7 + 5? {JSON_}", '{"answer": "12", "x": "1"}', score(0.8)),
        (f"What is 7 + 5? {SENTENCE}", "The answer is 12.", score(1.0)),
        (f"What is 7 + 5? {SENTENCE}", '{"answer": "12"}', score(0.8)),
        (f"What is 7 + 5? {PLAIN}", "The answer is 12.", score(0.8)),
        # sorting: share of positions right, over the longer of the two lists
        (f"Sort these numbers from smallest to largest: 7, 3, 9. {PLAIN}", "3, 7, 9", score(1.0)),
        (f"Sort these numbers from smallest to largest: 7, 3, 9. {PLAIN}", "3, 9, 7", score(0.8 / 3 + 0.2)),
        (f"Sort these numbers from smallest to largest: 7, 3, 9. {PLAIN}", "3, 7", score(0.8 * 2 / 3 + 0.2)),
        (f"Sort these numbers from smallest to largest: 7, 3, 9. {PLAIN}", "3, 7, 9, 9", score(0.8 * 3 / 4 + 0.2)),
        (f"Sort these numbers from smallest to largest: 7, 3, 9. {PLAIN}", "7, 9, 3", score(0.2)),
        # reversing words
        (f"Reverse the order of this list: cat, dog, sun. {SENTENCE}", "The answer is sun, dog, cat.", score(1.0)),
        (f"Reverse the order of this list: cat, dog, sun. {SENTENCE}", "The answer is cat, dog, sun.", score(0.8 / 3 + 0.2)),
        (f"Reverse the order of this list: cat, dog, sun. {JSON_}", '{"answer": "sun, dog, cat"}', score(1.0)),
        # largest: credit by the answer's rank among the listed numbers; a number not listed gets none
        (f"Which is the largest number: 4, 8, 2? {PLAIN}", "8", score(1.0)),
        (f"Which is the largest number: 4, 8, 2? {PLAIN}", "4", score(0.8 * 0.5 + 0.2)),
        (f"Which is the largest number: 4, 8, 2? {PLAIN}", "2", score(0.2)),
        (f"Which is the largest number: 4, 8, 2? {PLAIN}", "9", score(0.2)),
        # counting: 1 - |error| / count
        (f"How many items are in this list: cat, dog, sun, red? {PLAIN}", "4", score(1.0)),
        (f"How many items are in this list: cat, dog, sun, red? {PLAIN}", "3", score(0.8 * 0.75 + 0.2)),
        (f"How many items are in this list: cat, dog, sun, red? {PLAIN}", "9", score(0.2)),
    ],
)
def test_judge_scores_against_the_definitions(prompt, response, expected):
    assert judge_score(prompt, response) == pytest.approx(expected)


def test_parse_prompt_recovers_each_kind():
    assert parse_prompt(f"What is 17 + 5? {JSON_}") == Task("add", ("17", "5"), "json")
    assert parse_prompt(f"Reverse the order of this list: cat, dog. {PLAIN}") == Task("reverse", ("cat", "dog"), "plain")
    assert parse_prompt(f"How many items are in this list: a, b, c? {SENTENCE}") == Task("count", ("a", "b", "c"), "sentence")


@pytest.mark.parametrize(
    "prompt",
    ["What is the capital of France?", f"What is 7 - 5? {PLAIN}", "What is 7 + 5? Answer in French.", ""],
)
def test_a_prompt_outside_the_family_is_refused(prompt):
    with pytest.raises(NotATaskError):
        judge_score(prompt, "12")


def test_the_callable_judge_marks_a_foreign_prompt_failed_and_scores_the_rest():
    judge = CallableJudge("recipes.mini_zephyr.judge.judge_score", name="mini-judge")
    out = judge.judge(
        [JudgeItem(f"What is 2 + 2? {PLAIN}", "4"), JudgeItem("Tell me a joke.", "no", prompt_id="p1")]
    )
    assert out[0].score == 10.0 and out[0].ok
    assert not out[1].ok and "p1" in out[1].error and "NotATaskError" in out[1].error


def test_every_sampled_task_round_trips_and_its_formatted_answer_scores_ten():
    family = TaskFamily(min_items=2, max_items=5, max_number=99)
    tasks = sample_tasks(family, 400, seed=3)
    assert {t.kind for t in tasks} == set(family.kinds) and {t.style for t in tasks} == set(family.styles)
    for task in tasks:
        assert parse_prompt(task.prompt) == task
        assert judge_score(task.prompt, task.formatted()) == 10.0
        wrong = task.formatted("0, 0" if task.kind in ("sort", "reverse") else "0")
        assert judge_score(task.prompt, wrong) < 10.0


def _expected(task: Task) -> str:
    # The definitions, written out independently of tasks.expected_items.
    if task.kind == "reverse":
        return ", ".join(task.items[::-1])
    if task.kind == "count":
        return str(len(task.items))
    numbers = [int(x) for x in task.items]
    if task.kind == "add":
        return str(numbers[0] + numbers[1])
    if task.kind == "sort":
        return ", ".join(str(n) for n in sorted(numbers))
    return str(max(numbers))


def test_the_correct_answers_follow_the_definitions():
    rng = random.Random(0)
    family = TaskFamily(max_items=5, max_number=60)
    for _ in range(200):
        task = family.sample(rng)
        assert task.answer == _expected(task)
        assert grade(task, _expected(task)).correctness == 1.0


def test_sampling_is_deterministic_by_seed_and_respects_exclusions():
    family = TaskFamily()
    a, b, c = (sample_tasks(family, 50, seed=s) for s in (7, 7, 8))
    assert a == b and a != c
    excluded = {t.prompt for t in a[:25]}
    assert not excluded & {t.prompt for t in sample_tasks(family, 50, seed=7, exclude=excluded)}


def test_family_settings_are_checked():
    with pytest.raises(ValueError, match="kinds"):
        TaskFamily(kinds=("divide",))
    with pytest.raises(ValueError, match="max_items"):
        TaskFamily(min_items=3, max_items=12, max_number=9)


def _rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_teacher_writes_valid_disjoint_deterministic_data(tmp_path):
    family = TaskFamily()
    kwargs = dict(num_train=300, num_test=20, num_aif_prompts=40, num_eval_prompts=30, format_slip={"json": 0.5})
    summary = write_teacher_data(tmp_path / "a", family, seed=1, **kwargs)
    write_teacher_data(tmp_path / "b", family, seed=1, **kwargs)
    write_teacher_data(tmp_path / "c", family, seed=2, **kwargs)
    names = ("train_sft.jsonl", "test_sft.jsonl", "aif_prompts.jsonl", "eval_prompts.jsonl")
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "train_sft.jsonl").read_bytes() != (tmp_path / "c" / "train_sft.jsonl").read_bytes()
    # The held-out prompts depend on eval_seed only: every seed is judged on the same prompts.
    assert (tmp_path / "a" / "eval_prompts.jsonl").read_bytes() == (tmp_path / "c" / "eval_prompts.jsonl").read_bytes()

    sets = {name: {r["prompt"] for r in _rows(tmp_path / "a" / name)} for name in names}
    assert [len(sets[n]) for n in names] == [300, 20, 40, 30]
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            assert not sets[x] & sets[y], (x, y)

    slipped = 0
    for row in _rows(tmp_path / "a" / "train_sft.jsonl") + _rows(tmp_path / "a" / "test_sft.jsonl"):
        messages = validate_messages(row["messages"], where=row["prompt_id"], final_assistant=True)
        assert messages[0] == {"role": "user", "content": row["prompt"]}
        task = parse_prompt(row["prompt"])
        g = grade(task, messages[-1]["content"])
        assert g.correctness == 1.0  # the teacher is never wrong...
        if not g.format_ok:  # ...but slips out of format, here only when asked for JSON
            slipped += 1
            assert task.style == "json" and messages[-1]["content"].count("The answer is") == 1
    assert slipped == summary.format_slips
    json_rows = sum(parse_prompt(r["prompt"]).style == "json" for r in _rows(tmp_path / "a" / "train_sft.jsonl"))
    assert 0.3 * json_rows < slipped < 0.7 * (json_rows + 20)


def test_teacher_rejects_bad_slip_rates(tmp_path):
    with pytest.raises(ValueError, match="format_slip"):
        write_teacher_data(tmp_path, TaskFamily(), seed=0, format_slip=1.5)
    with pytest.raises(ValueError, match="format_slip"):
        write_teacher_data(tmp_path, TaskFamily(), seed=0, format_slip={"yaml": 0.5})

