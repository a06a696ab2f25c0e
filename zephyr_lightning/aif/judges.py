"""Judges: give each (prompt, response) a score. Three backends share one `Judge` protocol:

- `OpenAIJudge`: an OpenAI-compatible chat-completions model rating with our UltraFeedback-style
  rubric (`zephyr_lightning.aif.rubric`), parsed strictly;
- `RewardModelJudge`: a local reward model (``AutoModelForSequenceClassification`` with one output);
- `CallableJudge`: any Python function ``(prompt, response) -> float``, for tests and programmatic
  judges; `heuristic_score` is the offline stand-in the default config uses.

Each item says what kind of judgement it asks for (`JudgementKind`): ``rating`` (AIF: the rubric's
aspects, the score their mean), and for the evaluation stage ``score`` (a 1-10 grade of one answer,
MT-Bench's single-answer grading), ``pairwise`` (which of two answers is better: ``verdict`` A, B or tie)
and ``refusal`` (whether the answer refuses: ``verdict`` refused or complied); their prompts and reply
schemas are in `zephyr_lightning.aif.grading`. A backend lists the kinds it can give in ``kinds``.

A judge never raises for one bad item: it returns a `Judgement` with ``error`` set (naming the
prompt), so the run goes on and the failure is counted. Errors that would hit every item (a rejected
API key, a missing model) are raised.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import Field

from zephyr_lightning.aif.client import (
    HttpUrl,
    OpenAICompatibleClient,
    RequestError,
    chat_content,
    with_extra_body,
)
from zephyr_lightning.aif.grading import COMPLIED, GRADING_KINDS, REFUSED
from zephyr_lightning.aif.rubric import (
    JUDGE_FORMAT_VERSION,
    ScoreParseError,
    judge_user_message,
    load_rubric,
    overall_score,
    parse_ratings,
    response_format_for,
)
from zephyr_lightning.arguments import NonNegative, NonNegativeInt, Positive, PositiveInt, check_arguments
from zephyr_lightning.models import ModelSpec, as_spec

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion

log = logging.getLogger(__name__)


JudgementKind = Literal["rating", "score", "pairwise", "refusal"]
JUDGEMENT_KINDS: tuple[str, ...] = ("rating", "score", "pairwise", "refusal")


@dataclass(frozen=True)
class JudgeItem:
    """One judgement to make. ``prompt_id`` and ``model`` only serve error messages.

    ``prompt`` is the user message answered by ``response``; ``history`` the earlier (user, assistant)
    turns of that conversation (multi-turn questions: turn 2 is judged with turn 1 in view). A
    ``pairwise`` item shows ``response`` as A and ``response_b`` (after ``history_b``: B's own earlier
    answers to the same user turns) as B. ``references`` are reference answers, one per user turn from the first.
    """

    prompt: str
    response: str
    prompt_id: str = ""
    model: str = ""
    kind: JudgementKind = "rating"
    history: tuple[tuple[str, str], ...] = ()
    response_b: str | None = None
    history_b: tuple[tuple[str, str], ...] = ()
    references: tuple[str, ...] = ()

    @property
    def turn_reference(self) -> str | None:
        """The reference answer of the judged turn, if there is one."""
        turn = len(self.history) + 1
        return self.references[turn - 1] if len(self.references) >= turn else None

    def content(self) -> list[Any]:
        """Everything a judgement of this item depends on besides the judge (the cache key is made of it)."""
        if self.kind == "rating":
            return [self.prompt, self.response]  # the AIF cache key since before the other kinds existed
        return [self.kind, self.prompt, self.response, [list(t) for t in self.history], self.response_b,
                [list(t) for t in self.history_b], list(self.references)]

    def where(self) -> str:
        excerpt = self.prompt if len(self.prompt) <= 60 else self.prompt[:57] + "..."
        who = f", model {self.model}" if self.model else ""
        return f"prompt_id={self.prompt_id or '?'} ({excerpt!r}{who})"


@dataclass
class Judgement:
    """A score or a verdict, or the reason there is none. ``ratings`` come from rubric judges,
    ``rationale`` is the judge's explanation where it gives one. ``verdict``: ``A`` / ``B`` / ``tie`` for a
    pairwise item, ``refused`` / ``complied`` for a refusal item."""

    score: float | None
    ratings: dict[str, int] | None = None
    rationale: str | None = None
    error: str | None = None
    verdict: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and (self.score is not None or self.verdict is not None)

    def to_dict(self) -> dict[str, Any]:
        out = {"score": self.score, "ratings": self.ratings, "rationale": self.rationale, "error": self.error}
        if self.verdict is not None:  # rating judgements keep the shape they had before verdicts existed
            out["verdict"] = self.verdict
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Judgement:
        return cls(data.get("score"), data.get("ratings"), data.get("rationale"), data.get("error"), data.get("verdict"))


def unsupported(item: JudgeItem, judge: str) -> Judgement:
    return Judgement(None, error=f"{item.where()}: judge {judge} cannot give {item.kind!r} judgements")


def verdict_from_scores(a: float, b: float, tie_margin: float = 0.0) -> str:
    """The pairwise verdict of a judge that scores each answer alone: the higher score wins, a difference
    of at most ``tie_margin`` is a tie. Such a judge cannot favour a position."""
    if a - b > tie_margin:
        return "A"
    if b - a > tie_margin:
        return "B"
    return "tie"


OnResult = Callable[[int, Judgement], None]


@runtime_checkable
class Judge(Protocol):
    """What the judge step needs from a judge.

    ``fingerprint()`` identifies everything a score depends on besides the item (the judge model, the
    rubric, ...): the on-disk cache is keyed by it, so changing any of them re-asks.
    ``judge(items, on_result)`` returns one `Judgement` per item, in order, and calls
    ``on_result(index, judgement)`` as each one is ready so that the caller can save it at once. An item
    of a kind the judge cannot give is a failed `Judgement` (`unsupported`), never an exception.
    Optionally, ``kinds`` lists the `JudgementKind` values the judge gives (a judge without it is asked
    for every kind), so that a run can leave a judge out of a part it cannot judge before asking.
    """

    name: str

    def fingerprint(self) -> str: ...

    def judge(self, items: Sequence[JudgeItem], on_result: OnResult | None = None) -> list[Judgement]: ...


def _valid_score(value: Any, item: JudgeItem, what: str) -> Judgement:
    if isinstance(value, Judgement):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return Judgement(None, error=f"{item.where()}: {what} returned {value!r}, not a finite number")
    return Judgement(float(value))


def resolve_callable(fn: Callable[..., Any] | str) -> Callable[..., Any]:
    """A callable, or its import path: ``package.module.function`` or ``package.module:function``."""
    if callable(fn):
        return fn
    if not isinstance(fn, str) or not fn:
        raise TypeError(f"judge.fn must be a callable or an import path string, got {fn!r}")
    module_name, sep, attr = fn.partition(":") if ":" in fn else fn.rpartition(".")
    if not sep or not module_name or not attr:
        raise ValueError(f"judge.fn={fn!r} is not an import path like 'package.module.function'")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"judge.fn={fn!r} cannot be imported: {err}") from err
    if not callable(target):
        raise TypeError(f"judge.fn={fn!r} is not callable")
    return target


def _source_hash(fn: Callable[..., Any]) -> str:
    try:
        return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]
    except (OSError, TypeError):
        return "nosource"


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


class CallableJudge:
    """Judge with Python functions: ``fn(prompt, response) -> float`` (or a `Judgement`) scores an answer.

    - ``rating`` and ``score`` items: ``fn``'s score. A function with a ``reference`` parameter also gets
      the reference answer of the judged turn (``None`` when there is none).
    - ``pairwise`` items: ``fn`` scores both answers and the higher one wins (`verdict_from_scores`; a
      difference of at most ``tie_margin`` is a tie). Such a judge has no position bias by construction.
    - ``refusal`` items: ``refusal_fn(prompt, response) -> bool``; without one the judge cannot give them.

    An exception or a non-finite / non-numeric result marks that item failed (with the prompt named)
    and the run goes on. The cache fingerprint includes a hash of each function's source, so editing a
    function invalidates its cached judgements.
    """

    def __init__(
        self,
        fn: Callable[..., float | Judgement] | str,
        name: str | None = None,
        *,
        refusal_fn: Callable[[str, str], bool] | str | None = None,
        tie_margin: NonNegative = 0.0,
    ) -> None:
        check_arguments(CallableJudge, locals(), prefix="judge")
        self.fn = resolve_callable(fn)
        self.refusal_fn = resolve_callable(refusal_fn) if refusal_fn is not None else None
        self.tie_margin = tie_margin
        qualname = _qualname(self.fn)
        self.name = name or qualname
        try:
            self._takes_reference = "reference" in inspect.signature(self.fn).parameters
        except (TypeError, ValueError):
            self._takes_reference = False
        self.kinds = ("rating", "score", "pairwise") + (("refusal",) if self.refusal_fn is not None else ())
        # The fingerprint of a plain scoring function is what it was before the other kinds existed, so
        # that AIF caches stay valid; the refusal function and the tie margin join it when set.
        self._fingerprint = f"callable:{qualname}:{_source_hash(self.fn)}"
        if self.refusal_fn is not None:
            self._fingerprint += f":refusal:{_qualname(self.refusal_fn)}:{_source_hash(self.refusal_fn)}"
        if tie_margin:
            self._fingerprint += f":tie_margin={tie_margin:g}"

    def fingerprint(self) -> str:
        return self._fingerprint

    def _score(self, item: JudgeItem, response: str) -> Judgement:
        if self._takes_reference:
            value = self.fn(item.prompt, response, reference=item.turn_reference)
        else:
            value = self.fn(item.prompt, response)
        return _valid_score(value, item, self.name)

    def _one(self, item: JudgeItem) -> Judgement:
        if item.kind in ("rating", "score"):
            return self._score(item, item.response)
        if item.kind == "pairwise":
            a, b = self._score(item, item.response), self._score(item, item.response_b or "")
            if not (a.ok and b.ok):
                return a if not a.ok else b
            return Judgement(None, rationale=f"A scored {a.score:g}, B scored {b.score:g}",
                             verdict=verdict_from_scores(a.score, b.score, self.tie_margin))
        if item.kind == "refusal" and self.refusal_fn is not None:
            refused = self.refusal_fn(item.prompt, item.response)
            if not isinstance(refused, bool):
                return Judgement(None, error=f"{item.where()}: {self.name}'s refusal_fn returned {refused!r}, not a bool")
            return Judgement(None, verdict=REFUSED if refused else COMPLIED)
        return unsupported(item, self.name)

    def judge(self, items: Sequence[JudgeItem], on_result: OnResult | None = None) -> list[Judgement]:
        out = []
        for index, item in enumerate(items):
            try:
                judgement = self._one(item)
            except Exception as err:  # a programmatic judge failing on one item must not stop the run
                judgement = Judgement(None, error=f"{item.where()}: {self.name} raised {type(err).__name__}: {err}")
            if on_result is not None:
                on_result(index, judgement)
            out.append(judgement)
        return out


_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOPWORDS = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for", "from", "how", "i", "in", "is", "it", "of", "on", "or", "the", "this", "to", "was", "what", "when", "where", "which", "who", "why", "with", "you", "your"]
)


def heuristic_score(prompt: str, response: str) -> float:
    """A cheap programmatic score in [1, 10], the offline stand-in judge of the default config.

    It rewards a response that is non-empty, not repetitive (share of distinct words), of substance
    (up to 50 words) and on topic (share of the prompt's content words it uses):
    ``1 + 9 * (0.4 * distinct + 0.3 * min(words / 50, 1) + 0.3 * overlap)``, rounded to 2 decimals.
    It knows nothing about correctness: it exists so that the pipeline runs end to end without a
    network or a GPU; use `OpenAIJudge` or `RewardModelJudge` for real preference data.
    """
    words = [w.lower() for w in _WORD.findall(response)]
    if not words:
        return 1.0
    distinct = len(set(words)) / len(words)
    substance = min(len(words) / 50.0, 1.0)
    topic = {w.lower() for w in _WORD.findall(prompt)} - _STOPWORDS
    overlap = len(topic & set(words)) / len(topic) if topic else 0.0
    return round(1.0 + 9.0 * (0.4 * distinct + 0.3 * substance + 0.3 * overlap), 2)


_REFUSAL_OPENINGS = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry,|i apologi[sz]e|i can(?:'|no)?t\b|i cannot|i won'?t|i will not|i'?m (?:not able|unable)"
    r"|i am (?:not able|unable)|i must (?:decline|refuse)|as an ai\b|unfortunately,? i (?:can|am|won))",
    re.IGNORECASE,
)


def heuristic_refusal(prompt: str, response: str) -> bool:
    """A cheap programmatic refusal classifier, the offline stand-in of a judge with the refusal rubric:
    ``True`` when the answer is empty or opens by declining ("I'm sorry", "I can't", "As an AI", ...).
    It misses refusals phrased otherwise and counts an apology that goes on to help as a refusal."""
    return not response.strip() or bool(_REFUSAL_OPENINGS.match(response.strip()))


class OpenAIJudge:
    """Rate completions with an OpenAI-compatible chat-completions model and a rubric.

    The rubric is the system message; the user message holds the instruction and the response
    between markers (`zephyr_lightning.aif.rubric.judge_user_message`). The reply must be the rubric's
    JSON object (`parse_ratings`, by the declared `ratings_model`); the score is the mean of the aspect
    ratings. Requests go through the official ``openai`` client (`OpenAICompatibleClient`).

    The evaluation's kinds (``score``, ``pairwise``, ``refusal``) are asked with their own prompts and
    parsed by their own declared replies (`zephyr_lightning.aif.grading`); ``rubric`` is the ``rating``
    kind's only.

    Args:
        model: the judge model's name on the server (e.g. ``gpt-4o``).
        base_url: API root (``https://api.openai.com/v1``, ``http://localhost:8000/v1`` for vLLM).
        api_key_env: the NAME of the environment variable holding the key. The key itself never
            appears in a config, a log line, an error or a written file.
        rubric: ``None`` for the built-in rubric, a path to a text file, or the rubric text.
        concurrency: requests in flight at once.
        timeout: seconds per attempt before it counts as timed out (and is retried).
        max_retries: retries of a request on 408/409/429/5xx, timeouts and dropped connections, after
            the server's ``Retry-After`` or with the SDK's jittered exponential backoff.
        temperature, max_tokens: sampling of the judge's reply.
        response_format: ``json_schema`` sends the rating object's JSON schema (vLLM and OpenAI constrain
            the reply to it), ``json_object`` asks for any JSON object, ``None`` sends none (for servers or
            models without structured outputs). Replies are validated the same way in every case.
        extra_body: extra request fields, sent as they are (fields the judge sets itself win).
        name: how logs and summaries name this judge.
    """

    def __init__(
        self,
        model: Annotated[str, Field(min_length=1)],
        base_url: HttpUrl = "https://api.openai.com/v1",
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        rubric: str | None = None,
        concurrency: PositiveInt = 8,
        timeout: Positive = 60.0,
        max_retries: NonNegativeInt = 6,
        temperature: NonNegative = 0.0,
        max_tokens: PositiveInt = 512,
        response_format: Literal["json_schema", "json_object"] | None = "json_schema",
        extra_body: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        check_arguments(OpenAIJudge, locals(), prefix="judge")
        self.model = model
        self.rubric = load_rubric(rubric)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.response_format = response_format
        self.extra_body = dict(extra_body or {})
        self.name = name or f"openai:{model}"
        self.kinds = JUDGEMENT_KINDS
        self.client = OpenAICompatibleClient(
            base_url, api_key_env=api_key_env, concurrency=concurrency, timeout=timeout, max_retries=max_retries
        )

    def __repr__(self) -> str:
        return f"OpenAIJudge(model={self.model!r}, client={self.client!r})"

    def fingerprint(self) -> str:
        # The cache key: judge model, rubric and message format (the prompt and response are added
        # per item by the cache). A response_format constrains the reply, so it is part of the key too;
        # without one the key is what it was before the option existed, so older caches still count.
        parts: list[Any] = ["openai", self.model, self.rubric, JUDGE_FORMAT_VERSION]
        if self.response_format is not None:
            parts.append(self.response_format)
        return json.dumps(parts)

    def request(self, item: JudgeItem) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` that judge ``item``."""
        if item.kind == "rating":
            messages = [
                {"role": "system", "content": self.rubric},
                {"role": "user", "content": judge_user_message(item.prompt, item.response)},
            ]
            response_format = response_format_for(self.response_format)
        else:
            kind = GRADING_KINDS[item.kind]
            messages = kind.messages(item)
            response_format = kind.response_format(self.response_format)
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if response_format is not None:
            request["response_format"] = response_format
        return with_extra_body(request, self.extra_body)

    def _to_judgement(self, item: JudgeItem, reply: ChatCompletion | RequestError) -> Judgement:
        if isinstance(reply, RequestError):
            return Judgement(None, error=f"{item.where()}: request failed: {reply}")
        try:
            text = chat_content(reply)
            if item.kind == "rating":
                ratings, rationale = parse_ratings(text)
                return Judgement(overall_score(ratings), ratings=ratings, rationale=rationale)
            score, verdict, explanation = GRADING_KINDS[item.kind].parse(text)
            return Judgement(score, rationale=explanation, verdict=verdict)
        except RequestError as err:
            return Judgement(None, error=f"{item.where()}: {err}")
        except ScoreParseError as err:
            what = "rating" if item.kind == "rating" else f"{item.kind} reply"
            return Judgement(None, error=f"{item.where()}: the judge's reply is not a valid {what}: {err}")

    def judge(self, items: Sequence[JudgeItem], on_result: OnResult | None = None) -> list[Judgement]:
        def done(index: int, reply: ChatCompletion | RequestError) -> None:
            if on_result is not None:
                on_result(index, self._to_judgement(items[index], reply))

        replies = self.client.complete_all([self.request(item) for item in items], done)
        return [self._to_judgement(item, reply) for item, reply in zip(items, replies)]


@dataclass
class _LoadedRewardModel:
    model: Any
    tokenizer: Any
    device: Any = field(default=None)


class RewardModelJudge:
    """Score with a local reward model: ``AutoModelForSequenceClassification`` with one output.

    Each (prompt, response) is rendered as a user turn and an assistant turn with the tokenizer's
    chat template (Zephyr's when the tokenizer has none) and the model's single logit is the score.
    Batches are right-padded; the model reads its score at each row's last real token.
    ``score`` items are rendered with their earlier turns; a ``pairwise`` item scores both conversations
    and the higher logit wins (`verdict_from_scores`). A reward model cannot classify refusals.

    Args:
        model: a `ModelSpec`, or a hub name / local folder of a sequence-classification model.
        batch_size: completions per forward pass.
        max_length: longest rendered conversation in tokens; longer items are marked failed rather
            than scored on a cut text.
        device: ``cuda``, ``cpu``...; default: CUDA when available.
        name: how logs and summaries name this judge.
    """

    def __init__(
        self,
        model: ModelSpec | str | dict[str, Any],
        *,
        batch_size: PositiveInt = 8,
        max_length: PositiveInt = 4096,
        device: str | None = None,
        name: str | None = None,
    ) -> None:
        check_arguments(RewardModelJudge, locals(), prefix="judge")
        self.spec = as_spec(model)
        if self.spec.is_builtin:
            raise ValueError(
                f"judge.model={self.spec.name_or_path!r} is a built-in causal LM, not a reward model; give the "
                "hub name or folder of an AutoModelForSequenceClassification model with num_labels=1"
            )
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.name = name or f"reward_model:{self.spec.name_or_path}"
        self.kinds = ("rating", "score", "pairwise")
        self._loaded: _LoadedRewardModel | None = None

    def fingerprint(self) -> str:
        spec = self.spec
        return json.dumps(
            ["reward_model", spec.name_or_path, spec.revision, spec.dtype, spec.chat_template, self.max_length]
        )

    def setup(self) -> _LoadedRewardModel:
        if self._loaded is not None:
            return self._loaded
        import torch
        from transformers import AutoModelForSequenceClassification

        from zephyr_lightning.models import (
            _from_pretrained_dtype_kwarg,
            load_tokenizer,
            parse_dtype,
            resolve_attn_implementation,
        )

        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        tokenizer = load_tokenizer(self.spec)
        tokenizer.padding_side = "right"
        dtype = parse_dtype(self.spec.dtype)
        kwargs: dict[str, Any] = {
            "attn_implementation": resolve_attn_implementation(self.spec.attn_implementation, device.type == "cuda"),
            "trust_remote_code": self.spec.trust_remote_code,
            "revision": self.spec.revision,
            _from_pretrained_dtype_kwarg(): dtype if dtype is not None else "auto",
        }
        model = AutoModelForSequenceClassification.from_pretrained(self.spec.name_or_path, **kwargs)
        if model.config.num_labels != 1:
            raise ValueError(
                f"judge.model={self.spec.name_or_path!r} has num_labels={model.config.num_labels}; a reward model "
                "has exactly one output (num_labels=1)"
            )
        if model.config.pad_token_id is None:
            # Sequence classifiers find each row's last token through the pad id.
            model.config.pad_token_id = tokenizer.pad_token_id
        model.to(device).eval()
        self._loaded = _LoadedRewardModel(model, tokenizer, device)
        return self._loaded

    def close(self) -> None:
        self._loaded = None

    def judge(self, items: Sequence[JudgeItem], on_result: OnResult | None = None) -> list[Judgement]:
        import torch

        loaded = self.setup()
        tokenizer, model = loaded.tokenizer, loaded.model
        results: list[Judgement | None] = [None] * len(items)
        # Each item needs one conversation scored (two for a pairwise item): (item, slot) -> score.
        scores: dict[tuple[int, int], Judgement] = {}
        wanted = {index: (2 if item.kind == "pairwise" else 1) for index, item in enumerate(items)}

        def finish(index: int, judgement: Judgement) -> None:
            results[index] = judgement
            if on_result is not None:
                on_result(index, judgement)

        def scored(index: int, slot: int, judgement: Judgement) -> None:
            if results[index] is not None:
                return
            scores[(index, slot)] = judgement
            if not judgement.ok or items[index].kind != "pairwise":
                finish(index, judgement)
            elif (index, 1 - slot) in scores:
                a, b = scores[(index, 0)].score, scores[(index, 1)].score
                finish(index, Judgement(None, rationale=f"A scored {a:.4g}, B scored {b:.4g}", verdict=verdict_from_scores(a, b)))

        encoded: list[tuple[int, int, list[int]]] = []
        for index, item in enumerate(items):
            if item.kind not in self.kinds:
                finish(index, unsupported(item, self.name))
                continue
            sides = [(item.history, item.response)]
            if wanted[index] == 2:
                sides.append((item.history_b, item.response_b or ""))
            for slot, (history, response) in enumerate(sides):
                if not response.strip():
                    scored(index, slot, Judgement(None, error=f"{item.where()}: empty response"))
                    continue
                messages = [m for user, answer in history for m in ({"role": "user", "content": user},
                                                                   {"role": "assistant", "content": answer})]
                messages += [{"role": "user", "content": item.prompt}, {"role": "assistant", "content": response}]
                ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
                if len(ids) > self.max_length:
                    scored(index, slot, Judgement(None, error=f"{item.where()}: {len(ids)} tokens > max_length={self.max_length}"))
                    continue
                encoded.append((index, slot, ids))
        # Similar lengths together: less padding per batch.
        encoded.sort(key=lambda entry: len(entry[2]))
        with torch.no_grad():
            for start in range(0, len(encoded), self.batch_size):
                chunk = encoded[start : start + self.batch_size]
                batch = tokenizer.pad({"input_ids": [ids for _, _, ids in chunk]}, return_tensors="pt")
                batch = {k: v.to(loaded.device) for k, v in batch.items()}
                logits = model(**batch).logits[:, 0].float().tolist()
                for (index, slot, _), logit in zip(chunk, logits):
                    scored(index, slot, _valid_score(logit, items[index], self.name))
        return [r for r in results if r is not None]
