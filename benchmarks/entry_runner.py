"""Run named measurements ("entries") in child processes, each with a time limit, within a total budget, and
keep every result as it arrives.

Why child processes: a run that runs out of GPU memory, hangs in a compiler or kills its process must
become a recorded result, not the end of the session; and a killed child loses only the entry it was
running. Entries of one ``group`` share a child (imports and compiled graphs are paid once); an entry with
``isolate=True`` gets a fresh one (its memory peak is its own).

The child appends one JSON line per event to an events file (``env``, ``start``, ``end``); the parent
polls it, kills the child's process group when the running entry passes its deadline, restarts the
group's remaining entries in a new child, and rewrites the summary JSON after every event.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import write_json

STARTUP_S = 150  # imports and CUDA start-up of a child before its first entry


@dataclass
class Entry:
    name: str
    what: str  # one line for the JSON and the README
    run: Callable[[Any], dict[str, Any]]  # (context) -> result dict
    timeout_s: int
    group: str = ""
    tier: int = 1  # 1: the measurements the issues ask for; 2: comparisons worth having if time is left
    isolate: bool = False
    baseline: str | None = None  # another entry this one is compared with (speed and memory ratios)
    needs_cuda: bool = False
    # Entries (or "entry:part" for a part of a check's result) that must have passed: a failed check skips
    # the runs that would fail the same way, instead of spending device time on them.
    requires: tuple[str, ...] = ()


def failures(name: str, status: str, result: dict[str, Any] | None) -> set[str]:
    """What an entry's outcome rules out: its name unless it passed, and ``name:part`` for each failed part."""
    result = result or {}
    out = set()
    if status != "ok" or result.get("ok") is False:
        out.add(name)
    out |= {f"{name}:{k}" for k, v in result.items() if isinstance(v, dict) and v.get("ok") is False}
    return out


@dataclass
class Summary:
    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        write_json(self.path, self.data)


# ---------------------------------------------------------------------------------------------- the child

