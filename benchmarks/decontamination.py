"""Time decontamination at the scale of ultrachat_200k against MT-Bench + AlpacaEval (not a test).

    python benchmarks/decontamination.py                    # 200k rows, 1k questions, baseline on 20k rows
    python benchmarks/decontamination.py --full             # also the whole cleaning pass over a datasets.Dataset
    python benchmarks/decontamination.py --rows 20000       # quicker

Generated data (no download): words drawn from a 20k-word vocabulary with Zipf frequencies, so common
words are shared between training rows and evaluation prompts as in real text. A training row has 1-5 user
turns (the first 20-200 words, the others 5-60: about ultrachat_200k's shape, whose user text averages a few
hundred words a dialogue) and its assistant turns; evaluation prompts are 80 two-turn questions (MT-Bench's
count) and 920 one-turn instructions (about AlpacaEval's 805, rounded up), 8-80 words each. 100 rows carry
an evaluation prompt in other case (exact match) and 100 a copy with its last word changed inside a longer
user turn (13-gram overlap); the run checks that exactly those 200 rows are found, by both checks.

Reported, all in one process on the same rows:

- the time to index the evaluation prompts, and `EvalIndex.find` over every row (rows/s);
- the floor: only splitting the same texts into words (`zephyr_lightning.data.normalize.words`), which
  any word-level check must do;
- the baseline: the loop the alignment handbook's ``decontaminate_humaneval`` runs, every evaluation
  text tested as a normalised substring of every row (no index), on ``--baseline-rows`` rows;
- with ``--full``, the whole `clean_split` pass (filters, deduplication and decontamination, reading the
  rows from a `datasets.Dataset` as the DataModules do).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from zephyr_lightning.data.decontamination import EvalIndex, EvalText
from zephyr_lightning.data.normalize import words

VOCAB = 20_000
PLANTED_EXACT = 100
PLANTED_NGRAM = 100


class Generator:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.vocab = np.array([f"{self._word(i)}" for i in range(VOCAB)])
        weights = 1.0 / np.arange(1, VOCAB + 1) ** 1.05
        self.cdf = np.cumsum(weights / weights.sum())

    @staticmethod
    def _word(i: int) -> str:
        letters = "etaoinshrdlucmfwypvbgkqjxz"
        out = ""
        i += 1
        while i:
            i, r = divmod(i, 26)
            out += letters[r]
        return out

    def text(self, lo: int, hi: int) -> str:
        n = int(self.rng.integers(lo, hi + 1))
        picks = np.minimum(np.searchsorted(self.cdf, self.rng.random(n)), VOCAB - 1)
        return " ".join(self.vocab[picks])

    def questions(self, two_turn: int, one_turn: int) -> list[EvalText]:
        out = []
        for q in range(two_turn):
            out += [EvalText("mt_bench", str(q), 1, self.text(15, 80)), EvalText("mt_bench", str(q), 2, self.text(8, 30))]
        out += [EvalText("alpaca_eval", str(q), 1, self.text(8, 60)) for q in range(one_turn)]
        return out

    def row_texts(self) -> list[str]:
        turns = int(self.rng.integers(1, 6))
        return [self.text(20, 200)] + [self.text(5, 60) for _ in range(turns - 1)]


def plant(rows: list[list[str]], start: int, questions: list[EvalText], gen: Generator) -> dict[int, str]:
    """Put evaluation prompts into some rows of this batch (one row in 2000 of each kind); returns the
    planted rows' numbers and kinds."""
    planted = {}
    long_enough = [q for q in questions if len(q.text.split()) >= 30]
    for i in range(len(rows)):
        at = start + i
        if at % 2000 == 5:
            rows[i][0] = questions[(at // 2000) % len(questions)].text.upper() + "?"  # exact, once normalised
            planted[at] = "exact"
        elif at % 2000 == 1005:
            copy = long_enough[(at // 2000) % len(long_enough)].text.split()
            copy[-1] = "changed"  # no exact match; all 13-grams but the last intact
            rows[i][-1] = gen.text(5, 20) + " " + " ".join(copy) + " " + gen.text(5, 20)
            planted[at] = "13-gram"
    return planted


def batches(gen: Generator, total: int, batch: int, questions: list[EvalText]):
    made = 0
    while made < total:
        rows = [gen.row_texts() for _ in range(min(batch, total - made))]
        yield made, rows
        made += len(rows)


def substring_find(rows: list[list[str]], texts: list[str]) -> list[bool]:
    """The handbook's loop: is any normalised evaluation text a substring of the normalised row?"""
    out = []
    for row in rows:
        content = " ".join(" ".join(t.lower().split()) for t in row)
        out.append(any(text in content for text in texts))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--baseline-rows", type=int, default=10_000, help="rows the baseline loop runs on")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--full", action="store_true", help="also time clean_split over a datasets.Dataset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gen = Generator(args.seed)
    questions = gen.questions(80, 920)
    start = time.perf_counter()
    index = EvalIndex(questions, ngram=13, threshold=0.5)
    index_s = time.perf_counter() - start

    normalised = [" ".join(q.text.lower().split()) for q in questions]
    found_rows: dict[int, str] = {}
    planted: dict[int, str] = {}
    find_s = floor_s = base_s = 0.0
    words_total = base_rows = 0
    for offset, rows in batches(gen, args.rows, args.batch, questions):
        planted.update(plant(rows, offset, questions, gen))
        words_total += sum(len(t.split()) for row in rows for t in row)
        start = time.perf_counter()
        result = index.find(rows)
        find_s += time.perf_counter() - start
        for i, matches in enumerate(result):
            if matches:
                found_rows[offset + i] = matches[0].kind
        start = time.perf_counter()
        for row in rows:
            for text in row:
                words(text)
        floor_s += time.perf_counter() - start
        if base_rows < args.baseline_rows:
            start = time.perf_counter()
            substring_find(rows, normalised)
            base_s += time.perf_counter() - start
            base_rows += len(rows)
    assert found_rows == planted, (len(found_rows), len(planted))

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs (one process used), python {platform.python_version()}")
    print(f"evaluation: {len(questions)} turns of {80 + 920} questions; index built in {index_s:.2f} s")
    print(f"rows: {args.rows} ({words_total / args.rows:.0f} user words a row); planted {len(planted)}, found "
          f"{len(found_rows)} (exact {sum(k == 'exact' for k in found_rows.values())}, 13-gram "
          f"{sum(k != 'exact' for k in found_rows.values())})")
    ours, base = args.rows / find_s, base_rows / base_s
    print(f"EvalIndex.find: {find_s:.1f} s for {args.rows} rows = {ours:,.0f} rows/s")
    print(f"floor, splitting the same texts into words: {floor_s:.1f} s; find costs {find_s / floor_s:.2f}x the floor")
    print(f"baseline, the handbook's substring loop: {base_s:.1f} s for {base_rows} rows = {base:,.1f} rows/s "
          f"(would take {args.rows / base:.0f} s for {args.rows}); find is {ours / base:,.0f}x faster per row")

    if args.full:
        full(args, questions)


def full(args: argparse.Namespace, questions: list[EvalText]) -> None:
    """clean_split over a datasets.Dataset in the ultrachat_200k schema, as SFTDataModule runs it."""
    import datasets

    from zephyr_lightning.data.cleaning import clean_split

    gen = Generator(args.seed)
    gen.questions(80, 920)

    def rows():
        for offset, batch in batches(gen, args.rows, args.batch, questions):
            plant(batch, offset, questions, gen)
            for i, texts in enumerate(batch):
                messages = []
                for text in texts:
                    messages += [{"role": "user", "content": text}, {"role": "assistant", "content": gen.text(20, 120)}]
                yield {"prompt": texts[0], "prompt_id": str(offset + i), "messages": messages,
                       "_source": 0, "_index": offset + i}

    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        data = datasets.Dataset.from_generator(rows, cache_dir=cache)
        build_s = time.perf_counter() - start
        index = EvalIndex(questions, ngram=13, threshold=0.5)
        start = time.perf_counter()
        cleaned = clean_split(data, kind="sft", source_names=["generated"], index=index)
        clean_s = time.perf_counter() - start
    removed = {status: n for (_, status), n in cleaned.removed.items()}
    print(f"clean_split over a datasets.Dataset of {len(data)} dialogues (written in {build_s:.0f} s, not counted): "
          f"{clean_s:.1f} s = {len(data) / clean_s:,.0f} rows/s; removed {removed}")


if __name__ == "__main__":
    main()
