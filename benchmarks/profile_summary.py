"""Where a training step goes: a torch.profiler trace reduced to its top kernels and the share of each kind
of work (matrix products, attention, compiled elementwise code, eager elementwise/reduction kernels,
optimizer, copies).

On a GPU the kernels are the device events (CUDA kernels, by their own time); on a CPU (the ``--smoke``
runs) the top-level aten operators stand in for them, by self CPU time, so the same code is exercised.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

# Checked in this order: the first match names the category (flash kernels also contain "sm90", so
# attention goes before matmul; inductor's kernels all start with "triton_").
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("flash", "fmha", "attention", "varlen", "scaled_dot_product", "sdpa")),
    ("optimizer", ("adam", "multi_tensor", "foreach", "optimizer")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "gemv", "splitk", "aten::mm", "aten::addmm",
                "aten::bmm", "aten::matmul", "aten::linear", "aten::_scaled_mm")),
    ("compiled", ("triton_", "compiledfunction", "torchdynamo", "inductor")),
    ("copy", ("memcpy", "memset", "copy_", "catarraybatchedcopy", "aten::cat", "aten::to", "aten::clone",
              "aten::contiguous", "aten::_to_copy")),
    ("nccl", ("nccl",)),
    ("elementwise", ("elementwise", "vectorized", "reduce", "unrolled", "index", "scatter", "gather", "softmax",
                     "logsumexp", "exp", "aten::", "void at::native")),
)


def category(name: str) -> str:
    lowered = name.lower()
    for label, keys in CATEGORIES:
        if any(k in lowered for k in keys):
            return label
    return "other"


def _device_kernels(prof: torch.profiler.profile) -> dict[str, list[float]]:
    """Kernel name -> [total microseconds, calls] over the device events of the trace."""
    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        kernels[event.name][0] += event.time_range.elapsed_us()
        kernels[event.name][1] += 1
    return kernels


def _cpu_operators(prof: torch.profiler.profile) -> dict[str, list[float]]:
    """Operator name -> [self CPU microseconds, calls] (the CPU stand-in for kernels)."""
    return {e.key: [float(e.self_cpu_time_total), e.count] for e in prof.key_averages() if e.self_cpu_time_total > 0}


def summarize(prof: torch.profiler.profile, steps: int, wall_s: float, top: int = 25) -> dict[str, Any]:
    """Top kernels (per step) and the share of each category, from a profile of ``steps`` steps that took
    ``wall_s`` seconds."""
    kernels = _device_kernels(prof)
    source = "cuda kernels (device time)"
    if not kernels:
        kernels = _cpu_operators(prof)
        source = "cpu operators (self cpu time; no device events)"
    total_us = sum(t for t, _ in kernels.values()) or 1.0
    shares: dict[str, float] = defaultdict(float)
    for name, (us, _) in kernels.items():
        shares[category(name)] += us / total_us
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "source": source,
        "steps": steps,
        "wall_ms_per_step": 1e3 * wall_s / steps,
        "kernel_ms_per_step": total_us / 1e3 / steps,
        # Device busy time over wall time: below 1 means the GPU waited for the host (launches, syncs).
        "busy_fraction": (total_us / 1e6) / wall_s if wall_s > 0 else None,
        "category_share": dict(sorted(shares.items(), key=lambda kv: -kv[1])),
        "top_kernels": [
            {"name": name[:160], "category": category(name), "ms_per_step": us / 1e3 / steps,
             "calls_per_step": calls / steps, "share": us / total_us}
            for name, (us, calls) in ranked
        ],
    }


def format_summary(summary: dict[str, Any], rows: int = 12) -> str:
    """A few lines for a log or the README."""
    shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in summary["category_share"].items())
    lines = [f"{summary['source']}: {summary['kernel_ms_per_step']:.1f} ms of kernels in a "
             f"{summary['wall_ms_per_step']:.1f} ms step; {shares}"]
    for k in summary["top_kernels"][:rows]:
        lines.append(f"  {100 * k['share']:5.1f}%  {k['ms_per_step']:8.2f} ms  x{k['calls_per_step']:<6.0f} "
                     f"{k['category']:<11} {k['name'][:90]}")
    return "\n".join(lines)