def run_child(entries: dict[str, Entry], names: list[str], events: Path, make_context: Callable[[], Any],
              env_info: Callable[[], dict], failed: set[str] | None = None) -> None:
    """Run ``names`` one after another in this process, appending events as they happen. ``failed``: what
    earlier entries ruled out (see `failures`)."""
    failed = set(failed or ())

    def emit(**event: Any) -> None:
        with open(events, "a") as f:
            f.write(json.dumps(event, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    emit(event="env", pid=os.getpid(), env=env_info())
    context = make_context()
    for name in names:
        entry = entries[name]
        emit(event="start", entry=name, time=time.time())
        blocked = sorted(set(entry.requires) & failed)
        if blocked:
            emit(event="end", entry=name, status="skipped", seconds=0.0,
                 result={"reason": f"needs {', '.join(blocked)}, which failed"})
            failed.add(name)
            continue
        t0 = time.perf_counter()
        try:
            result, status = entry.run(context), "ok"
        except Exception as err:  # every failure is a result
            status = "oom" if "out of memory" in str(err).lower() else "error"
            result = {"error": f"{type(err).__name__}: {str(err)[:2000]}", "trace": traceback.format_exc()[-4000:]}
            result.update(_memory_at_failure())
        emit(event="end", entry=name, status=status, seconds=time.perf_counter() - t0, result=result)
        failed |= failures(name, status, result)
        _release()


def _memory_at_failure() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"peak_mem_gib_at_failure": torch.cuda.max_memory_allocated() / 2**30,
            "device_total_gib": torch.cuda.get_device_properties(0).total_memory / 2**30}


def _release() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------- the parent

def _batches(order: list[Entry]) -> list[list[Entry]]:
    """Consecutive entries of one group share a child; isolated entries get their own."""
    batches: list[list[Entry]] = []
    for entry in order:
        if batches and not entry.isolate and not batches[-1][0].isolate and batches[-1][0].group == entry.group:
            batches[-1].append(entry)
        else:
            batches.append([entry])
    return batches


def _read_events(path: Path, offset: int) -> tuple[list[dict], int]:
    if not path.exists():
        return [], offset
    with open(path) as f:
        f.seek(offset)
        text = f.read()
    complete = text[: text.rfind("\n") + 1]
    events = [json.loads(line) for line in complete.splitlines() if line.strip()]
    return events, offset + len(complete.encode())


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def run_parent(order: list[Entry], summary: Summary, child_command: Callable[[list[str], Path, set[str]], list[str]],
               budget_s: float, log_dir: Path, on_result: Callable[[Entry, dict], None] | None = None) -> None:
    """Run ``order`` in child processes within ``budget_s`` seconds, recording each entry's outcome in
    ``summary.data["entries"]`` (status ok / error / oom / timeout / crashed / skipped)."""
    deadline = time.monotonic() + budget_s
    records = summary.data.setdefault("entries", {})
    for entry in order:
        records[entry.name] = {"what": entry.what, "tier": entry.tier, "status": "pending", "baseline": entry.baseline}
    summary.save()
    log_dir.mkdir(parents=True, exist_ok=True)
    events = log_dir / "events.jsonl"
    offset = 0
    queue = _batches(order)
    child_index = 0
    while queue:
        batch = queue.pop(0)
        left = deadline - time.monotonic()
        if left < 20:
            for entry in batch:
                records[entry.name].update(status="skipped", reason=f"budget of {budget_s:.0f} s spent")
            summary.save()
            continue
        child_index += 1
        log_path = log_dir / f"child{child_index:02d}-{batch[0].name}.log"
        names = [e.name for e in batch]
        print(f"[{budget_s - left:6.0f} s] child {child_index}: {', '.join(names)} (log {log_path.name})", flush=True)
        with open(log_path, "w") as log:
            failed = set().union(*(failures(n, r["status"], r.get("result")) for n, r in records.items()
                                   if r["status"] not in ("pending", "running")))
            child = subprocess.Popen(child_command(names, events, failed), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        state: dict[str, Any] = {"running": None, "deadline": time.monotonic() + min(STARTUP_S, left)}
        done: set[str] = set()
        outcome = None

        def handle(event: dict[str, Any], batch=batch, state=state, done=done) -> None:
            if event["event"] == "env":
                summary.data.setdefault("env", event["env"])
            elif event["event"] == "start":
                entry = next(e for e in batch if e.name == event["entry"])
                state["running"] = entry
                state["deadline"] = time.monotonic() + min(entry.timeout_s, deadline - time.monotonic())
                records[entry.name].update(status="running", started_at_s=round(budget_s - (deadline - time.monotonic())))
            elif event["event"] == "end":
                entry = next(e for e in batch if e.name == event["entry"])
                record = records[entry.name]
                record.update(status=event["status"], seconds=round(event["seconds"], 1), result=event["result"])
                done.add(entry.name)
                print(f"    {entry.name}: {event['status']} in {event['seconds']:.0f} s", flush=True)
                if on_result is not None:
                    on_result(entry, record)
                state["running"] = None
                state["deadline"] = time.monotonic() + min(60, deadline - time.monotonic())

        while True:
            exited = child.poll() is not None  # read the events after this, so none written before exit is lost
            new, offset = _read_events(events, offset)
            for event in new:
                handle(event)
            if new:
                summary.save()
            running = state["running"]
            if exited:
                if running is not None:
                    outcome = ("crashed", f"child exited with {child.returncode} while running it")
                elif child.returncode != 0:
                    outcome = ("crashed", f"child exited with {child.returncode}")
                break
            if time.monotonic() > state["deadline"]:
                _kill(child)
                if running is not None:
                    outcome = ("timeout", f"killed at its limit ({running.timeout_s} s) or the budget's end")
                else:
                    outcome = ("timeout", "the child did not start its next entry in time")
                break
            time.sleep(0.5)
        started = bool(done) or running is not None
        if outcome is not None and running is not None:
            records[running.name].update(status=outcome[0], reason=outcome[1], log_tail=_tail(log_path))
            done.add(running.name)
            print(f"    {running.name}: {outcome[0]} ({outcome[1]})", flush=True)
        rest = [e for e in batch if e.name not in done]
        if rest and started and outcome is not None:
            queue.insert(0, rest)  # the child lost only the entry it was running: the others get a new one
        elif rest:
            # The child ended, or hung, before or between entries: record it against the entries it left,
            # rather than starting the same failure again.
            reason = outcome[1] if outcome else "the child ended without running it"
            for entry in rest:
                records[entry.name].update(status="crashed", reason=reason, log_tail=_tail(log_path))
                print(f"    {entry.name}: crashed ({reason})", flush=True)
        summary.save()


def _kill(child: subprocess.Popen) -> None:
    """End the child and anything it started (its own process group), then reap it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def child_argv(script: Path, extra: list[str]) -> Callable[[list[str], Path, set[str]], list[str]]:
    def command(names: list[str], events: Path, failed: set[str]) -> list[str]:
        return [sys.executable, str(script), "--child", "--entries", ",".join(names), "--events", str(events),
                "--failed", ",".join(sorted(failed)), *extra]

    return command
