"""Measurement shared by the benchmarks: peak memory, per-step timing, results and the printed table.

Runs happen one after another; each reports items/s (pairs for DPO, dialogues for SFT), tokens/s, model
FLOPs utilisation and peak memory (GPU: torch's allocator peak; CPU: peak resident memory above the level
before the run, sampled every 2 ms).
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100/H200 SXM (the H200 has the H100's compute, more memory)


@dataclass
class Result:
    name: str
    unit: str  # what items_per_s counts: "pairs" (DPO) or "dialogues" (SFT)
    items_per_s: float
    tokens_per_s: float
    step_s: float
    peak_mem_gib: float
    mfu: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MemoryMeter:
    """Peak memory of a run: CUDA allocator peak, or CPU resident memory above the starting level."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._stop = threading.Event()
        self.peak = 0
        self.reserved = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> MemoryMeter:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.base = self._rss()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def restart(self) -> None:
        """Forget the peak so far: from now on the peak counts what is resident now plus what comes after (e.g.
        from the first training step, leaving out a model build's transient copies)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = max(0, self._rss() - self.base)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated()
            self.reserved = torch.cuda.max_memory_reserved()
        else:
            self._stop.set()
            self.thread.join()

    @property
    def gib(self) -> float:
        return self.peak / 2**30


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class StepTimer:
    """Per-step wall time after synchronising the device, with the tokens and items (pairs, dialogues) of each
    step. Steps after ``limit`` are not recorded (e.g. profiled steps)."""

    def __init__(self, device: torch.device, limit: int | None = None) -> None:
        self.device = device
        self.limit = limit
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.items: list[int] = []
        self._open = False

    def begin(self) -> None:
        if self.limit is not None and len(self.times) >= self.limit:
            return
        sync(self.device)
        self._open = True
        self.t0 = time.perf_counter()

    def end(self, tokens: int, items: int) -> None:
        if not self._open:
            return
        sync(self.device)
        self._open = False
        self.times.append(time.perf_counter() - self.t0)
        self.tokens.append(int(tokens))
        self.items.append(int(items))

    def summary(self, name: str, unit: str, warmup: int, flops_per_token: float, mem: MemoryMeter,
                peak_flops: float | None, **extra: Any) -> Result:
        """``flops_per_token``: model FLOPs per token of a step (6 x params trained, + 2 x params per model
        that only runs forward); attention is not counted, the usual MFU convention."""
        times, tokens, items = self.times[warmup:], self.tokens[warmup:], self.items[warmup:]
        if not times:
            raise RuntimeError(f"{name}: no timed step (ran {len(self.times)} steps, {warmup} untimed)")
        seconds = sum(times)
        return Result(
            name=name,
            unit=unit,
            items_per_s=sum(items) / seconds,
            tokens_per_s=sum(tokens) / seconds,
            step_s=seconds / len(times),
            peak_mem_gib=mem.gib,
            mfu=flops_per_token * sum(tokens) / seconds / peak_flops if peak_flops else None,
            extra={"timed_steps": len(times), "tokens_per_step": sum(tokens) / len(times),
                   "reserved_gib": mem.reserved / 2**30 if mem.reserved else None, **extra},
        )


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def print_table(results: list[Result], baseline: dict[str, str], key: str = "items_per_s") -> None:
    """Print results and, for each run named in ``baseline``, its speed (``key``) and memory relative to
    its baseline run."""
    by_name = {r.name: r for r in results}
    unit = results[0].unit if results else "items"
    header = (f"{'run':<44} {unit + '/s':>11} {'tokens/s':>10} {'s/step':>8} {'peak GiB':>9} {'MFU':>6} "
              f"{'vs baseline (speed / memory)':>30}")
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = ""
        if r.name in baseline and baseline[r.name] in by_name:
            base = by_name[baseline[r.name]]
            ratio = (f"{getattr(r, key) / getattr(base, key):.2f}x / "
                     f"{r.peak_mem_gib / max(base.peak_mem_gib, 1e-9):.2f}x mem")
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "-"
        print(f"{r.name:<44} {r.items_per_s:>11.2f} {r.tokens_per_s:>10.0f} {r.step_s:>8.3f} "
              f"{r.peak_mem_gib:>9.2f} {mfu:>6} {ratio:>30}")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically, so a reader (or a killed run) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
