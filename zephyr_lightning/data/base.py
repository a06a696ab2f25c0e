"""What the SFT and preference DataModules share: loading splits (one source or a mixture,
`zephyr_lightning.data.mixture`), removing filtered, duplicate and contaminated rows
(`zephyr_lightning.data.cleaning`), tokenizing rows with `datasets.map` (cached, optionally in parallel),
counting and skipping bad or over-long rows, and the loaders (the training loader resumes mid-epoch exactly;
see `zephyr_lightning.data.resumable`)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, get_args

import datasets
import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from zephyr_lightning.arguments import NonNegativeInt, PositiveInt, check_arguments, cross_check
from zephyr_lightning.chat_format import AddBos, ChatFormat
from zephyr_lightning.data.cleaning import (
    DEFAULT_FILTERS,
    CleanedSplit,
    Deduplicate,
    Filters,
    clean_split,
    duplicates_note,
)
from zephyr_lightning.data.decontamination import Decontamination, EvalIndex
from zephyr_lightning.data.mixture import (
    MixedSplit,
    MixtureSource,
    MixtureSpec,
    load_mixed_split,
    parse_mixture,
)
from zephyr_lightning.data.resumable import ResumableDataLoader
from zephyr_lightning.data.schema import Kind
from zephyr_lightning.data.sources import BadLine, BadRowError, DataError, RowLines, prompt_id_of
from zephyr_lightning.models import ModelSpec, load_tokenizer

log = logging.getLogger(__name__)

# `error` makes an over-long row a bad row, so that `on_bad_row` decides: stop naming it, or skip it.
OnTooLong = Literal["truncate", "drop", "error"]
OnBadRow = Literal["error", "skip"]
ON_TOO_LONG: tuple[str, ...] = get_args(OnTooLong)
ON_BAD_ROW: tuple[str, ...] = get_args(OnBadRow)
KEPT = ("ok", "truncated")


def row_label(source: str, split: str, row: dict[str, Any], index: int, lines: RowLines | None = None) -> str:
    """How errors name a row: ``file:line`` for a row of a local JSON-lines file, else the source and its
    index in the split; then its prompt_id when it has one."""
    pid = row.get("prompt_id")
    line = lines.line(index) if lines is not None else None
    where = f"{lines.file}:{line} [{split}]" if line is not None else f"{source} [{split}]"
    if pid:
        return f"{where} prompt_id={pid}"
    return where if line is not None else f"{where} row {index}"


class RowTokenizer:
    """Base of the ``datasets.map`` functions: turns a batch of rows into token columns plus a
    ``status`` column (``ok``, ``truncated``, ``dropped: ...`` or ``bad: ...``).

    A class rather than a closure so that ``datasets`` can hash it for its cache and pickle it for
    ``num_proc`` workers. Subclasses set ``columns`` (``prompt_id`` among them) and implement
    `tokenize_row`.
    """

    columns: tuple[str, ...] = ()
    # (source, split, file lines) of each mixture source, by the ``_source`` column of a mixed split: errors
    # name a row's own source, and for a local JSON-lines file its file line. Empty: every row is of
    # ``source`` [``split``].
    origins: tuple[tuple[str, str, RowLines | None], ...] = ()

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        source: str,
        split: str,
        on_bad_row: str,
        on_too_long: str,
        chat_format: ChatFormat,
    ) -> None:
        self.tokenizer = tokenizer
        self.source = source
        self.split = split
        self.on_bad_row = on_bad_row
        self.on_too_long = on_too_long
        self.chat_format = chat_format

    def tokenize_row(self, row: dict[str, Any], where: str) -> tuple[dict[str, Any], str]:
        raise NotImplementedError

    @staticmethod
    def prompt_id(row: dict[str, Any]) -> str:
        """The row's ``prompt_id``, or the sha256 of its ``prompt`` when it has none."""
        return str(row.get("prompt_id") or prompt_id_of(str(row.get("prompt", ""))))

    def placeholder(self, row: dict[str, Any]) -> dict[str, Any]:
        """Column values for a row that is skipped (filtered out after counting): empty, but named."""
        return {**{column: [] for column in self.columns}, "prompt_id": self.prompt_id(row)}

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {column: [] for column in (*self.columns, "status")}
        mixed = "_source" in batch  # a mixed split: keep each row's source, for the counts per source
        if mixed:
            out["_source"] = []
        for values, index in zip(zip(*batch.values()), indices):
            row = dict(zip(batch, values))
            position, index = row.pop("_source", None), row.pop("_index", index)
            source, split, lines = (self.origins[position] if position is not None and self.origins
                                    else (self.source, self.split, None))
            where = row_label(source, split, row, index, lines)
            try:
                if all(value is None for value in row.values()):
                    raise BadRowError(f"{where}: the row is empty (every column is null: a line `null` or `{{}}`)")
                values_out, status = self.tokenize_row(row, where)
            except BadRowError as err:
                if self.on_bad_row == "error":
                    raise
                values_out, status = self.placeholder(row), f"bad: {str(err).split(': ', 1)[-1]}"
            for column in self.columns:
                out[column].append(values_out[column])
            out["status"].append(status)
            if mixed:
                out["_source"].append(position)
        return out


