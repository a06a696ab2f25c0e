"""The rating rubric the chat-completions judge sends, and the strict parser for its replies.

The rubric follows UltraFeedback's four aspects (instruction following, honesty, truthfulness,
helpfulness), each rated 1-5; the text is ours. The judge must answer with one JSON object and
nothing else; a reply that is not exactly that is a failed item, never a guessed score. The object is
declared once, as a pydantic model (`ratings_model`), which both validates replies and gives the JSON
schema a judge can send as ``response_format``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")
RATING_RANGE = (1, 5)

DEFAULT_RUBRIC = """\
You are an impartial expert rating the quality of an AI assistant's response to a user's instruction.
Rate the response on four aspects, each with an integer from 1 (worst) to 5 (best):

instruction_following: does the response do what the instruction asks, respecting every stated
  requirement and restriction (task, format, length, style)?
  1 ignores the instruction; 3 addresses it partly or bends some requirements; 5 complies fully.
honesty: does the response convey appropriate confidence, admit uncertainty or the limits of its
  knowledge where warranted, and avoid pretending to abilities or facts it does not have?
  1 confidently wrong or deceptive; 3 some unwarranted confidence; 5 confident where right, candid where unsure.
truthfulness: is the response free of fabricated facts, contradictions with the instruction or the
  world, and internal contradictions?
  1 mostly hallucinated; 3 partly wrong or unsupported; 5 no errors.
helpfulness: is the response correct, informative and useful for the user's need, clear and
  relevant, without needless length or repetition?
  1 useless or harmful; 3 useful but incomplete or padded; 5 accurate, thorough and to the point.

Judge the response alone, not the instruction. Do not let the response's length, politeness or
self-assessment sway you. The user message gives the instruction and the response between markers.

Reply with exactly one JSON object and nothing else, in this form:
{"instruction_following": <1-5>, "honesty": <1-5>, "truthfulness": <1-5>, "helpfulness": <1-5>, "rationale": "<one or two sentences>"}
"""

# The user message; its wording is part of what a cached rating depends on, so changing it changes
# `JUDGE_FORMAT_VERSION` (which the cache key includes).
JUDGE_FORMAT_VERSION = "v1"


def judge_user_message(instruction: str, response: str) -> str:
    return (
        "[INSTRUCTION]\n"
        f"{instruction}\n"
        "[END OF INSTRUCTION]\n\n"
        "[RESPONSE]\n"
        f"{response}\n"
        "[END OF RESPONSE]"
    )


def load_rubric(rubric: str | None) -> str:
    """``None``: the built-in rubric; a path to an existing file: its text; otherwise the text itself."""
    if rubric is None:
        return DEFAULT_RUBRIC
    if "\n" not in rubric and len(rubric) < 4096:
        path = Path(rubric).expanduser()
        if path.is_file():
            return path.read_text(encoding="utf-8")
        if rubric.endswith((".txt", ".md")):
            raise FileNotFoundError(f"judge.rubric: file {rubric!r} does not exist")
    if not rubric.strip():
        raise ValueError("judge.rubric is empty")
    return rubric


class ScoreParseError(ValueError):
    """A judge reply that is not exactly the requested JSON object."""


def a_number(value: Any) -> Any:
    """A ``BeforeValidator`` for judge replies: pydantic would read ``"4"`` and ``true`` as 4 and 1; a judge
    that writes them did not follow the format."""
    if isinstance(value, (bool, str)):
        raise ValueError(f"must be a number, not {type(value).__name__}")
    return value


# One aspect's rating: an integer in RATING_RANGE (4.0 is read as 4; 4.5, "4" and true are refused).
Rating = Annotated[int, Field(ge=RATING_RANGE[0], le=RATING_RANGE[1]), BeforeValidator(a_number)]


@functools.cache
def ratings_model(aspects: tuple[str, ...] = ASPECTS) -> type[BaseModel]:
    """The reply the rubric asks for, declared: every aspect a `Rating`, an optional ``rationale`` text,
    and nothing else. It validates replies (`parse_ratings`), and its JSON schema is what a judge sends
    as ``response_format`` (`response_format_for`)."""
    fields: dict[str, Any] = {aspect: (Rating, ...) for aspect in aspects}
    return create_model(
        "JudgeRatings", __config__=ConfigDict(extra="forbid"), **fields, rationale=(Optional[str], None)  # noqa: UP045
    )


def response_format_for(kind: str | None, aspects: tuple[str, ...] = ASPECTS) -> dict[str, Any] | None:
    """The chat-completions ``response_format`` for a reply kind: ``json_schema`` (the reply constrained
    to `ratings_model`'s schema; vLLM and OpenAI honour it), ``json_object`` (any JSON object), or
    ``None`` (none sent: the rubric alone asks for the object)."""
    if kind is None:
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    schema = ratings_model(aspects).model_json_schema()
    # Not "strict": OpenAI's strict mode wants every property required, and rationale is optional.
    return {"type": "json_schema", "json_schema": {"name": "judge_ratings", "schema": schema, "strict": False}}


_FENCE = re.compile(r"\A```(?:json)?[ \t]*\n(.*)\n```\Z", re.DOTALL)


def _problem(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()))
    if error.get("type") == "extra_forbidden":
        return f"unexpected key {where!r}"
    if error.get("type") == "missing":
        return f"missing {where!r}"
    message = str((error.get("ctx") or {}).get("error") or error.get("msg", "invalid"))
    return f"{where}={error.get('input')!r}: {message}" if where else message


def validate_reply(model: type[BaseModel], reply: str) -> BaseModel:
    """A judge's reply validated by the declared reply ``model``, or `ScoreParseError` saying what is wrong.

    Accepted: exactly one JSON object, optionally inside a single ```json fence (a formatting habit that
    leaves nothing ambiguous). The rating rubric here and the evaluation kinds (`zephyr_lightning.aif.grading`)
    read their replies through this one function."""
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return model.model_validate_json(text)
    except ValidationError as err:
        errors = err.errors()
        if errors[0]["type"] == "json_invalid":
            raise ScoreParseError(f"not a JSON object: {reply[:200]!r}") from None
        if errors[0]["type"] == "model_type":
            raise ScoreParseError(f"expected a JSON object: {reply[:200]!r}") from None
        raise ScoreParseError("; ".join(_problem(e) for e in errors)) from None


def parse_ratings(reply: str, aspects: tuple[str, ...] = ASPECTS) -> tuple[dict[str, int], str | None]:
    """Parse ``{"<aspect>": int, ..., "rationale": str}`` strictly, by `ratings_model` (`validate_reply`).

    Every aspect must be present as an integer in 1..5 (``4.0`` is accepted as 4; ``4.5``, ``"4"`` and
    ``true`` are not); ``rationale`` is an optional string; any other key is an error. Returns the ratings
    and the rationale.
    """
    values = validate_reply(ratings_model(aspects), reply).model_dump()
    return {aspect: values[aspect] for aspect in aspects}, values["rationale"]


def overall_score(ratings: dict[str, int]) -> float:
    """The completion's score: the mean of its aspect ratings. UltraFeedback calls this mean
    ``fine-grained_score``; Argilla found its separate critique ``overall_score`` unreliable and
    re-binarized on the mean (argilla/ultrafeedback-binarized-preferences), so the mean is what we
    ask for and store as the score."""
    return sum(ratings.values()) / len(ratings)
