"""Rows removed before training, each for a named reason and counted by source: filters, duplicates,
training prompts that are test prompts, and evaluation prompts (decontamination).

Per split, in this order (a row is counted once, under the first reason that removes it):

1. **contaminated** (train split only, with ``decontamination``): the prompt or a user turn matches an
   evaluation prompt (`zephyr_lightning.data.decontamination`); counted as
   ``contaminated: exact match`` or ``contaminated: 13-gram overlap``;
2. **filters** (`Filters`), each by its name: ``filter: no final assistant turn``, ``filter: model
   disclaimer``, ``filter: prompt shorter than min_prompt_chars``, ...;
3. **prompt in test split** (train split only): its normalised prompt is a prompt of the test split;
4. **duplicates** (``deduplicate``), keeping the first of a group in mixture order (the first listed
   source, then file order): ``duplicate row`` (the same conversations, or prompt), ``duplicate
   prompt_id`` (a repeated id with another prompt), ``duplicate prompt`` (the same normalised prompt, in
   the same source or another).

Duplicates a mode keeps are counted, not removed (`CleanedSplit.duplicates`): with ``off``, duplicate rows,
repeated prompt_ids (``duplicate prompt_id``: with another prompt; ``repeated prompt_id``: with the same
prompt) and duplicate prompts; with ``row``, a prompt_id repeated with another prompt (several rows per
prompt are what ``row`` keeps, but one id for two prompts is a fault in the data).

Rows that are malformed (a turn without a role, content that is not text, ...) are left alone: the
tokenizer reports them by ``data.on_bad_row``, as without any cleaning. So are rows that pass.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

import datasets
from pydantic import BaseModel, ConfigDict, Field, model_validator

from zephyr_lightning.arguments import NonNegativeInt, PositiveInt
from zephyr_lightning.data.chat import validate_dialogue, validate_pair
from zephyr_lightning.data.decontamination import EvalIndex
from zephyr_lightning.data.normalize import normalize
from zephyr_lightning.data.schema import Kind, first_user_turn
from zephyr_lightning.data.sources import BadRowError

Deduplicate = Literal["prompt", "row", "off"]
DEDUPLICATE: tuple[str, ...] = get_args(Deduplicate)

# Assistant turns the H4 team removed from UltraChat to make ultrachat_200k ("I do not have emotions",
# "I don't have opinions"; dataset card), and the classic disclaimer. Matched case-insensitively, as
# whole words, with any apostrophe and spacing.
DISCLAIMERS = (
    "as an AI language model",
    "as a language model",
    "as an AI model",
    "I do not have emotions",
    "I don't have emotions",
    "I do not have feelings",
    "I don't have feelings",
    "I do not have opinions",
    "I don't have opinions",
    "I do not have personal opinions",
    "I don't have personal opinions",
    "I do not have personal beliefs",
    "I don't have personal beliefs",
)


class Filters(BaseModel):
    """What ``data.filters`` (and ``prompts.filters`` of the AIF command) holds; each filter counts what it
    removes under its own name.

    Args:
        final_assistant: drop dSFT dialogues whose last turn is not the assistant's (the trailing user turn
            has no answer to learn from). Preference pairs without one are malformed rows instead.
        model_disclaimer: drop rows with an assistant turn containing one of ``disclaimer_phrases`` (dSFT:
            any assistant turn; preference pairs: the chosen answer and the turns before it, never the
            rejected answer, where a disclaimer is what the pair teaches to avoid).
        disclaimer_phrases: the phrases (case, apostrophes and spacing ignored).
        min_prompt_chars, max_prompt_chars: bounds on the prompt's length in characters.
        min_response_chars, max_response_chars: bounds on each answer's length in characters (dSFT: every
            assistant turn; pairs: the chosen and the rejected answer; prompts have none).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    final_assistant: bool = True
    model_disclaimer: bool = True
    disclaimer_phrases: tuple[Annotated[str, Field(min_length=1)], ...] = DISCLAIMERS
    min_prompt_chars: NonNegativeInt | None = None
    max_prompt_chars: PositiveInt | None = None
    min_response_chars: NonNegativeInt | None = None
    max_response_chars: PositiveInt | None = None

    @model_validator(mode="after")
    def _bounds_in_order(self) -> Filters:
        for what in ("prompt", "response"):
            low, high = getattr(self, f"min_{what}_chars"), getattr(self, f"max_{what}_chars")
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{what}_chars={low} is more than max_{what}_chars={high}")
        return self

    def disclaimer_matcher(self) -> PhraseMatcher | None:
        return PhraseMatcher(self.disclaimer_phrases) if self.model_disclaimer and self.disclaimer_phrases else None


