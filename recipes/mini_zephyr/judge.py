"""The Mini-Zephyr judge: a program in GPT-4's seat.

`judge_score(prompt, response)` has the signature `CallableJudge` takes, so the AIF stage uses it by
import path (``judge.fn=recipes.mini_zephyr.judge.judge_score``) exactly as it would use any other
judge. Like a judge model it sees only the prompt text and the response: it recovers the task from the
prompt (`parse_prompt`) and grades the response against the task's definition (`grade`), with partial
credit so that most completions of one prompt get different scores.
"""

from __future__ import annotations

from recipes.mini_zephyr.tasks import grade, parse_prompt
from zephyr_lightning.aif.judges import CallableJudge


def judge_score(prompt: str, response: str) -> float:
    """Score a response to a Mini-Zephyr prompt from 1 (wrong and off-format) to 10 (right, in format).

    Raises `NotATaskError` for a prompt outside the task family (the judge step marks that item failed).
    """
    return grade(parse_prompt(prompt), response).score


def mini_judge() -> CallableJudge:
    return CallableJudge(judge_score, name="mini-judge")
