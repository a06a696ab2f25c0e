"""The Mini-Zephyr task family: short instructions whose answers a program can check.

Every task is one question (add two numbers, sort numbers, reverse a list, pick the largest number,
count items) plus a requested answer format (the bare answer, a JSON object, or one sentence). The
prompt text is all a judge sees, so `parse_prompt` recovers the task from it, and `grade` scores a
response against the task's definition with partial credit:

- correctness in [0, 1]: the share of digits (addition, aligned from the right) or list positions
  (sorting, reversing) that are right; for the largest number, how highly the answer ranks among the
  listed numbers; for counting, 1 - |error| / count;
- format: 1 if the response is exactly in the requested format, else 0 (the answer is then read
  leniently: "the answer is X", a JSON-looking ``"answer": "X"``, or the whole text);
- quality = 0.8 x correctness + 0.2 x format, and the judge's score is 1 + 9 x quality (1-10, like
  UltraFeedback's overall score).

Nothing here touches a model: it is plain Python, deterministic for a seed.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

KINDS = ("add", "sort", "reverse", "max", "count")
STYLES = ("plain", "json", "sentence")
# Each a single piece of the Mistral tokenizer (with its leading space), so list positions are tokens.
WORDS = (
    "cat", "dog", "sun", "red", "blue", "tree", "fish", "bird", "milk", "rain", "star", "moon",
    "book", "door", "ship", "lamp", "cake", "king", "road", "wind", "snow", "gold", "rose",
)

STYLE_INSTRUCTIONS = {
    "plain": "Reply with the answer only.",
    "json": 'Reply in JSON, as {"answer": "..."}.',
    "sentence": "Reply in one sentence.",
}
QUESTION_TEMPLATES = {
    "add": "What is {0} + {1}?",
    "sort": "Sort these numbers from smallest to largest: {items}.",
    "reverse": "Reverse the order of this list: {items}.",
    "max": "Which is the largest number: {items}?",
    "count": "How many items are in this list: {items}?",
}
CORRECTNESS_WEIGHT = 0.8
FORMAT_WEIGHT = 0.2
MIN_SCORE, MAX_SCORE = 1.0, 10.0

_QUESTION_PATTERNS = {
    "add": re.compile(r"What is (\d+) \+ (\d+)\?"),
    "sort": re.compile(r"Sort these numbers from smallest to largest: ([^.?]+)\."),
    "reverse": re.compile(r"Reverse the order of this list: ([^.?]+)\."),
    "max": re.compile(r"Which is the largest number: ([^?]+)\?"),
    "count": re.compile(r"How many items are in this list: ([^?]+)\?"),
}
_INTEGER = re.compile(r"-?\d+")
_SENTENCE = re.compile(r"The answer is (.+)\.")
# Where a response out of format most likely states its answer: "... the answer is X." or "answer": "X".
_LENIENT = (re.compile(r"answer is:?\s*([^.]+)"), re.compile(r'"answer"\s*:\s*"([^"]*)"'))


class NotATaskError(ValueError):
    """A prompt that is not one of the family's (the judge cannot score it)."""


@dataclass(frozen=True)
class Task:
    """One instruction: a question ``kind`` on ``items`` (numbers or words) and an answer ``style``."""

    kind: str
    items: tuple[str, ...]
    style: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task kind {self.kind!r} is not one of {list(KINDS)}")
        if self.style not in STYLES:
            raise ValueError(f"task style {self.style!r} is not one of {list(STYLES)}")

    @property
    def question(self) -> str:
        if self.kind == "add":
            return QUESTION_TEMPLATES["add"].format(*self.items)
        return QUESTION_TEMPLATES[self.kind].format(items=", ".join(self.items))

    @property
    def prompt(self) -> str:
        return f"{self.question} {STYLE_INSTRUCTIONS[self.style]}"

    @property
    def answer(self) -> str:
        """The correct answer, unformatted (``85``, ``1, 3, 7``, ``sun, dog, cat``)."""
        return ", ".join(expected_items(self))

    def formatted(self, answer: str | None = None) -> str:
        """An answer (default: the correct one) written in the requested style."""
        answer = self.answer if answer is None else answer
        if self.style == "plain":
            return answer
        if self.style == "json":
            return json.dumps({"answer": answer})
        return f"The answer is {answer}."