class PhraseMatcher:
    """Finds any of some phrases in a text: case-insensitive, as whole words, with any apostrophe and spacing.

    One regular expression does it; a text that lacks the longest word of every phrase is passed over
    without it (a substring test per phrase: most of the time on long answers, where the expression is slow).
    """

    def __init__(self, phrases: Sequence[str]) -> None:
        parts = [r"\s+".join(re.escape(piece) for piece in phrase.split()).replace("'", "['\u2019]") for phrase in phrases]
        self.pattern = re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE)
        self.anchors = tuple({max(re.findall(r"\w+", phrase.lower()), key=len) for phrase in phrases})

    def search(self, text: str) -> bool:
        lowered = text.lower()
        return any(anchor in lowered for anchor in self.anchors) and self.pattern.search(text) is not None


DEFAULT_FILTERS = Filters()


@dataclass
class RowView:
    """The texts of a well-formed row that the rules look at."""

    prompt: str
    user_turns: list[str]
    disclaimer_turns: list[str]  # assistant turns the disclaimer filter reads
    responses: list[str]  # answers the response-length filters read
    final_role: str | None
    identity: int  # hash of the conversation(s): equal for duplicate rows


def _pairs(messages: list[dict]) -> tuple:
    return tuple((t["role"], t["content"]) for t in messages)


def view_row(row: dict[str, Any], kind: Kind) -> RowView | None:
    """What the rules read from a row, or None when it is malformed: such rows are left for the tokenizer,
    which reports them by ``data.on_bad_row`` (the checks are the tokenizer's own, `validate_dialogue` and
    `validate_pair`)."""
    given = row.get("prompt")
    if kind == "prompts":
        if not isinstance(given, str) or not given.strip():
            return None
        return RowView(given, [given], [], [], None, hash(given))
    try:
        if kind == "sft":
            messages = validate_dialogue(row, where="")
            assistant = [t["content"] for t in messages if t["role"] == "assistant"]
            prompt_turns, disclaimer, responses = messages, assistant, assistant
            identity, final_role = hash(_pairs(messages)), messages[-1]["role"]
        else:
            chosen, rejected = validate_pair(row, where="")
            prompt_turns = chosen[:-1]
            disclaimer = [t["content"] for t in chosen if t["role"] == "assistant"]
            responses = [chosen[-1]["content"], rejected[-1]["content"]]
            identity, final_role = hash((_pairs(chosen), _pairs(rejected))), "assistant"
    except BadRowError:
        return None
    users = [t["content"] for t in prompt_turns if t["role"] == "user"]
    prompt = given if isinstance(given, str) and given.strip() else (first_user_turn(prompt_turns) or "")
    if prompt and prompt not in users:
        users = [prompt, *users]
    return RowView(prompt, users, disclaimer, responses, final_role, identity)


def filter_reason(view: RowView, kind: Kind, filters: Filters, disclaimer: PhraseMatcher | None) -> str | None:
    """The name of the first filter that removes the row, or None."""
    if kind == "sft" and filters.final_assistant and view.final_role != "assistant":
        return "filter: no final assistant turn"
    if disclaimer is not None and any(disclaimer.search(text) for text in view.disclaimer_turns):
        return "filter: model disclaimer"
    length = len(view.prompt)
    if filters.min_prompt_chars is not None and length < filters.min_prompt_chars:
        return "filter: prompt shorter than min_prompt_chars"
    if filters.max_prompt_chars is not None and length > filters.max_prompt_chars:
        return "filter: prompt longer than max_prompt_chars"
    if filters.min_response_chars is not None and any(len(r) < filters.min_response_chars for r in view.responses):
        return "filter: response shorter than min_response_chars"
    if filters.max_response_chars is not None and any(len(r) > filters.max_response_chars for r in view.responses):
        return "filter: response longer than max_response_chars"
    return None


# The duplicates each mode removes; the others it finds are kept and counted, except repeated prompts under
# `row`, which keeps several rows per prompt on purpose.
_REMOVES: dict[str, frozenset[str]] = {
    "prompt": frozenset({"duplicate row", "duplicate prompt_id", "repeated prompt_id", "duplicate prompt"}),
    "row": frozenset({"duplicate row"}),
    "off": frozenset(),
}
_EXPECTED: dict[str, frozenset[str]] = {"row": frozenset({"repeated prompt_id", "duplicate prompt"})}


@dataclass
class CleanedSplit:
    """The rows kept, what was removed (per (source position, ``removed: <reason>``)), the duplicates kept
    (per (source position, kind); see the module docstring), the decontamination matches (one record per
    matching evaluation text) and the normalised prompts kept (of a test split)."""

    rows: datasets.Dataset
    removed: Counter = field(default_factory=Counter)
    matches: list[dict[str, Any]] = field(default_factory=list)
    prompts: set[str] = field(default_factory=set)
    duplicates: Counter = field(default_factory=Counter)

    def duplicates_kept(self) -> dict[str, int]:
        """The duplicates kept, by kind, over all sources."""
        totals: Counter = Counter()
        for (_, kind), n in self.duplicates.items():
            totals[kind] += n
        return dict(totals.most_common())


