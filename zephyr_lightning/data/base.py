"""What the SFT and preference DataModules share: loading splits, tokenizing rows with `datasets.map`
(cached, optionally in parallel), counting and skipping bad or over-long rows, and the loaders (the
training loader resumes mid-epoch exactly; see `zephyr_lightning.data.resumable`)."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Literal, get_args

import datasets
import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from zephyr_lightning.arguments import NonNegativeInt, PositiveInt, check_arguments
from zephyr_lightning.chat_format import AddBos, ChatFormat
from zephyr_lightning.data.resumable import ResumableDataLoader
from zephyr_lightning.data.sources import (
    BadLine,
    BadRowError,
    DataError,
    RowLines,
    load_split_report,
    prompt_id_of,
)
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
    # Set by the DataModule for a local JSON-lines file, so that errors name the file line of a row.
    lines: RowLines | None = None

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, *, source: str, split: str, on_bad_row: str, chat_format: ChatFormat
    ) -> None:
        self.tokenizer = tokenizer
        self.source = source
        self.split = split
        self.on_bad_row = on_bad_row
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
        for values, index in zip(zip(*batch.values()), indices):
            row = dict(zip(batch, values))
            where = row_label(self.source, self.split, row, index, self.lines)
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
        return out


class ChatDataModule(L.LightningDataModule):
    """Base DataModule: a tokenizer, named splits of a source, and `RowTokenizer`-made token columns.

    Subclasses implement `row_tokenizer` and set ``self.collator``.
    """

    def __init__(
        self,
        path: str,
        tokenizer: PreTrainedTokenizerBase | ModelSpec | str,
        *,
        train_split: str,
        val_split: str | None,
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
        # Per split: lines of a local file that could not be read (skipped with on_bad_row=skip).
        self.unreadable: dict[str, list[BadLine]] = {}
        self._train_loader: ResumableDataLoader | None = None
        self._train_loader_state: dict[str, Any] | None = None

    def row_tokenizer(self, split: str) -> RowTokenizer:
        raise NotImplementedError

    def describe_limits(self) -> str:
        """The length settings, for the log line about kept and dropped rows."""
        return ""

    def _tokenized(self, stage: str) -> datasets.Dataset | None:
        split = self.splits[stage]
        if split is None:
            return None
        loaded = load_split_report(
            self.path, split, name=self.name, cache_dir=self.cache_dir, on_bad_line=self.on_bad_row
        )
        self.unreadable[stage] = loaded.bad_lines
        raw = loaded.rows
        if len(raw) == 0:
            raise DataError(f"{self.path} [{split}]: the split has no rows")
        if self.max_samples[stage] is not None:
            raw = raw.select(range(min(self.max_samples[stage], len(raw))))
        tokenize = self.row_tokenizer(split)
        tokenize.lines = loaded.lines
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
            data = self._tokenized(key)
            if data is None:
                continue
            statuses = Counter(data["status"])
            for line in self.unreadable.get(key, []):
                statuses[f"bad: {line.kind}"] += 1
            self.stats[key] = statuses
            kept = data.filter(lambda s: s in KEPT, input_columns="status")
            if len(kept) == 0:
                reasons = ", ".join(f"{n} {status}" for status, n in statuses.most_common())
                raise DataError(f"{self.path} [{self.splits[key]}]: no usable rows; of {sum(statuses.values())} "
                                f"rows: {reasons}")
            self.datasets[key] = kept.remove_columns("status")
            self._log_stats(key, statuses)
        self.after_setup()

    def after_setup(self) -> None:
        """Hook for work on the tokenized splits (e.g. packing)."""

    def _log_stats(self, key: str, statuses: Counter) -> None:
        total = sum(statuses.values())
        summary = ", ".join(f"{n} {status}" for status, n in statuses.most_common() if status != "ok")
        limits = self.describe_limits()
        log.info(
            "%s [%s]: %d of %d rows used%s%s",
            self.path,
            self.splits[key],
            sum(statuses[s] for s in KEPT),
            total,
            f"; {summary}" if summary else "",
            f" ({limits})" if limits else "",
        )

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per split: rows read, used, truncated, dropped (by reason) and skipped as bad (by reason)."""
        out: dict[str, dict[str, Any]] = {}
        for key, statuses in self.stats.items():
            out[key] = {
                "source": self.path,
                "split": self.splits[key],
                "rows": sum(statuses.values()),
                "used": sum(statuses[s] for s in KEPT),
                "truncated": statuses["truncated"],
                "dropped": {s.split(": ", 1)[1]: n for s, n in statuses.items() if s.startswith("dropped: ")},
                "skipped_bad": {s.split(": ", 1)[1]: n for s, n in statuses.items() if s.startswith("bad: ")},
                "unreadable_lines": [str(line) for line in self.unreadable.get(key, [])],
            }
        return out

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