@dataclass
class PreparedSplit:
    """A split before tokenization: as mixed (`MixedSplit`) and as cleaned (`CleanedSplit`)."""

    mixed: MixedSplit
    cleaned: CleanedSplit


def _path_or_mixture(arguments: dict) -> tuple[str, str] | None:
    path, mixture = arguments.get("path"), arguments.get("mixture")
    if path is None and mixture is None:
        return "path", "give data.path (one source) or data.mixture (several)"
    if path is not None and mixture is not None:
        return "mixture", f"replaces data.path; set data.path=null (it is {path!r})"
    if mixture is not None and arguments.get("name") is not None:
        return "name", "is the hub configuration of data.path; give each mixture entry its own name"
    return None


@cross_check(_path_or_mixture)
class ChatDataModule(L.LightningDataModule):
    """Base DataModule: a tokenizer, named splits of one source or a mixture, cleaning, and
    `RowTokenizer`-made token columns.

    Subclasses set ``kind`` (`zephyr_lightning.data.schema`) and ``row_tokenizer_class``, implement
    `tokenizer_options` and set ``self.collator``.

    Args (shared by both DataModules; the others are in their docstrings):
        mixture: several sources, each with a fraction or a row count (`zephyr_lightning.data.mixture`);
            replaces ``path``.
        deduplicate: ``prompt`` (one row per normalised prompt: duplicate rows, repeated prompt_ids and
            prompts repeated within or across sources are removed), ``row`` (only duplicate rows: data with
            several pairs per prompt) or ``off``; with ``prompt`` and ``row``, training rows whose prompt is a
            test prompt are removed too (`zephyr_lightning.data.cleaning`).
        decontamination: evaluation questions to keep out of the training split
            (`zephyr_lightning.data.decontamination.Decontamination`); None: no check.
        filters: the named row filters (`zephyr_lightning.data.cleaning.Filters`).
    """

    kind: Kind = "sft"
    row_tokenizer_class: type[RowTokenizer] = RowTokenizer

    def __init__(
        self,
        path: str | None,
        tokenizer: PreTrainedTokenizerBase | ModelSpec | str,
        *,
        train_split: str,
        val_split: str | None,
        mixture: MixtureSpec = None,
        deduplicate: Deduplicate = "prompt",
        decontamination: Decontamination | None = None,
        filters: Filters = DEFAULT_FILTERS,
        on_too_long: OnTooLong = "truncate",
        on_bad_row: OnBadRow = "error",
        batch_size: PositiveInt = 8,
        eval_batch_size: PositiveInt | None = None,
        num_workers: NonNegativeInt = 0,
        num_proc: PositiveInt | None = None,
        max_train_samples: PositiveInt | None = None,
        max_val_samples: PositiveInt | None = None,
        name: str | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
        add_bos: AddBos = "auto",
        empty_system_turn: bool = False,
    ) -> None:
        check_arguments(ChatDataModule, locals(), prefix="data")
        super().__init__()
        self.path = path
        self.mixture = parse_mixture(mixture)
        self.sources = self.mixture or (MixtureSource(path=path, name=name),)
        self.deduplicate = deduplicate
        self.decontamination = Decontamination.model_validate(decontamination) if decontamination is not None else None
        self.filters = Filters.model_validate(filters)
        self.tokenizer = tokenizer if isinstance(tokenizer, PreTrainedTokenizerBase) else load_tokenizer(tokenizer)
        self.splits = {"train": train_split, "val": val_split}
        self.on_too_long = on_too_long
        self.on_bad_row = on_bad_row
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.num_proc = num_proc
        self.max_samples = {"train": max_train_samples, "val": max_val_samples}
        self.name = name
        self.cache_dir = cache_dir
        self.seed = seed
        self.chat_format = ChatFormat(add_bos, empty_system_turn)
        self.collator: Any = None
        self.datasets: dict[str, datasets.Dataset] = {}
        # Per split: how many rows were kept, truncated, dropped or skipped (and why).
        self.stats: dict[str, Counter] = {}
        # Per split: (source position, status) -> rows, over the sources of the mixture.
        self.source_stats: dict[str, Counter] = {}
        # Per split: lines of a local file that could not be read (skipped with on_bad_row=skip).
        self.unreadable: dict[str, list[BadLine]] = {}
        self._prepared_splits: dict[str, PreparedSplit | None] = {}
        self._eval_index: EvalIndex | None = None
        self._train_loader: ResumableDataLoader | None = None
        self._train_loader_state: dict[str, Any] | None = None

    def tokenizer_options(self) -> dict[str, Any]:
        """The kind's own `RowTokenizer` arguments (lengths, loss mask); the log line about kept and
        dropped rows names them too."""
        return {}

    def row_tokenizer(self, split: str) -> RowTokenizer:
        return self.row_tokenizer_class(
            self.tokenizer,
            source=self.source_label,
            split=split,
            on_bad_row=self.on_bad_row,
            on_too_long=self.on_too_long,
            chat_format=self.chat_format,
            **self.tokenizer_options(),
        )

    def describe_limits(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.tokenizer_options().items())

    @property
    def source_label(self) -> str:
        """How logs and errors name the data: the path, or the mixture's sources."""
        return self.path if not self.mixture else "mixture(" + ", ".join(s.path for s in self.sources) + ")"

    def eval_index(self) -> EvalIndex | None:
        """The evaluation prompts to decontaminate against (read once), or None."""
        if self.decontamination is not None and self._eval_index is None:
            self._eval_index = EvalIndex.from_config(self.decontamination)
            log.info("decontamination: %d evaluation turns from %s (%d-gram overlap >= %g, or exact)",
                     len(self._eval_index), [q.path for q in self.decontamination.questions],
                     self.decontamination.ngram, self.decontamination.threshold)
        return self._eval_index

    def prepared(self, stage: str) -> PreparedSplit | None:
        """A split mixed and cleaned, before tokenization (once per process: prepare_data, then setup)."""
        if stage not in self._prepared_splits:
            self._prepared_splits[stage] = self._prepare(stage)
        return self._prepared_splits[stage]

    def _prepare(self, stage: str) -> PreparedSplit | None:
        split = self.splits[stage]
        if split is None:
            return None
        test = stage == "val"
        mixed = load_mixed_split(
            self.sources, test=test, kind=self.kind, default_split=split, seed=self.seed,
            on_bad_row=self.on_bad_row, cache_dir=self.cache_dir, limit=self.max_samples[stage],
            files_have_test_rows=not self.mixture,
        )
        if mixed is None:
            if not test:
                raise DataError(f"{self.source_label}: no source gives training rows (a fraction of 0 for every one?)")
            return None
        test_prompts = None
        if not test and self.deduplicate != "off" and (val := self.prepared("val")) is not None:
            shared = {p.file for p in mixed.parts if p.file} & {p.file for p in val.mixed.parts if p.file}
            if shared:
                log.warning("%s is both a training and a validation file: validation measures training rows, and "
                            "training rows are not checked against the validation prompts",
                            ", ".join(sorted(map(str, shared))))
            else:
                test_prompts = val.cleaned.prompts
        cleaned = clean_split(
            mixed.rows, kind=self.kind, source_names=[s.path for s in self.sources], deduplicate=self.deduplicate,
            filters=self.filters, index=None if test else self.eval_index(), test_prompts=test_prompts, split=stage,
        )
        if kept := cleaned.duplicates_kept():
            log.warning("%s [%s]: %s", self.source_label, split, duplicates_note(kept, self.deduplicate))
        return PreparedSplit(mixed, cleaned)

    def _tokenized(self, stage: str) -> datasets.Dataset | None:
        prepared = self.prepared(stage)
        if prepared is None:
            return None
        raw = prepared.cleaned.rows
        split = self.splits[stage]
        tokenize = self.row_tokenizer(split)
        tokenize.origins = tuple((s.path, p.split or split, p.lines) for s, p in zip(self.sources, prepared.mixed.parts))
        if len(raw) == 0:
            return None
        return raw.map(
            tokenize,
            batched=True,
            with_indices=True,
            remove_columns=raw.column_names,
            num_proc=self.num_proc,
            desc=f"tokenizing {split}",
        )

    def prepare_data(self) -> None:
        # Runs on one process per node: fills the datasets cache that setup() then reads on every rank.
        for stage in ("train", "val"):
            self._tokenized(stage)

    def setup(self, stage: str | None = None) -> None:
        # fit needs both splits, validate only the validation split; None (direct use) both.
        for key in ("val",) if stage == "validate" else ("train", "val"):
            if key in self.datasets:
                continue
            prepared = self.prepared(key)
            if prepared is None:
                continue
            data = self._tokenized(key)
            per_source: Counter = Counter()
            if data is not None:
                per_source.update(zip(data["_source"][:], data["status"][:]))  # [:]: lists, not lazy columns
            per_source.update(prepared.mixed.statuses)  # unreadable lines and rows the conversion left out
            per_source.update(prepared.cleaned.removed)  # filtered, duplicate and contaminated rows
            statuses: Counter = Counter()
            for (_, status), n in per_source.items():
                statuses[status] += n
            self.stats[key] = statuses
            self.source_stats[key] = per_source
            self.unreadable[key] = [line for _, line in prepared.mixed.unreadable]
            kept = data.filter(lambda s: s in KEPT, input_columns="status") if data is not None else []
            if len(kept) == 0:
                reasons = ", ".join(f"{n} {status}" for status, n in statuses.most_common())
                raise DataError(f"{self.source_label} [{self.splits[key]}]: no usable rows; of {sum(statuses.values())} "
                                f"rows: {reasons}")
            self.datasets[key] = kept.remove_columns(["status", "_source"])
            self._log_stats(key, statuses)
        self.after_setup()

    def after_setup(self) -> None:
        """Hook for work on the tokenized splits (e.g. packing)."""

    def _log_stats(self, key: str, statuses: Counter) -> None:
        total = sum(statuses.values())
        summary = ", ".join(f"{n} {status}" for status, n in statuses.most_common() if status != "ok")
        limits = self.describe_limits()
        if self.mixture:
            for source, counts in zip(self.sources, self._per_source(key)):
                if counts["rows"] or counts["available"]:
                    removed = ", ".join(f"{n} {why}" for why, n in counts["removed"].items())
                    log.info("%s [%s] (%s): %d of %d rows taken, %d used%s", source.path, counts["split"],
                             source.share if key == "train" else "test split", counts["taken"], counts["available"],
                             counts["used"], f"; removed: {removed}" if removed else "")
        log.info(
            "%s [%s]: %d of %d rows used%s%s",
            self.source_label,
            self.splits[key],
            sum(statuses[s] for s in KEPT),
            total,
            f"; {summary}" if summary else "",
            f" ({limits})" if limits else "",
        )

    @staticmethod
    def _counts(statuses: Counter) -> dict[str, Any]:
        def by(prefix: str) -> dict[str, int]:
            return {s.split(": ", 1)[1]: n for s, n in statuses.items() if s.startswith(prefix) and n}

        return {
            "rows": sum(statuses.values()),
            "used": sum(statuses[s] for s in KEPT),
            "truncated": statuses["truncated"],
            "dropped": by("dropped: "),
            "skipped_bad": by("bad: "),
            "removed": by("removed: "),
        }

    def _per_source(self, key: str) -> list[dict[str, Any]]:
        """The counts of each mixture source in split ``key``."""
        stats = self.source_stats.get(key, Counter())
        prepared = self._prepared_splits.get(key)
        out = []
        for position, _ in enumerate(self.sources):
            part = prepared.mixed.parts[position] if prepared is not None else None
            statuses = Counter({status: n for (p, status), n in stats.items() if p == position})
            out.append({"split": part.split if part else None, "available": part.available if part else 0,
                        "taken": part.taken if part else 0, **self._counts(statuses)})
        return out

    def summary(self) -> dict[str, Any]:
        """What ``data_summary.json`` holds. Per split (``train``, ``val``): rows, used, truncated, dropped,
        skipped as bad and removed (each by reason), the unreadable lines of local files and the duplicates
        that ``deduplicate`` kept (by kind). With a mixture,
        ``mixture`` lists each source with its share and the same counts per split; then ``cleaning`` (the
        deduplication mode and filters) and, with decontamination, what it read and found."""
        out: dict[str, Any] = {}
        for key, statuses in self.stats.items():
            out[key] = {
                **({"source": self.path} if not self.mixture else {}),
                "split": self.splits[key],
                **self._counts(statuses),
                "unreadable_lines": [str(line) for line in self.unreadable.get(key, [])],
            }
            if (prepared := self._prepared_splits.get(key)) is not None:
                out[key]["duplicates_kept"] = prepared.cleaned.duplicates_kept()  # counted, not removed
        if self.mixture:
            out["mixture"] = [
                {**source.describe(), **{key: self._per_source(key)[position] for key in self.stats}}
                for position, source in enumerate(self.sources)
            ]
        out["cleaning"] = {"deduplicate": self.deduplicate, "filters": self.filters.model_dump()}
        if self.decontamination is not None:
            out["decontamination"] = self._decontamination_summary()
        return out

    def _decontamination_summary(self) -> dict[str, Any]:
        config = self.decontamination
        matches = self.contamination()
        prefix = "removed: contaminated: "
        removed = {s[len(prefix):]: n for s, n in self.stats.get("train", Counter()).items() if s.startswith(prefix)}
        found: dict[str, set[str]] = {}
        for match in matches:
            found.setdefault(match["eval_source"], set()).add(match["question_id"])
        index = self._eval_index
        return {
            "questions": [q.path + (f" [{q.split}]" if q.split != "train" else "") for q in config.questions],
            "evaluation_turns": len(index) if index is not None else 0,
            "ngram": config.ngram,
            "threshold": config.threshold,
            "removed": removed,
            "matched_question_ids": {src: sorted(ids, key=lambda q: (len(q), q)) for src, ids in found.items()},
            "details": "decontamination.jsonl",
        }

    def contamination(self) -> list[dict[str, Any]]:
        """Every training row that matched an evaluation turn, one record per (row, evaluation turn)."""
        prepared = self._prepared_splits.get("train")
        return list(prepared.cleaned.matches) if prepared is not None else []

    def reports(self) -> dict[str, list[dict[str, Any]]]:
        """Files for the run folder beside data_summary.json (`DataSummary` writes them): the
        decontamination matches, when decontamination is on."""
        return {"decontamination.jsonl": self.contamination()} if self.decontamination is not None else {}

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def state_dict(self) -> dict[str, Any]:
        # The training loader's position, saved with every checkpoint. Lightning also keeps the state of a
        # stateful loader itself, but applies it only to loaders created after the checkpoint is read, and
        # `trainer.estimated_stepping_batches` (the LR schedule's length) creates the loader before that.
        # A DataModule's state is read back first, so `train_dataloader` can apply it in time.
        if self._train_loader is None:
            return {}
        return {"train_loader": self._train_loader.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._train_loader_state = state_dict.get("train_loader")

    def train_dataloader(self) -> DataLoader:
        num_replicas, rank = self._world()
        loader = ResumableDataLoader(
            self.datasets["train"],
            batch_size=self.batch_size,
            seed=self.seed,
            shuffle=True,
            num_replicas=num_replicas,
            rank=rank,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
        if self._train_loader_state is not None:
            loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = None
        self._train_loader = loader
        return loader

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self.datasets:
            return []
        return DataLoader(
            self.datasets["val"],
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # Not the global generator (see ResumableDataLoader): validation must not shift dropout masks.
            generator=torch.Generator().manual_seed(self.seed),
        )