def expected_items(task: Task) -> list[str]:
    """The correct answer as a list of tokens-to-check, by each kind's definition."""
    if task.kind == "add":
        return [str(sum(int(x) for x in task.items))]
    if task.kind == "sort":
        return [str(x) for x in sorted(int(x) for x in task.items)]
    if task.kind == "reverse":
        return list(reversed(task.items))
    if task.kind == "max":
        return [str(max(int(x) for x in task.items))]
    return [str(len(task.items))]


@dataclass(frozen=True)
class TaskFamily:
    """Which tasks to draw and how hard they are.

    Args:
        kinds: question kinds to draw from (uniformly).
        styles: answer formats to draw from (uniformly).
        min_items, max_items: list length for sort / reverse / max / count.
        min_number, max_number: the range of the operands of additions and of the numbers to sort or
            compare (1-9: one token each, learnable by a tiny model in minutes; 10-99 is much harder).
        words: the items of the lists to reverse or count.
    """

    kinds: tuple[str, ...] = KINDS
    styles: tuple[str, ...] = STYLES
    min_items: int = 3
    max_items: int = 4
    min_number: int = 1
    max_number: int = 9
    words: tuple[str, ...] = field(default=WORDS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "styles", tuple(self.styles))
        object.__setattr__(self, "words", tuple(self.words))
        bad = [k for k in self.kinds if k not in KINDS] + [s for s in self.styles if s not in STYLES]
        if bad or not self.kinds or not self.styles:
            raise ValueError(f"tasks: unknown or no kinds/styles {bad}; kinds are {list(KINDS)}, styles {list(STYLES)}")
        if not 2 <= self.min_items <= self.max_items:
            raise ValueError(f"tasks: need 2 <= min_items <= max_items, got {self.min_items}, {self.max_items}")
        if not 0 <= self.min_number < self.max_number:
            raise ValueError(f"tasks: need 0 <= min_number < max_number, got {self.min_number}, {self.max_number}")
        if self.max_items > min(self.max_number - self.min_number + 1, len(self.words)):
            raise ValueError(f"tasks: max_items={self.max_items} exceeds the distinct numbers or words available")

    def sample(self, rng: random.Random) -> Task:
        kind = rng.choice(self.kinds)
        style = rng.choice(self.styles)
        if kind == "add":
            items = (rng.randint(self.min_number, self.max_number), rng.randint(self.min_number, self.max_number))
        else:
            n = rng.randint(self.min_items, self.max_items)
            # Distinct items: a list with repeats makes "reverse" and "largest" ambiguous to grade.
            pool = self.words if kind in ("reverse", "count") else range(self.min_number, self.max_number + 1)
            items = tuple(rng.sample(list(pool), n))
        return Task(kind, tuple(str(x) for x in items), style)

    def sample_distinct(self, rng: random.Random, n: int, exclude: set[str] | None = None) -> list[Task]:
        """``n`` tasks with distinct prompts, none of whose prompt is in ``exclude``."""
        seen = set(exclude or ())
        tasks: list[Task] = []
        attempts = 0
        while len(tasks) < n:
            attempts += 1
            if attempts > 50 * n + 1000:
                raise ValueError(f"tasks: could not draw {n} distinct prompts; widen the family (max_number, items)")
            task = self.sample(rng)
            if task.prompt not in seen:
                seen.add(task.prompt)
                tasks.append(task)
        return tasks


