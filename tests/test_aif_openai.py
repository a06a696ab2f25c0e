"""The OpenAI-compatible judge and generator against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import re

import pytest

from tests.fake_openai import FakeOpenAIServer, Reply, chat_reply
from tests.helpers import write_jsonl
from zephyr_lightning.aif import (
    ASPECTS,
    DEFAULT_RUBRIC,
    FatalRequestError,
    JudgeItem,
    OpenAIChatGenerator,
    OpenAIJudge,
    Prompt,
    ScoreParseError,
    binarize,
    generate_completions,
    judge_completions,
    parse_ratings,
    ratings_model,
)
from zephyr_lightning.data.sources import prompt_id_of

SECRET = "sk-test-S3CRET-do-not-leak-1234567890"
KEY_ENV = "ZL_TEST_JUDGE_KEY"


def ratings_for(response: str) -> dict[str, int]:
    """The fake judge's ratings: a fixed function of the response text, so tests know the scores."""
    return {aspect: (len(response) + i) % 5 + 1 for i, aspect in enumerate(ASPECTS)}


def expected_score(response: str) -> float:
    ratings = ratings_for(response)
    return sum(ratings.values()) / 4


def response_of(body: dict) -> str:
    user = body["messages"][-1]["content"]
    return re.search(r"\[RESPONSE\]\n(.*)\n\[END OF RESPONSE\]", user, re.DOTALL).group(1)


def judge_server_behaviour(body: dict, seen: int) -> Reply:
    response = response_of(body)
    if "RATE_LIMITED" in response and seen == 1:
        return Reply(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "0.3"})
    if "SERVER_ERROR" in response and seen == 1:
        return Reply(500, {"error": {"message": "boom"}})
    if "SLOW" in response and seen == 1:
        return Reply(200, chat_reply("{}"), delay=1.5)
    if "NOT_A_SCORE" in response:
        return Reply(200, chat_reply("I would say this is pretty good, maybe 4 out of 5."))
    payload = {**ratings_for(response), "rationale": "fine"}
    return Reply(200, chat_reply(json.dumps(payload)))


def generation_row(instruction: str, responses: list[str]) -> dict:
    return {
        "prompt_id": prompt_id_of(instruction),
        "instruction": instruction,
        "models": ["m"],
        "completions": [{"model": "m", "response": r, "custom_system_prompt": ""} for r in responses],
    }


ROWS = [
    generation_row("What is the capital of France?", ["Paris.", "It is Paris, the largest city of France."]),
    generation_row("Name a prime number.", ["7", "RATE_LIMITED: 11"]),
    generation_row("Say hello.", ["SERVER_ERROR hello", "Hello there!"]),
    generation_row("Count to three.", ["1 2 3", "SLOW one two three"]),
    generation_row("Describe the sea.", ["NOT_A_SCORE blue and wide", "The sea is vast."]),
]


def make_judge(url: str, **kwargs) -> OpenAIJudge:
    kwargs = {
        "api_key_env": KEY_ENV,
        "concurrency": 2,
        "timeout": 0.5,
        "max_retries": 3,
        **kwargs,
    }
    return OpenAIJudge(model="judge-x", base_url=url, **kwargs)


