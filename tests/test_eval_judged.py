"""The evaluation stage against a real OpenAI-compatible HTTP server on 127.0.0.1: position swap, length
control, malformed replies, the cache across restarts, the judge prompts, answers from files."""

from __future__ import annotations

import json
import re

import pytest

from tests.fake_openai import FakeOpenAIServer, Reply, chat_reply
from tests.helpers import write_jsonl
from zephyr_lightning.aif import GRADING_KINDS, OpenAIChatGenerator, OpenAIJudge
from zephyr_lightning.aif.io import iter_jsonl
from zephyr_lightning.data.questions import Question, load_questions
from zephyr_lightning.evaluate import AnswerFile, answer_questions, load_safety_prompts, run_evaluation

KIND_OF_SYSTEM = {kind.system: name for name, kind in GRADING_KINDS.items()}


def kind_of(body: dict) -> str:
    return KIND_OF_SYSTEM[body["messages"][0]["content"]]


def last_answer(user: str, label: str) -> str:
    """The last answer of assistant ``label`` (``ASSISTANT``, ``ASSISTANT A``...) in a judge's user message."""
    end = {"ASSISTANT A": "[END OF CONVERSATION WITH ASSISTANT A]", "ASSISTANT B": "[END OF CONVERSATION WITH ASSISTANT B]",
           "ASSISTANT": "[END OF CONVERSATION]"}[label]
    block = user.split(end)[0]
    return block.rsplit(f"[{label}]\n", 1)[1].rstrip("\n")


def reply(payload) -> Reply:
    return Reply(200, chat_reply(payload if isinstance(payload, str) else json.dumps(payload)))


def questions(n: int, turns: int = 1, category: str = "writing") -> list[Question]:
    return [Question(f"q{i}", tuple(f"Question {i}, turn {t}?" for t in range(1, turns + 1)), category) for i in range(n)]


def answer_file(tmp_path, name: str, answers: dict[str, list[str]]) -> AnswerFile:
    path = write_jsonl(tmp_path / f"{name}.jsonl", [{"question_id": q, "answers": a} for q, a in answers.items()])
    return AnswerFile(str(path), name=name)


def judge(server: FakeOpenAIServer, model: str = "judge") -> OpenAIJudge:
    return OpenAIJudge(model, server.url, api_key_env=None, concurrency=4, max_retries=0, timeout=10)


def test_a_judge_that_always_prefers_the_first_position_gives_only_ties(tmp_path):
    qs = questions(12)
    model = answer_file(tmp_path, "model", {q.question_id: [f"model answer to {q.question_id}"] for q in qs})
    base = answer_file(tmp_path, "base", {q.question_id: [f"baseline answer to {q.question_id}"] for q in qs})
    with FakeOpenAIServer(lambda body, seen: reply({"explanation": "A is first.", "verdict": "A"})) as server:
        results = run_evaluation(qs, {"model": model, "base": base}, {"first": judge(server)}, tmp_path / "eval",
                                 baseline="base", single=False, show_progress=False)
        bodies = [r.body for r in server.requests]
    s = results.pairwise["first"]["model"]
    assert (s["win_rate"], s["ties"], s["wins"], s["losses"]) == (0.5, 12, 0, 0)
    assert s["position_bias_rate"] == 1.0 and s["first_position_rate"] == 1.0
    # Every question was asked in both orders: the model's answer once as A, once as B.
    assert len(bodies) == 24
    for q in qs:
        shown_first = {last_answer(b["messages"][1]["content"], "ASSISTANT A") for b in bodies
                       if f"Question {q.question_id[1:]}," in b["messages"][1]["content"]}
        assert shown_first == {f"model answer to {q.question_id}", f"baseline answer to {q.question_id}"}


def test_a_judge_that_always_prefers_the_longer_answer_is_length_controlled_to_about_half(tmp_path):
    import random

    rng = random.Random(3)
    qs = questions(60)
    mine, theirs = {}, {}
    for q in qs:
        base_words, delta = rng.randint(10, 60), rng.randint(2, 40)
        longer = rng.random() < 0.8
        theirs[q.question_id] = [" ".join(["word"] * base_words)]
        mine[q.question_id] = [" ".join(["text"] * max(1, base_words + (delta if longer else -delta)))]

    def longer_wins(body, seen):
        user = body["messages"][1]["content"]
        a, b = last_answer(user, "ASSISTANT A"), last_answer(user, "ASSISTANT B")
        return reply({"verdict": "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"})

    with FakeOpenAIServer(longer_wins) as server:
        results = run_evaluation(qs, {"model": answer_file(tmp_path, "m", mine), "base": answer_file(tmp_path, "b", theirs)},
                                 {"length": judge(server)}, tmp_path / "eval", baseline="base", single=False,
                                 show_progress=False)
    s = results.pairwise["length"]["model"]
    longer_share = sum(len(mine[k][0]) > len(theirs[k][0]) for k in mine) / len(mine)
    assert s["win_rate"] == pytest.approx(longer_share) and s["win_rate"] > 0.7
    assert s["position_bias_rate"] == 0.0 and s["length_coef"] > 0
    assert abs(s["lc_win_rate"] - 0.5) < 0.1


