"""Exercise entry_runner's failure paths with stand-in entries (about 80 s, CPU, no model):

    python benchmarks/entry_runner_selftest.py

An entry past its limit is killed and recorded as ``timeout`` and the rest of its group goes on in a new child;
a child that dies mid-entry records ``crashed``; an out-of-memory error is ``oom``; a failed part of a check
skips the entries that require it; the budget's end kills the running entry and skips the rest.
Exits 1, naming the entry, if any outcome differs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from entry_runner import Entry, Summary, child_argv, run_child, run_parent  # noqa: E402


def ok(ctx):
    return {"ok": True}


def sleepy(ctx):
    time.sleep(300)
    return {}


def dies(ctx):
    os._exit(3)


def oom(ctx):
    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def half_failed_check(ctx):
    return {"ok": False, "part_a": {"ok": False}, "part_b": {"ok": True}}


ENTRIES = [
    Entry("a_ok", "", ok, 30, group="g"),
    Entry("b_timeout", "", sleepy, 3, group="g"),
    Entry("c_ok_after_timeout", "", ok, 30, group="g"),
    Entry("d_crash", "", dies, 30, group="g"),
    Entry("e_ok_after_crash", "", ok, 30, group="g"),
    Entry("f_oom", "", oom, 30, isolate=True),
    Entry("g_check", "", half_failed_check, 30, group="h"),
    Entry("h_needs_a", "", ok, 30, group="h", requires=("g_check:part_a",)),
    Entry("i_needs_a_elsewhere", "", ok, 30, isolate=True, requires=("g_check:part_a",)),
    Entry("j_needs_b", "", ok, 30, isolate=True, requires=("g_check:part_b",)),
    Entry("k_budget_end", "", sleepy, 300, isolate=True),
    Entry("l_after_budget", "", ok, 30, isolate=True),
]
EXPECTED = {"a_ok": "ok", "b_timeout": "timeout", "c_ok_after_timeout": "ok", "d_crash": "crashed",
            "e_ok_after_crash": "ok", "f_oom": "oom", "g_check": "ok", "h_needs_a": "skipped",
            "i_needs_a_elsewhere": "skipped", "j_needs_b": "ok", "k_budget_end": "timeout", "l_after_budget": "skipped"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--entries", help=argparse.SUPPRESS)
    parser.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--failed", default="", help=argparse.SUPPRESS)
    parser.add_argument("--budget-s", type=float, default=75)
    args = parser.parse_args()
    if args.child:
        run_child({e.name: e for e in ENTRIES}, args.entries.split(","), args.events, lambda: None, lambda: {},
                  failed={f for f in args.failed.split(",") if f})
        return
    with tempfile.TemporaryDirectory() as tmp:
        summary = Summary(Path(tmp) / "summary.json", {})
        run_parent(ENTRIES, summary, child_argv(Path(__file__).resolve(), []), args.budget_s, Path(tmp) / "logs")
        got = {name: record["status"] for name, record in summary.data["entries"].items()}
    wrong = {name: (got.get(name), want) for name, want in EXPECTED.items() if got.get(name) != want}
    if wrong:
        raise SystemExit(f"entry_runner self-test FAILED (got, expected): {wrong}")
    print(f"entry_runner self-test passed: {len(EXPECTED)} outcomes as expected")


if __name__ == "__main__":
    main()