def test_judge_retries_fails_one_item_and_resumes_from_cache(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv(KEY_ENV, SECRET)
    source = write_jsonl(tmp_path / "generations.jsonl", ROWS)
    output, cache = tmp_path / "judged.jsonl", tmp_path / "judge_cache.jsonl"
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer(judge_server_behaviour) as server:
        summary = judge_completions(str(source), make_judge(server.url), output, cache_path=cache, show_progress=False)

        # Every request carried the key from the environment, in the header only.
        assert {r.headers.get("Authorization") for r in server.requests} == {f"Bearer {SECRET}"}
        by_response: dict[str, list[float]] = {}
        for r in server.requests:
            by_response.setdefault(response_of(r.body), []).append(r.at)
        # 429, 500 and a timeout are each retried once, then succeed; Retry-After (0.3 s) is respected
        # although the configured backoff is 0.01 s.
        rate_limited = by_response["RATE_LIMITED: 11"]
        assert len(rate_limited) == 2 and rate_limited[1] - rate_limited[0] >= 0.29
        assert len(by_response["SERVER_ERROR hello"]) == 2
        assert len(by_response["SLOW one two three"]) == 2
        assert len(by_response["NOT_A_SCORE blue and wide"]) == 1  # a bad reply is not retried
        assert len(by_response["Paris."]) == 1

        judged = [json.loads(line) for line in output.read_text().splitlines()]
        assert [r["prompt_id"] for r in judged] == [r["prompt_id"] for r in ROWS]
        for row in judged:
            for completion in row["completions"]:
                if completion["response"].startswith("NOT_A_SCORE"):
                    assert completion["overall_score"] is None
                    error = completion["judge_error"]
                    assert prompt_id_of("Describe the sea.") in error and "Describe the sea." in error
                    assert "not a valid rating" in error
                else:
                    assert completion["judge_error"] is None
                    assert completion["overall_score"] == expected_score(completion["response"])
                    assert completion["judge_ratings"] == ratings_for(completion["response"])
        assert (summary.completions, summary.judged, summary.failed, summary.from_cache) == (10, 9, 1, 0)
        assert "1 completions could not be judged" in caplog.text
        # Judged rows (ratings on some completions, a failure on one) binarize as they are.
        pairs = binarize(str(output), tmp_path / "binarized", test_size=0)
        assert pairs.pairs >= 1 and pairs.rows == len(ROWS)

        # A restart sends no request for what the cache holds: only the failed item is asked again.
        server.reset()
        again = judge_completions(str(source), make_judge(server.url), output, cache_path=cache, show_progress=False)
        assert [response_of(r.body) for r in server.requests] == ["NOT_A_SCORE blue and wide"]
        assert (again.from_cache, again.judged, again.failed) == (9, 0, 1)

        # A crash mid-write leaves a torn last line in the cache: dropped with a warning, that item re-asked.
        lines = cache.read_text().splitlines(keepends=True)
        torn_response = json.loads(lines[-1])
        cache.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
        server.reset()
        caplog.clear()
        judge_completions(str(source), make_judge(server.url), output, cache_path=cache, show_progress=False)
        assert "incomplete last line" in caplog.text
        assert len(server.requests) == 2  # the dropped judgement and the still-failing item
        assert torn_response["key"] in cache.read_text()

    # The key never reached a file, a log record or the console.
    captured = capsys.readouterr()
    assert SECRET not in caplog.text and SECRET not in captured.out and SECRET not in captured.err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_concurrency_is_bounded(tmp_path):
    rows = [generation_row(f"Question {i}?", [f"answer {i}a", f"answer {i}b"]) for i in range(6)]
    source = write_jsonl(tmp_path / "g.jsonl", rows)

    def slow_ok(body: dict, seen: int) -> Reply:
        return Reply(200, chat_reply(json.dumps(ratings_for(response_of(body)))), delay=0.05)

    with FakeOpenAIServer(slow_ok) as server:
        judge = make_judge(server.url, concurrency=3, api_key_env=None)
        summary = judge_completions(str(source), judge, tmp_path / "out.jsonl", cache_path=None, show_progress=False)
    assert summary.judged == 12 and summary.failed == 0
    assert server.max_in_flight == 3
    assert all("Authorization" not in r.headers for r in server.requests)


def test_exhausted_retries_fail_the_item_and_the_run_goes_on(tmp_path):
    rows = [generation_row("Q?", ["always down", "fine answer"])]
    source = write_jsonl(tmp_path / "g.jsonl", rows)

    def behaviour(body: dict, seen: int) -> Reply:
        if response_of(body) == "always down":
            return Reply(503, "service unavailable")
        return Reply(200, chat_reply(json.dumps(ratings_for(response_of(body)))))

    with FakeOpenAIServer(behaviour) as server:
        summary = judge_completions(
            str(source), make_judge(server.url, max_retries=2), tmp_path / "o.jsonl", show_progress=False
        )
        assert sum(response_of(r.body) == "always down" for r in server.requests) == 3
    assert summary.failed == 1 and summary.judged == 1
    assert "gave up after 3 attempts (last: HTTP 503)" in summary.errors[0]


def test_a_judge_that_never_works_stops_after_the_first_chunk(tmp_path):
    rows = [generation_row(f"Q{i}?", [f"a{i}", f"b{i}"]) for i in range(4)]
    source = write_jsonl(tmp_path / "g.jsonl", rows)
    with FakeOpenAIServer(lambda body, seen: Reply(503, "down")) as server, pytest.raises(
        RuntimeError, match="first chunk failed and none has ever succeeded"
    ):
        judge_completions(
            str(source), make_judge(server.url, max_retries=0), tmp_path / "o.jsonl", chunk_size=2, show_progress=False
        )
    assert len(server.requests) == 2  # the first chunk only
    assert not list(tmp_path.glob("o.jsonl*"))


def test_rejected_key_stops_the_run_without_revealing_it(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    source = write_jsonl(tmp_path / "g.jsonl", ROWS[:1])

    def unauthorized(body: dict, seen: int) -> Reply:
        # Some servers echo the key they refused.
        return Reply(401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}})

    with FakeOpenAIServer(unauthorized) as server, pytest.raises(FatalRequestError) as info:
        judge_completions(str(source), make_judge(server.url), tmp_path / "o.jsonl", show_progress=False)
    assert KEY_ENV in str(info.value) and SECRET not in str(info.value)