MALFORMED = {
    "q1": "Rating: [[7]]",                                     # FastChat's format, not ours
    "q2": json.dumps({"explanation": "x", "score": 11}),       # out of range
    "q3": json.dumps({"explanation": "x", "score": "7"}),      # a string
    "q4": json.dumps({"explanation": "x", "score": 7, "verdict": "A"}),  # an extra key
    "q5": "{\"score\": 7",                                      # cut off
}


def score_server(broken_until: int):
    """Grades answers by their length (1-10); the MALFORMED questions get broken replies while the same
    request has been seen fewer than ``broken_until`` times (a restart asks them again)."""

    def respond(body, seen):
        user = body["messages"][1]["content"]
        question = re.search(r"Question (\d+),", user).group(1)
        if kind_of(body) == "score" and f"q{question}" in MALFORMED and seen <= broken_until:
            return reply(MALFORMED[f"q{question}"])
        return reply({"explanation": "ok", "score": min(10, 1 + len(last_answer(user, "ASSISTANT")) % 10)})

    return respond


def test_malformed_replies_are_counted_and_a_restart_asks_only_for_them(tmp_path):
    qs = questions(8, turns=2)
    model = answer_file(tmp_path, "m", {q.question_id: [f"first {q.question_id}", f"second {q.question_id}!"] for q in qs})
    with FakeOpenAIServer(score_server(broken_until=1)) as server:
        first = run_evaluation(qs, {"m": model}, {"j": judge(server)}, tmp_path / "eval", show_progress=False)
        s = first.single["j"]["m"]
        # 5 questions answered their turn 1 and turn 2 with a broken reply: 10 failed of 16, counted, not fatal.
        assert (s["graded"], s["failed"]) == (6, 10)
        counts = first.counts["j"]["single"]
        assert (counts["items"], counts["judged"], counts["failed"], counts["from_cache"]) == (16, 6, 10, 0)
        assert any("not a valid score reply" in e and "score=11" in e for e in counts["first_errors"])
        rows = list(iter_jsonl(tmp_path / "eval" / "judgments" / "j" / "single.jsonl"))
        assert sum(r["error"] is not None for r in rows) == 10
        asked_first = len(server.requests)

        second = run_evaluation(qs, {"m": model}, {"j": judge(server)}, tmp_path / "eval", show_progress=False)
        assert len(server.requests) - asked_first == 10  # only the failed ones, now answered properly
        assert second.single["j"]["m"]["graded"] == 16
        assert second.counts["j"]["single"]["from_cache"] == 6

        asked_second = len(server.requests)
        third = run_evaluation(qs, {"m": model}, {"j": judge(server)}, tmp_path / "eval", show_progress=False)
        assert len(server.requests) == asked_second  # everything cached: no request at all
        assert third.single == second.single


def test_single_grading_shows_turn_one_and_references_where_mt_bench_does(tmp_path):
    qs = [Question("m1", ("What is 2 + 3?", "And times 4?"), "math", ("5", "20")),
          Question("w1", ("Write a haiku.", "Make it sadder."), "writing", ("(any haiku)", "(sadder)"))]
    model = answer_file(tmp_path, "m", {"m1": ["It is 5.", "It is 20."], "w1": ["Leaves fall.", "Rain falls."]})
    with FakeOpenAIServer(lambda body, seen: reply({"score": 8})) as server:
        run_evaluation(qs, {"m": model}, {"j": judge(server)}, tmp_path / "eval", show_progress=False)
        users = {b["messages"][1]["content"] for b in (r.body for r in server.requests)}
        formats = [r.body["response_format"] for r in server.requests]
    turn2_math = next(u for u in users if "And times 4?" in u)
    # Turn 2 is judged with the model's own turn-1 answer in view, and the math references for both turns.
    assert "[USER]\nWhat is 2 + 3?\n[ASSISTANT]\nIt is 5.\n[USER]\nAnd times 4?\n[ASSISTANT]\nIt is 20." in turn2_math
    assert "[REFERENCE ANSWERS]\n[TURN 1]\n5\n[TURN 2]\n20\n[END OF REFERENCE ANSWERS]" in turn2_math
    assert "(turn 2 of 2)" in turn2_math
    # Writing has no reference in MT-Bench's protocol, even when the file gives one.
    assert all("[REFERENCE ANSWERS]" not in u for u in users if "haiku" in u)
    assert all(f["type"] == "json_schema" and f["json_schema"]["schema"]["required"] == ["score"] for f in formats)
    assert formats[0]["json_schema"]["schema"]["properties"]["score"] == {"maximum": 10, "minimum": 1, "title": "Score", "type": "integer"}


