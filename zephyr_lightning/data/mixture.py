"""Dataset mixtures as the alignment handbook writes them: several sources, each with a share.

``data.mixture`` maps each source (a hub name, a local file or folder, or ``builtin:<name>``) to a fraction
of its train split or a row count; the long form of an entry sets more::

    mixture:
      HuggingFaceH4/ultrachat_200k: 0.5           # half of train_sft, drawn at random (seeded)
      my_org/my_chats: 2000                       # 2000 rows of its train split
      ./extra/sharegpt.jsonl:                     # a local file in another schema
        fraction: 1.0
        columns: {conversations: messages}

or, on the command line (Hydra's grammar takes ``builtin:`` only as a value), a list of entries:
``'data.mixture=[{path: "builtin:tiny_chat", fraction: 0.5}, {path: my_org/my_chats, rows: 2000}]'``.

Semantics (the handbook's ``mix_datasets``, except where noted):

- the train split of each source contributes ``fraction`` of its rows (``int(fraction * rows)``, as the
  handbook rounds) or ``rows`` rows. The handbook takes the *first* rows; here they are a random sample
  seeded by ``data.seed`` and the source, so a sorted file still gives a fair sample;
- test splits are concatenated whole (the handbook never subsamples them, so models compare on the same
  rows), unless an entry limits its own with ``test_rows``. A source that is a single local file has no
  test split (a folder with ``train.jsonl`` and ``test.jsonl`` has both);
- with more than one source the result is shuffled (seeded); a single source keeps its file order;
- each source's rows are converted to the kind's schema (`zephyr_lightning.data.schema`) and checked
  as a single source's are.

``data.path`` is a mixture of one: ``{path: 1.0}``.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import datasets
import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from zephyr_lightning.arguments import NonNegativeInt, PositiveInt, describe_error
from zephyr_lightning.data.schema import (
    PAYLOAD,
    Kind,
    RowConverter,
    SchemaError,
    plan_conversion,
    rename_columns,
)
from zephyr_lightning.data.sources import (
    BadLine,
    DataError,
    RowLines,
    load_split_report,
    resolve_path,
    split_file,
)

log = logging.getLogger(__name__)


class MixtureSource(BaseModel):
    """One source of a mixture.

    Args:
        path: hub name, local file or folder (``<split>.jsonl`` / ``.json`` / ``.parquet`` inside), or
            ``builtin:<name>``.
        fraction: the share of its train split to take (0 takes none: a source for its test split only).
        rows: how many rows of its train split to take (instead of ``fraction``).
        test_rows: at most this many rows of its test split (default all; 0: none).
        train_split, test_split: its split names (default the DataModule's ``train_split`` / ``val_split``).
        name: the hub configuration name.
        columns: renames its columns to the ones read (``{conversations: messages}``); see
            `zephyr_lightning.data.schema`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Annotated[str, Field(min_length=1)]
    fraction: Annotated[float, Field(ge=0, le=1)] | None = None
    rows: PositiveInt | None = None
    test_rows: NonNegativeInt | None = None
    train_split: str | None = None
    test_split: str | None = None
    name: str | None = None
    columns: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_share(self) -> MixtureSource:
        if self.fraction is not None and self.rows is not None:
            raise ValueError("give fraction or rows, not both")
        return self

    @property
    def share(self) -> str:
        return f"{self.rows} rows" if self.rows is not None else f"fraction {self.fraction if self.fraction is not None else 1.0:g}"

    def describe(self) -> dict[str, Any]:
        """The entry as data_summary.json records it (unset fields left out)."""
        return self.model_dump(exclude_none=True, exclude_defaults=True) | {"path": self.path}


def _entry(path: Any, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        raise ValueError(f"source {path!r}: {value!r} is not a fraction or a row count")
    if isinstance(value, (int, float)):
        if value <= 1:
            return {"path": path, "fraction": value}
        if value != int(value):
            raise ValueError(f"source {path!r}: {value!r} is neither a fraction (<= 1) nor a whole row count")
        return {"path": path, "rows": int(value)}
    if isinstance(value, Mapping):
        if "path" in value and value["path"] != path:
            raise ValueError(f"source {path!r}: its entry names another path {value['path']!r}")
        return {**value, "path": path}
    raise ValueError(f"source {path!r}: expected a fraction, a row count or an entry, got {value!r}")


def parse_mixture(value: Any) -> tuple[MixtureSource, ...]:
    """``data.mixture`` as `MixtureSource` entries: a mapping source -> fraction (<= 1), row count (> 1) or
    entry, or a list of entries (or paths); None is no mixture. Errors name the source."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        raw = [_entry(path, item) for path, item in value.items()]
    elif isinstance(value, Sequence) and not isinstance(value, str):
        raw = [{"path": item} if isinstance(item, str) else item for item in value]
    else:
        raise ValueError(f"expected a mapping of sources or a list of entries, got {type(value).__name__}")
    if not raw:
        raise ValueError("names no source")
    sources: list[MixtureSource] = []
    for item in raw:
        if isinstance(item, MixtureSource):
            sources.append(item)
            continue
        if not isinstance(item, Mapping) or "path" not in item:
            raise ValueError(f"each entry needs a path, got {item!r}")
        try:
            sources.append(MixtureSource.model_validate(dict(item)))
        except ValidationError as err:
            problems = []
            for error in err.errors():
                where = ".".join(str(part) for part in error.get("loc", ()))
                shown = f"{where}={error.get('input')!r}: " if where else ""
                problems.append(shown + describe_error({**error, "loc": ()}))
            raise ValueError(f"source {item['path']!r}: " + "; ".join(problems)) from None
    seen: set[tuple[str, str | None, str | None]] = set()
    for source in sources:
        key = (source.path, source.name, source.train_split)
        if key in seen:
            raise ValueError(f"source {source.path!r} is listed twice")
        seen.add(key)
    return tuple(sources)


def _check_mixture(value: Any) -> Any:
    parse_mixture(value)
    return value


# The declared type of a ``mixture`` argument: checked by `parse_mixture`, whose errors name the source.
MixtureSpec = Annotated[Any, AfterValidator(_check_mixture)]


def sample_indices(n: int, k: int, seed: int, key: str) -> list[int] | None:
    """``k`` of ``n`` row indices drawn without replacement, in file order; None for all of them. Seeded by
    ``seed`` and ``key`` (the source), so one source's sample does not depend on the others."""
    if k >= n:
        return None
    digest = int(hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()[:16], 16)
    return sorted(np.random.default_rng(digest).choice(n, size=k, replace=False).tolist())


@dataclass
class SourcePart:
    """One source's share of one split."""

    split: str | None
    available: int = 0  # rows in the source's split
    taken: int = 0  # rows drawn from it
    file: Path | None = None  # the local file read, if any
    lines: RowLines | None = None  # its rows' file lines (a local JSON-lines file), for error messages


@dataclass
class MixedSplit:
    """One split of a mixture: the rows (with ``_source``, the source's position, and ``_index``, the row's
    index in its source's split), and per source what was read and what conversion or reading left out."""

    rows: datasets.Dataset
    sources: tuple[MixtureSource, ...]
    parts: list[SourcePart]
    # (source position, status): rows the conversion removed ("removed: ...") or found bad ("bad: ...").
    statuses: Counter = field(default_factory=Counter)
    unreadable: list[tuple[int, BadLine]] = field(default_factory=list)


def _align(parts: list[datasets.Dataset], labels: list[str], kind: Kind) -> list[datasets.Dataset]:
    """Cast every part to the first one's column types where that loses nothing (``prompt_id`` numbers to
    text), or refuse naming the sources whose conversations differ (text that is a number is a bad row of
    its own source, not something to turn into text)."""
    target = parts[0].features
    out = [parts[0]]
    for part, label in zip(parts[1:], labels[1:]):
        differing = [c for c in target if part.features.get(c) != target[c]]
        if any(c in PAYLOAD[kind] for c in differing):
            raise SchemaError(
                f"sources {labels[0]!r} and {label!r} cannot be mixed: column(s) {differing} differ in type "
                f"({', '.join(f'{c}: {target[c]} vs {part.features.get(c)}' for c in differing)})"
            )
        out.append(part.cast(target) if differing else part)
    return out


def _empty(mixed: MixedSplit) -> MixedSplit:
    mixed.rows = datasets.Dataset.from_dict({"_source": [], "_index": []})
    return mixed


def load_mixed_split(
    sources: Sequence[MixtureSource],
    *,
    test: bool,
    kind: Kind,
    default_split: str | None,
    seed: int,
    on_bad_row: str = "error",
    cache_dir: str | None = None,
    limit: int | None = None,
    field: str | None = None,
    files_have_test_rows: bool = False,
) -> MixedSplit | None:
    """The train (``test=False``) or test split of a mixture (module docstring); None when no source has one.

    ``default_split`` is the split of sources that name none; ``limit`` keeps the first N rows of the
    result (quick runs); ``field`` is the prompt column of ``kind="prompts"``. A source that is one local
    file is a train split only (the same rows would be validated on), unless ``files_have_test_rows``
    (``data.path=file.jsonl``, which has always validated on its own file).
    """
    parts: list[SourcePart] = []
    loaded: list[datasets.Dataset] = []
    labels: list[str] = []
    mixed = MixedSplit(rows=None, sources=tuple(sources), parts=parts)  # type: ignore[arg-type]
    multi = len(sources) > 1
    attempted = False  # some source has the split
    for position, source in enumerate(sources):
        split = (source.test_split if test else source.train_split) or default_split
        part = SourcePart(split)
        parts.append(part)
        if split is None or (test and source.test_rows == 0) or (not test and source.fraction == 0):
            continue
        if test and not files_have_test_rows and Path(resolve_path(source.path)).is_file():
            continue
        where = f"{source.path} [{split}]"
        attempted = True
        part.file = split_file(source.path, split)
        report = load_split_report(source.path, split, name=source.name, cache_dir=cache_dir, on_bad_line=on_bad_row)
        part.lines = report.lines
        for line in report.bad_lines:
            mixed.statuses[(position, f"bad: {line.kind}")] += 1
            mixed.unreadable.append((position, line))
        if len(report.rows) == 0 and not report.bad_lines:
            raise DataError(f"{where}: the split has no rows (an empty file?)")
        if len(report.rows) == 0:  # nothing readable (every line skipped): counted above, no schema to check
            continue
        rows = rename_columns(report.rows, source.columns, where)
        plan = plan_conversion(rows.features, kind, where, field)
        part.available = len(rows)
        if test:
            wanted = part.available if source.test_rows is None else min(source.test_rows, part.available)
        elif source.rows is not None:
            if source.rows > part.available:
                raise SchemaError(f"{where}: rows={source.rows}, but the split has {part.available} rows")
            wanted = source.rows
        else:
            wanted = int((1.0 if source.fraction is None else source.fraction) * part.available)
        rows = rows.add_column("_index", list(range(part.available)))
        chosen = sample_indices(part.available, wanted, seed, f"{source.path}\0{split}")
        if chosen is not None:
            rows = rows.select(chosen)
        part.taken = len(rows)
        if plan.converts or multi:
            converter = RowConverter(kind, plan, seed=seed, on_bad_row=on_bad_row, where=where)
            rows = rows.map(converter, batched=True, remove_columns=rows.column_names, desc=f"reading {where}")
            for status, n in Counter(rows["_status"][:]).items():
                if status:
                    mixed.statuses[(position, status)] += n
            rows = rows.filter(lambda s: not s, input_columns="_status").remove_columns("_status")
        if len(rows) or not loaded:  # an emptied source adds nothing (and its column types may be unknown)
            loaded.append(rows.add_column("_source", [position] * len(rows)))
            labels.append(source.path)
    if not loaded:
        # No source has the split (None), or every one that has it was unreadable or emptied: no rows.
        return _empty(mixed) if attempted else None
    rows = loaded[0] if len(loaded) == 1 else datasets.concatenate_datasets(_align(loaded, labels, kind))
    if multi:
        rows = rows.shuffle(seed=seed)
    if limit is not None and limit < len(rows):
        rows = rows.select(range(limit))
    mixed.rows = rows
    return mixed