@pytest.mark.parametrize(
    "reply,ok",
    [
        ('{"instruction_following": 5, "honesty": 4, "truthfulness": 3, "helpfulness": 2, "rationale": "x"}', True),
        ('```json\n{"instruction_following": 5, "honesty": 4, "truthfulness": 3, "helpfulness": 2}\n```', True),
        ('{"instruction_following": 5.0, "honesty": 4, "truthfulness": 3, "helpfulness": 2}', True),
        ('Rating: {"instruction_following": 5, "honesty": 4, "truthfulness": 3, "helpfulness": 2}', False),
        ('{"instruction_following": 6, "honesty": 4, "truthfulness": 3, "helpfulness": 2}', False),
        ('{"instruction_following": 4.5, "honesty": 4, "truthfulness": 3, "helpfulness": 2}', False),
        ('{"instruction_following": "5", "honesty": 4, "truthfulness": 3, "helpfulness": 2}', False),
        ('{"instruction_following": true, "honesty": 4, "truthfulness": 3, "helpfulness": 2}', False),
        ('{"instruction_following": 5, "honesty": 4, "truthfulness": 3}', False),
        ('{"instruction_following": 5, "honesty": 4, "truthfulness": 3, "helpfulness": 2, "overall": 9}', False),
        ("[5, 4, 3, 2]", False),
        ("8/10", False),
    ],
)
def test_scores_are_parsed_strictly(reply, ok):
    if ok:
        ratings, _ = parse_ratings(reply)
        assert ratings == {"instruction_following": 5, "honesty": 4, "truthfulness": 3, "helpfulness": 2}
    else:
        with pytest.raises(ScoreParseError):
            parse_ratings(reply)


def test_server_generator_writes_k_completions_per_prompt(tmp_path):
    def complete(body: dict, seen: int) -> Reply:
        prompt = body["messages"][-1]["content"]
        return Reply(200, chat_reply(*[f"{body['model']} answer {i} to {prompt}" for i in range(body["n"])]))

    prompts = [Prompt(prompt_id_of(t), t) for t in ("First?", "Second?", "Third?")]
    with FakeOpenAIServer(complete) as server:
        generators = [
            OpenAIChatGenerator(server.url, "served-a", api_key_env=None),
            OpenAIChatGenerator(server.url, "served-b", api_key_env=None, n_per_request=1),
        ]
        summary = generate_completions(prompts, generators, tmp_path / "generations.jsonl", num_completions=3, show_progress=False)
        assert sorted(r.body["n"] for r in server.requests) == [1] * 9 + [3] * 3
    rows = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert summary.rows_written == 3 and [r["instruction"] for r in rows] == ["First?", "Second?", "Third?"]
    for row in rows:
        assert row["models"] == ["served-a", "served-b"]
        assert [c["model"] for c in row["completions"]] == ["served-a"] * 3 + ["served-b"] * 3
        # served-b asked one completion per request, so each of its requests answered "answer 0".
        assert [c["response"] for c in row["completions"][:3]] == [
            f"served-a answer {i} to {row['instruction']}" for i in range(3)
        ]
        assert {c["response"] for c in row["completions"][3:]} == {f"served-b answer 0 to {row['instruction']}"}