def test_safety_probe_rates(tmp_path):
    probe = load_safety_prompts("builtin:safety_probe", limit=4)
    assert len(probe.harmful) == len(probe.benign) == 4

    def chat(body, seen):
        if body["messages"][0]["content"] in KIND_OF_SYSTEM:  # the judge: a refusal opens with "I can't"
            answer = body["messages"][1]["content"].split("[ANSWER]\n")[1].split("\n[END OF ANSWER]")[0]
            return reply({"explanation": "-", "refused": answer.startswith("I can't")})
        # the model under test refuses anything that mentions a bank, a partner, chemicals or a kill
        prompt = body["messages"][-1]["content"].lower()
        refuse = any(w in prompt for w in ("bank", "partner", "chemicals", "kill"))
        return reply("I can't help with that." if refuse else "Sure, here is how.")

    with FakeOpenAIServer(chat) as server:
        model = OpenAIChatGenerator(server.url, "m", api_key_env=None, max_retries=0)
        results = run_evaluation(questions(1), {"m": model}, {"j": judge(server)}, tmp_path / "eval", single=False,
                                 safety=probe, show_progress=False)
    harmful = [q.first_turn.lower() for q in probe.harmful]
    benign = [q.first_turn.lower() for q in probe.benign]
    words = ("bank", "partner", "chemicals", "kill")
    expected_refusal = sum(any(w in p for w in words) for p in harmful) / 4
    expected_over = sum(any(w in p for w in words) for p in benign) / 4
    s = results.safety["j"]["m"]
    assert (s["refusal_rate"], s["over_refusal_rate"], s["harmful"], s["benign"]) == (expected_refusal, expected_over, 4, 4)
    assert expected_refusal > 0 and expected_over > 0  # the probe's look-alikes share words with the harmful ones


def test_turn_two_is_asked_after_the_models_own_turn_one_answer(tmp_path):
    def model_server(body, seen):
        return reply(f"answer {len(body['messages'])}")

    qs = questions(3, turns=2)
    with FakeOpenAIServer(model_server) as server:
        generator = OpenAIChatGenerator(server.url, "m", api_key_env=None, max_retries=0, temperature=0.0)
        answers = answer_questions(qs, generator, tmp_path / "answers", "m", show_progress=False)
        seconds = [r.body["messages"] for r in server.requests if len(r.body["messages"]) == 3]
        asked = len(server.requests)
        again = answer_questions(qs, generator, tmp_path / "answers", "m", show_progress=False)
        assert len(server.requests) == asked  # every turn is on disk: a rerun generates nothing
    assert answers.answers == again.answers == {q.question_id: ("answer 1", "answer 3") for q in qs}
    assert len(seconds) == 3
    for messages in seconds:
        assert [m["role"] for m in messages] == ["user", "assistant", "user"]
        assert messages[1]["content"] == "answer 1" and messages[2]["content"].endswith("turn 2?")


def test_a_local_models_turn_two_prompt_is_its_chat_template_of_the_conversation(tokenizer):
    from zephyr_lightning.aif import LocalGenerator

    seen = []

    class Recording(LocalGenerator):
        def setup(self):
            super().setup()
            generate = self._model.generate

            def record(**kwargs):
                seen.append(kwargs["input_ids"][0].tolist())
                return generate(**kwargs)

            self._model.generate = record

    q = Question("q", ("Name a colour.", "Now name another one."))
    generator = Recording("builtin:tiny-mistral", max_new_tokens=4, do_sample=False, batch_size=1)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        answers = answer_questions([q], generator, folder, "tiny", show_progress=False)
    first = answers.answers["q"][0]
    conversation = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": first},
                    {"role": "user", "content": "Now name another one."}]
    expected = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=True)["input_ids"]
    bos = [tokenizer.bos_token_id] if expected[0] != tokenizer.bos_token_id else []  # ChatFormat add_bos=auto
    assert seen[-1] == bos + list(expected)
    expected = tokenizer.apply_chat_template(conversation[:1], add_generation_prompt=True, return_dict=True)["input_ids"]
    assert seen[0] == bos + list(expected)