def parse_prompt(prompt: str) -> Task:
    """Recover the task from its prompt text (the inverse of `Task.prompt`)."""
    text = prompt.strip()
    style = next((s for s, instruction in STYLE_INSTRUCTIONS.items() if text.endswith(instruction)), None)
    if style is None:
        raise NotATaskError(f"no answer-format instruction at the end of the prompt {prompt[:80]!r}")
    question = text[: -len(STYLE_INSTRUCTIONS[style])].strip()
    for kind, pattern in _QUESTION_PATTERNS.items():
        match = pattern.fullmatch(question)
        if match:
            items = match.groups() if kind == "add" else tuple(x.strip() for x in match.group(1).split(","))
            return Task(kind, tuple(items), style)
    raise NotATaskError(f"not a Mini-Zephyr question: {question[:80]!r}")


@dataclass(frozen=True)
class Grade:
    """How good one response is: correctness in [0, 1], format followed or not, and the 1-10 score."""

    correctness: float
    format_ok: bool

    @property
    def quality(self) -> float:
        return CORRECTNESS_WEIGHT * self.correctness + FORMAT_WEIGHT * float(self.format_ok)

    @property
    def score(self) -> float:
        return round(MIN_SCORE + (MAX_SCORE - MIN_SCORE) * self.quality, 2)


def read_answer(task: Task, response: str) -> tuple[str, bool]:
    """The answer text a response gives, and whether it is exactly in the requested format."""
    text = response.strip()
    if task.style == "json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and list(obj) == ["answer"] and isinstance(obj["answer"], str):
            return obj["answer"].strip(), True
    elif task.style == "sentence":
        match = _SENTENCE.fullmatch(text)
        if match:
            return match.group(1).strip(), True
    elif _plain_answer_shape(task, text):
        return text, True
    for pattern in _LENIENT:
        match = pattern.search(text)
        if match:
            return match.group(1).strip().rstrip("."), False
    return text, False


def _plain_answer_shape(task: Task, text: str) -> bool:
    # The bare answer is a number, or a comma-separated list of numbers or words, and nothing else.
    if task.kind in ("add", "max", "count"):
        return re.fullmatch(r"\d+", text) is not None
    return re.fullmatch(r"[A-Za-z0-9]+(, [A-Za-z0-9]+)*", text) is not None


def _digit_credit(predicted: str, expected: str) -> float:
    # Digits aligned from the right (units with units), so a missed carry costs one digit, not all.
    width = max(len(predicted), len(expected))
    a, b = predicted.rjust(width), expected.rjust(width)
    return sum(x == y for x, y in zip(a, b)) / width


def correctness(task: Task, answer: str) -> float:
    """Partial credit in [0, 1] of an answer text against the task's definition."""
    expected = expected_items(task)
    if task.kind in ("sort", "reverse"):
        given = [x.strip() for x in answer.split(",") if x.strip()]
        if not given:
            return 0.0
        hits = sum(g == e for g, e in zip(given, expected))
        return hits / max(len(given), len(expected))
    numbers = _INTEGER.findall(answer)
    if len(numbers) != 1:
        return 0.0  # none, or several numbers: no single answer to credit
    value = int(numbers[0])
    if task.kind == "add":
        return _digit_credit(str(value), expected[0])
    if task.kind == "max":
        values = sorted(int(x) for x in task.items)
        if value not in values:
            return 0.0
        return values.index(value) / (len(values) - 1)
    n = len(task.items)
    return max(0.0, 1.0 - abs(value - n) / n)


def grade(task: Task, response: str) -> Grade:
    answer, format_ok = read_answer(task, response)
    return Grade(correctness(task, answer), format_ok)


def sample_tasks(family: TaskFamily, n: int, seed: int, exclude: Sequence[str] = ()) -> list[Task]:
    """``n`` distinct tasks drawn with ``random.Random(seed)``; prompts in ``exclude`` are skipped."""
    return family.sample_distinct(random.Random(seed), n, set(exclude))