def duplicates_note(kept: dict[str, int], deduplicate: Deduplicate, key: str = "data.deduplicate") -> str:
    """The warning about duplicates a mode kept: the counts and the setting that removes them."""
    counts = ", ".join(f"{n} {kind}" for kind, n in kept.items())
    if deduplicate == "off":
        fix = f"{key}=prompt removes them, {key}=row only the duplicate rows"
    else:
        fix = f"one prompt_id names two prompts: fix the ids, or {key}=prompt keeps the first"
    return f"{counts} kept ({key}={deduplicate}; {fix})"


def clean_split(
    rows: datasets.Dataset,
    *,
    kind: Kind,
    source_names: Sequence[str],
    deduplicate: Deduplicate = "prompt",
    filters: Filters | None = None,
    index: EvalIndex | None = None,
    test_prompts: set[str] | None = None,
    split: str = "train",
    batch_size: int = 1024,
) -> CleanedSplit:
    """Apply the rules of the module docstring to ``rows`` (a mixed split with ``_source`` and ``_index``)."""
    filters = filters or Filters()
    disclaimer = filters.disclaimer_matcher()
    n = len(rows)
    reasons: list[str | None] = [None] * n
    prompts: list[str | None] = [None] * n  # normalised, for well-formed rows
    identities: list[int | None] = [None] * n
    ids: list[str | None] = [None] * n
    matches: list[dict[str, Any]] = []
    columns = [c for c in ("messages", "chosen", "rejected", "prompt", "prompt_id", "_source", "_index") if c in rows.column_names]
    position = 0
    for batch in rows.select_columns(columns).iter(batch_size=batch_size):
        size = len(batch["_source"])
        views = [view_row({c: batch[c][i] for c in columns}, kind) for i in range(size)]
        if index is not None:
            found = index.find([v.user_turns if v is not None else [] for v in views])
        for i, view in enumerate(views):
            at = position + i
            if view is None:
                continue
            if index is not None and found[i]:
                first = found[i][0]
                reasons[at] = "contaminated: exact match" if first.kind == "exact" else f"contaminated: {first.kind} overlap"
                for match in found[i]:
                    text = index.texts[match.eval_index]
                    matches.append({
                        "split": split, "source": source_names[batch["_source"][i]], "row": batch["_index"][i],
                        "prompt_id": batch["prompt_id"][i] if "prompt_id" in batch else None,
                        "eval_source": text.source, "question_id": text.question_id, "turn": text.turn,
                        "match": match.kind, "overlap": round(match.overlap, 4),
                    })
                continue
            reasons[at] = filter_reason(view, kind, filters, disclaimer)
            prompts[at] = normalize(view.prompt)
            identities[at] = view.identity
            given = batch["prompt_id"][i] if "prompt_id" in batch else None
            ids[at] = str(given) if given not in (None, "") else None
        position += size
    sources = rows["_source"][:]  # [:]: a list; a lazy column reads one row per index
    kept = _deduplicate(rows, deduplicate, reasons, prompts, identities, ids, test_prompts, sources)
    duplicates = Counter((sources[at], kind) for at, kind in kept)
    removed: Counter = Counter()
    keep: list[int] = []
    for at, reason in enumerate(reasons):
        if reason is None:
            keep.append(at)
        else:
            removed[(sources[at], f"removed: {reason}")] += 1
    kept_prompts = {prompts[at] for at in keep if prompts[at] is not None}
    out = rows if len(keep) == n else rows.select(keep)
    return CleanedSplit(out, removed, matches, kept_prompts, duplicates)


def _deduplicate(rows, mode, reasons, prompts, identities, ids, test_prompts, sources) -> list[tuple[int, str]]:
    """Set the reason of each duplicate the mode removes; return (row, kind) for each one it keeps and counts."""
    # Decisions in mixture order (source position, then row index), whatever order the split is in.
    indices = rows["_index"][:]
    order = sorted(range(len(rows)), key=lambda at: (sources[at], indices[at]))
    removes, expected = _REMOVES[mode], _EXPECTED.get(mode, frozenset())
    kept: list[tuple[int, str]] = []
    seen_rows: set[int] = set()
    seen_prompts: set[str] = set()
    seen_ids: dict[str, str] = {}
    for at in order:
        if reasons[at] is not None or prompts[at] is None:
            continue
        prompt, given = prompts[at], ids[at]
        kind = None
        if mode != "off" and test_prompts and prompt in test_prompts:
            reasons[at] = "prompt in test split"
        elif identities[at] in seen_rows:
            kind = "duplicate row"
        elif given is not None and given in seen_ids:
            kind = "duplicate prompt_id" if seen_ids[given] != prompt else "repeated prompt_id"
        elif prompt in seen_prompts:
            kind = "duplicate prompt"
        if kind in removes:  # a repeated id with its own prompt is, once removed, a duplicate prompt
            reasons[at] = "duplicate prompt" if kind == "repeated prompt_id" else kind
        elif kind is not None and kind not in expected:
            kept.append((at, kind))
        if reasons[at] is None:
            seen_rows.add(identities[at])
            seen_prompts.add(prompt)
            if given is not None:
                seen_ids.setdefault(given, prompt)
    return kept