def test_answers_from_fastchat_alpacaeval_and_plain_files(tmp_path):
    qs = [Question("81", ("Write a poem.", "Shorter.")), Question("82", ("Name a fruit.",))]
    fastchat = write_jsonl(tmp_path / "gpt-4.jsonl", [
        {"question_id": 81, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["A poem.", "Poem."]}]},
        {"question_id": 82, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["Apple."]}]}])
    alpaca = tmp_path / "outputs.json"
    alpaca.write_text(json.dumps([{"instruction": "Name a fruit.", "output": "A pear.", "generator": "x"},
                                  {"instruction": "Something else", "output": "-", "generator": "x"}]))
    got = AnswerFile(str(fastchat)).read(qs)
    assert got.answers == {"81": ("A poem.", "Poem."), "82": ("Apple.",)} and got.missing == 0
    got = AnswerFile(str(alpaca)).read(qs)
    assert got.answers == {"82": ("A pear.",)} and got.missing == 1
    with pytest.raises(ValueError, match="no row matches any question"):
        AnswerFile(str(write_jsonl(tmp_path / "none.jsonl", [{"id": "x", "output": "y"}]))).read(qs)


def test_shipped_questions_follow_mt_bench(tmp_path):
    qs = load_questions("builtin:eval_questions")
    categories = {q.category for q in qs}
    assert categories == {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}
    assert all(len(q.turns) == 2 for q in qs)
    assert {q.category for q in qs if q.reference} == {"math", "reasoning", "coding"}
    assert all(len(q.reference) == 2 for q in qs if q.reference)
    # The two reference functions do what their questions ask.
    code = {q.question_id: q.reference for q in qs if q.category == "coding"}
    scope: dict = {}
    exec(code["zl-09"][1], scope)  # noqa: S102 - our own shipped reference
    assert scope["is_palindrome"]("A man, a plan, a canal: Panama!") and not scope["is_palindrome"]("abc")
    exec(code["zl-10"][0], scope)  # noqa: S102
    assert scope["sum_even"]([1, 2, 3, 4, 10]) == 16


def test_a_retrained_model_at_the_same_path_is_not_answered_from_the_old_answers(tmp_path, tiny_model_dir):
    import shutil

    from zephyr_lightning.aif import LocalGenerator

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    qs = questions(2)
    generator = LocalGenerator(str(folder), max_new_tokens=3, do_sample=False)
    answer_questions(qs, generator, tmp_path / "answers", "m", show_progress=False)
    answer_questions(qs, generator, tmp_path / "answers", "m", show_progress=False)  # same model: resumes
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # a new export at the same path
    with pytest.raises(ValueError, match="different settings .*weights"):
        answer_questions(qs, generator, tmp_path / "answers", "m", show_progress=False)


def test_questions_in_the_hub_format_of_mt_bench_prompts(tmp_path):
    """HuggingFaceH4/mt_bench_prompts' columns: ``prompt`` (the turns), an integer ``prompt_id``, ``category``
    and ``reference`` (a list, empty where MT-Bench has none), read through `datasets` from a local copy."""
    from zephyr_lightning.evaluate.single import REFERENCE_CATEGORIES, references_for

    path = write_jsonl(tmp_path / "mt_bench" / "train.jsonl", [
        {"prompt": ["What is 3 + 4?", "And times 2?"], "prompt_id": 111, "category": "math",
         "reference": ["7", "14"]},
        {"prompt": ["Write a haiku about rain.", "Now one about snow."], "prompt_id": 81, "category": "writing",
         "reference": []},
    ])
    math, writing = load_questions(str(path.parent))
    assert (math.question_id, math.turns, math.category, math.reference) == (
        "111", ("What is 3 + 4?", "And times 2?"), "math", ("7", "14"))
    assert (writing.question_id, writing.category) == ("81", "writing") and not writing.reference
    assert references_for(math, 2, REFERENCE_CATEGORIES) == ("7", "14")
    assert not references_for(writing, 2, REFERENCE_CATEGORIES)
