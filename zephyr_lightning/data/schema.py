"""What a source's rows must look like for each kind of data, and the schemas converted to it.

Three kinds share one loader (`zephyr_lightning.data.mixture`):

- ``sft`` (dSFT dialogues, `SFTDataModule`): ``messages``, a list of ``{role, content}`` turns;
- ``prefs`` (preference pairs, `PreferenceDataModule`): ``chosen`` and ``rejected``, full conversations
  that end with the assistant's answer;
- ``prompts`` (AIF prompts, `zephyr_lightning.aif.load_prompts`): ``prompt``, one text.

Each may carry ``prompt`` (the first user turn's text) and ``prompt_id`` (sha256 of the prompt when absent).

A source's own column names are first renamed by its ``columns`` mapping (``{conversations: messages}``);
then these schemas are converted:

| kind | the source has | becomes |
| --- | --- | --- |
| sft | ``messages`` or ``conversations`` of ShareGPT turns (``{from, value}``, from human/gpt/system) | ``messages`` of ``{role, content}`` |
| sft | ``conversations`` of ``{role, content}`` | ``messages`` |
| sft | ``chosen`` (a preference data set) | ``messages`` = ``chosen`` (how ultrafeedback_binarized made its SFT splits) |
| sft, prefs | UltraFeedback's ``instruction`` + ``completions`` (with ``response`` and ``overall_score``) | the pair binarized the Zephyr way (`zephyr_lightning.aif.binarize`); sft takes its ``chosen`` |
| prefs | ``prompt`` text + ``chosen`` / ``rejected`` texts | one user turn + one assistant turn each |
| prefs | ``prompt`` messages + ``chosen`` / ``rejected`` messages (TRL's conversational format) | ``prompt + chosen`` / ``prompt + rejected`` |
| prompts | ``instruction``, ``prompt`` or ``question`` text | ``prompt`` |
| prompts | ``messages`` or ``conversations`` | ``prompt`` = the first user turn |

Anything else is refused, naming the source, its split and its columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import datasets

from zephyr_lightning.data.sources import BadRowError, prompt_id_of

Kind = Literal["sft", "prefs", "prompts"]
DESCRIBED = {"sft": "dSFT dialogues", "prefs": "preference pairs", "prompts": "prompts"}
PAYLOAD: dict[str, tuple[str, ...]] = {"sft": ("messages",), "prefs": ("chosen", "rejected"), "prompts": ("prompt",)}
# Column names a `columns` mapping may rename a source's columns to.
TARGETS = ("messages", "conversations", "chosen", "rejected", "prompt", "prompt_id", "instruction", "question",
           "completions")
PROMPT_COLUMNS = ("instruction", "prompt", "question")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant",
                  "bing": "assistant", "model": "assistant", "assistant": "assistant", "system": "system"}


class SchemaError(ValueError):
    """A source whose columns are neither the kind's schema nor one converted to it; or a bad mapping."""


def _struct_fields(feature: Any) -> set[str] | None:
    """The field names of a list-of-structs feature (a message list), else None."""
    inner = feature[0] if isinstance(feature, list) and feature else getattr(feature, "feature", None)
    return set(inner) if isinstance(inner, dict) else None