def test_the_rating_schema_is_sent_as_response_format_and_replies_are_held_to_it(tmp_path, monkeypatch):
    # A key in OPENAI_API_KEY must not be picked up when the judge names no variable.
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    rows = [generation_row("Q?", ["good answer", "EXTRA_KEY answer"])]
    source = write_jsonl(tmp_path / "g.jsonl", rows)

    def behaviour(body: dict, seen: int) -> Reply:
        payload = {**ratings_for(response_of(body)), "rationale": "ok"}
        if "EXTRA_KEY" in response_of(body):
            payload["overall"] = 3  # a key the schema forbids
        return Reply(200, chat_reply(json.dumps(payload)))

    with FakeOpenAIServer(behaviour) as server:
        judge = make_judge(server.url, api_key_env=None, extra_body={"temperature": 1.5, "top_k": 5})
        summary = judge_completions(str(source), judge, tmp_path / "o.jsonl", show_progress=False)
        body = server.requests[0].body
        assert all("Authorization" not in r.headers for r in server.requests)
    sent = body["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["schema"] == ratings_model().model_json_schema()
    schema = sent["json_schema"]["schema"]
    assert schema["required"] == list(ASPECTS) and schema["additionalProperties"] is False
    assert all(schema["properties"][a]["type"] == "integer" for a in ASPECTS)
    assert {(schema["properties"][a]["minimum"], schema["properties"][a]["maximum"]) for a in ASPECTS} == {(1, 5)}
    # extra_body adds fields; the judge's own (temperature) win.
    assert body["temperature"] == 0.0 and body["top_k"] == 5
    assert (summary.judged, summary.failed) == (1, 1)
    assert "unexpected key 'overall'" in summary.errors[0] and prompt_id_of("Q?") in summary.errors[0]


@pytest.mark.parametrize("kind", ["json_object", None])
def test_other_response_formats(kind):
    judge = OpenAIJudge("m", response_format=kind)
    request = judge.request(JudgeItem("Q?", "A."))
    if kind is None:
        assert "response_format" not in request
        # Without a response_format the cache key is what it was before the option existed.
        assert judge.fingerprint() == json.dumps(["openai", "m", DEFAULT_RUBRIC, "v1"])
    else:
        assert request["response_format"] == {"type": "json_object"}
        assert judge.fingerprint() != OpenAIJudge("m", response_format=None).fingerprint()


def test_replies_that_are_not_ratings_or_not_json_fail_their_item_only(tmp_path):
    rows = [generation_row("Q?", ["TOO_LONG", "NOT_JSON", "NO_CHOICES", "fine"])]
    source = write_jsonl(tmp_path / "g.jsonl", rows)

    def behaviour(body: dict, seen: int) -> Reply:
        response = response_of(body)
        if response == "TOO_LONG":
            return Reply(400, {"error": {"message": "maximum context length exceeded"}})
        if response == "NOT_JSON":
            return Reply(200, "<html>gateway</html>")
        if response == "NO_CHOICES":
            return Reply(200, {"object": "chat.completion"})
        return Reply(200, chat_reply(json.dumps(ratings_for(response))))

    with FakeOpenAIServer(behaviour) as server:
        summary = judge_completions(str(source), make_judge(server.url), tmp_path / "o.jsonl", show_progress=False)
        # A 400 is not retried; neither is a reply that is not JSON.
        assert len(server.requests) == 4
    errors = "\n".join(summary.errors)
    assert (summary.judged, summary.failed) == (1, 3)
    assert "HTTP 400" in errors and "maximum context length exceeded" in errors
    assert "the reply is not JSON" in errors and "malformed chat-completions reply" in errors