def _is_text(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _is_messages(feature: Any) -> bool:
    fields = _struct_fields(feature)
    return fields is not None and ({"role", "content"} <= fields or {"from", "value"} <= fields)


def _is_sharegpt(feature: Any) -> bool:
    fields = _struct_fields(feature) or set()
    return {"from", "value"} <= fields and not {"role", "content"} <= fields


@dataclass(frozen=True)
class Plan:
    """How one source's rows become the kind's schema: ``how`` names the conversion, ``column`` its input."""

    how: str  # as_is | messages | sharegpt | binarize | texts | prompt_messages | text | first_user
    column: str | None = None

    @property
    def converts(self) -> bool:
        return self.how != "as_is"


def rename_columns(rows: datasets.Dataset, columns: dict[str, str], where: str) -> datasets.Dataset:
    """Apply a source's ``columns`` mapping, refusing (by name) a column it lacks or a target it already has."""
    present = rows.column_names
    for old, new in columns.items():
        if old not in present:
            raise SchemaError(f"{where}: columns maps {old!r} to {new!r}, but the source has no column {old!r} "
                              f"(its columns: {present})")
        if new not in TARGETS:
            raise SchemaError(f"{where}: columns maps {old!r} to {new!r}, which is not a column this library reads "
                              f"(one of {list(TARGETS)})")
        if new in present and new not in columns:
            raise SchemaError(f"{where}: columns maps {old!r} to {new!r}, but the source already has a {new!r} column")
    return rows.rename_columns(columns) if columns else rows


def plan_conversion(features: datasets.Features, kind: Kind, where: str, field: str | None = None) -> Plan:
    """The conversion that turns rows with ``features`` into ``kind``'s schema (module docstring), or a
    `SchemaError` naming ``where`` and what is there."""
    have = dict(features)
    if kind == "sft":
        if "messages" in have:
            return Plan("sharegpt", "messages") if _is_sharegpt(have["messages"]) else Plan("as_is")
        if "conversations" in have and _is_messages(have["conversations"]):
            return Plan("sharegpt" if _is_sharegpt(have["conversations"]) else "messages", "conversations")
        if "chosen" in have and _is_messages(have["chosen"]):
            return Plan("messages", "chosen")
        if "completions" in have:
            return Plan("binarize")
    elif kind == "prefs":
        if "chosen" in have and "rejected" in have:
            pair = (have["chosen"], have["rejected"])
            if all(_is_text(f) for f in pair):
                if "prompt" in have and _is_text(have["prompt"]):
                    return Plan("texts")
                raise SchemaError(f"{where}: 'chosen' and 'rejected' are texts, so a 'prompt' text column is needed "
                                  f"to make conversations of them (its columns: {list(have)})")
            if "prompt" in have and _is_messages(have["prompt"]):
                return Plan("prompt_messages")
            return Plan("as_is")
        if "completions" in have:
            return Plan("binarize")
    else:
        if field is not None:
            if field not in have:
                raise SchemaError(f"{where}: field={field!r}: no such column (its columns: {list(have)})")
            return Plan("first_user" if _is_messages(have[field]) else "text", field)
        for column in PROMPT_COLUMNS:
            if column in have and _is_text(have[column]):
                return Plan("text", column)
        for column in ("messages", "conversations"):
            if column in have and _is_messages(have[column]):
                return Plan("first_user", column)
    expected = {
        "sft": "'messages' (or ShareGPT 'conversations', a preference 'chosen', UltraFeedback 'completions')",
        "prefs": "'chosen' and 'rejected' (or UltraFeedback 'instruction' + 'completions')",
        "prompts": f"one of {list(PROMPT_COLUMNS)} (or 'messages' / 'conversations')",
    }[kind]
    raise SchemaError(f"{where}: cannot read its rows as {DESCRIBED[kind]}: expected {expected}; its columns are "
                      f"{list(have)}. Map yours with columns: {{your_column: messages}} (see docs/data_errors.md)")


def _turns(messages: Any, sharegpt: bool) -> Any:
    if not sharegpt or not isinstance(messages, list):
        return messages
    out = []
    for turn in messages:
        if isinstance(turn, dict) and "from" in turn:
            role = turn.get("from")
            out.append({"role": SHAREGPT_ROLES.get(str(role).lower(), role), "content": turn.get("value")})
        else:
            out.append(turn)
    return out


def _role_content(messages: Any) -> Any:
    """Only the role and content of each turn: sources whose turns carry other fields then concatenate."""
    if not isinstance(messages, list):
        return messages
    return [{"role": t.get("role"), "content": t.get("content")} if isinstance(t, dict) else t for t in messages]


def first_user_turn(messages: Any) -> str | None:
    """The content of the first user turn of a message list (None when there is none or it is not text)."""
    if isinstance(messages, list):
        for turn in messages:
            if isinstance(turn, dict) and turn.get("role") == "user":
                content = turn.get("content")
                return content if isinstance(content, str) else None
    return None


class RowConverter:
    """The ``datasets.map`` function of a `Plan`: a batch of a source's rows -> the kind's columns
    (``prompt`` and ``prompt_id`` always, filled in when missing) plus ``_index`` and ``_status``
    (``""``, ``"removed: <why>"`` for a row the conversion cannot make, e.g. an UltraFeedback row whose
    scores all tie, or ``"bad: <why>"`` with ``on_bad_row=skip``)."""

    def __init__(self, kind: Kind, plan: Plan, *, seed: int, on_bad_row: str, where: str) -> None:
        self.kind = kind
        self.plan = plan
        self.seed = seed
        self.on_bad_row = on_bad_row
        self.where = where

    @property
    def output_columns(self) -> tuple[str, ...]:
        payload = PAYLOAD[self.kind] if self.kind != "prompts" else ()
        return (*payload, "prompt", "prompt_id", "_index", "_status")

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {column: [] for column in self.output_columns}
        for values in zip(*batch.values()):
            row = dict(zip(batch, values))
            index = row.get("_index")
            try:
                converted, status = self.convert(row)
            except BadRowError as err:
                if self.on_bad_row == "error":
                    raise
                converted, status = {}, f"bad: {str(err).split(': ', 1)[-1]}"
            if status:
                converted = {column: [] for column in PAYLOAD[self.kind]} if self.kind != "prompts" else {}
                converted.update(prompt="", prompt_id="")
            for column in self.output_columns[:-2]:
                out[column].append(converted[column])
            out["_index"].append(index)
            out["_status"].append(status)
        return out

    def convert(self, row: dict[str, Any]) -> tuple[dict[str, Any], str]:
        how, column = self.plan.how, self.plan.column
        where = f"{self.where} row {row.get('_index')}"
        if how == "binarize":
            from zephyr_lightning.aif.binarize import binarize_row  # aif builds on data, not the other way

            pair = binarize_row(row, seed=self.seed, where=where)
            if isinstance(pair, str):
                return {}, f"removed: binarize: {pair}"
            if self.kind == "sft":
                pair = {**pair, "messages": pair["chosen"]}
            return {k: pair[k] for k in (*PAYLOAD[self.kind], "prompt", "prompt_id")}, ""
        out: dict[str, Any] = {}
        if self.kind == "sft":
            source = row.get(column or "messages")
            out["messages"] = _role_content(_turns(source, how == "sharegpt"))
            first = first_user_turn(out["messages"])
        elif self.kind == "prefs":
            if how == "texts":
                user = [{"role": "user", "content": row.get("prompt")}]
                out["chosen"] = [*user, {"role": "assistant", "content": row.get("chosen")}]
                out["rejected"] = [*user, {"role": "assistant", "content": row.get("rejected")}]
            elif how == "prompt_messages":
                head = _role_content(row.get("prompt")) or []
                out["chosen"] = [*head, *(_role_content(row.get("chosen")) or [])]
                out["rejected"] = [*head, *(_role_content(row.get("rejected")) or [])]
            else:
                out["chosen"], out["rejected"] = _role_content(row.get("chosen")), _role_content(row.get("rejected"))
            first = first_user_turn(out["chosen"])
        else:
            value = row.get(column or "prompt")
            first = first_user_turn(value) if how == "first_user" else value
            if not isinstance(first, str) or not first.strip():
                raise BadRowError(f"{where}: {column!r} is empty or not text ({value!r:.60})")
        prompt = row.get("prompt") if self.kind != "prompts" else first
        if not isinstance(prompt, str) or not prompt:
            prompt = first if isinstance(first, str) else ""
        out["prompt"] = prompt
        given = row.get("prompt_id")
        out["prompt_id"] = str(given) if given not in (None, "") and self.kind != "prompts" else prompt_id_of(prompt)
        return out, ""
