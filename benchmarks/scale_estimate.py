"""The numbers of docs/scale.md: predicted wall-clock and per-device memory of the full Zephyr recipe on 8 and 16
GPUs, from measured per-GPU throughput (MFU) scaled by FLOPs to Mistral-7B. Every input is a named assumption
below; change one and re-run.

    python benchmarks/scale_estimate.py                      # the tables in docs/scale.md
    python benchmarks/scale_estimate.py --gpu-json OUT.json  # also the MFU of gpu_round2.py's runs, when they exist

This is arithmetic on paper, not a measurement: the MFU figures come from a 1.1B model on one H100, in the
first round's pure-bf16 set-up, until the 7B runs of gpu_round2.py exist.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from zephyr_lightning.plan import MISTRAL_7B, plan_memory

# Mistral-7B-v0.1 (vocab 32000, hidden 4096, 32 layers, 8 KV heads, FFN 14336, untied head): the planner's shape.
PARAMS = MISTRAL_7B.parameters  # 7,241,732,096

PEAK = {"H100": 989e12, "A100": 312e12}  # dense bf16 FLOP/s (SXM)

# Data (public dataset cards; token counts estimated, see docs/scale.md):
SFT_DIALOGUES = 207_865  # ultrachat_200k train_sft
SFT_TOKENS_PER_DIALOGUE = 1_550  # 1.397 GB / 207,865 rows ~ 6.7 kB a row, ~7% of it the duplicated prompt, ~4 B/token
DPO_PAIRS = 61_135  # ultrafeedback_binarized train_prefs
DPO_TOKENS_PER_PAIR = 1_000  # prompt twice + chosen + rejected; 405.7 MB / 61,135 rows ~ 6.6 kB a row (4P + 3C)

# Measured MFU (benchmarks/README.md, 1.1B on one H100, 2026-11-26, pure-bf16 set-up, compile, varlen):
MFU = {"ours, grad ckpt (33.6%)": 0.336, "ours, no ckpt (41.8%)": 0.418, "TRL DPO default (10.2%)": 0.102}
# Scaling efficiency (share of the per-GPU throughput kept at this many GPUs), assumed:
EFFICIENCY = {1: 1.0, 8: 0.90, 16: 0.80}


@dataclass
class Stage:
    name: str
    tokens_per_epoch: float
    flops_per_token: float  # model FLOPs (attention and recomputation not counted, as in MFU)


def stages() -> list[Stage]:
    return [
        Stage("dSFT (ultrachat_200k)", SFT_DIALOGUES * SFT_TOKENS_PER_DIALOGUE, 6 * PARAMS),
        Stage("dDPO (ultrafeedback_binarized), live reference", DPO_PAIRS * DPO_TOKENS_PER_PAIR, 8 * PARAMS),
    ]


def hours(stage: Stage, epochs: float, gpus: int, mfu: float, peak: float) -> float:
    return epochs * stage.tokens_per_epoch * stage.flops_per_token / (gpus * mfu * peak * EFFICIENCY[gpus]) / 3600


# ------------------------------------------------------------------------------------------------ memory
# Per-device memory is the memory planner's (zephyr_lightning.plan, docs/memory.md): one home for that rule.


def memory_plan(gpus: int, tokens_per_device: int, *, reference: bool, checkpointing: bool = True):
    """Full-parameter training of Mistral-7B with fp32 master weights and bf16 compute (issue 13's set-up):
    one device with autocast, or FSDP full shard over ``gpus``; dDPO's reference in bf16."""
    return plan_memory(MISTRAL_7B, tokens=tokens_per_device, dtype="float32", precision="bf16-mixed",
                       strategy="single" if gpus == 1 else "fsdp", devices=gpus,
                       reference="separate" if reference else "none", reference_dtype="bfloat16",
                       gradient_checkpointing=checkpointing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu-json", type=Path, default=None, help="gpu_round2.py's JSON: print its measured MFU")
    args = parser.parse_args()
    print(f"Mistral-7B parameters: {PARAMS:,}")
    for s in stages():
        print(f"{s.name}: {s.tokens_per_epoch / 1e6:.0f}M tokens per epoch, "
              f"{s.tokens_per_epoch * s.flops_per_token:.3g} model FLOPs per epoch")
    recipes = {"handbook (dSFT 1 epoch, dDPO 1 epoch)": (1, 1),
               "paper, upper end (dSFT 3 epochs of its 1-3, dDPO 3 epochs)": (3, 3)}
    for label, (sft_epochs, dpo_epochs) in recipes.items():
        print(f"\n{label}: hours on H100s (MFU scenario, scaling efficiency {EFFICIENCY[8]} at 8, {EFFICIENCY[16]} at 16)")
        print(f"{'scenario':<28} {'GPUs':>4} {'dSFT h':>8} {'dDPO h':>8} {'total h':>8}")
        for name, mfu in MFU.items():
            for gpus in (8, 16):
                sft, dpo = stages()
                a = hours(sft, sft_epochs, gpus, mfu, PEAK["H100"])
                b = hours(dpo, dpo_epochs, gpus, mfu, PEAK["H100"])
                print(f"{name:<28} {gpus:>4} {a:>8.2f} {b:>8.2f} {a + b:>8.2f}")
    print("\npaper's hardware, 16 A100s (the paper: 'typically took 2-4 hours'), ours with grad ckpt MFU:")
    sft, dpo = stages()
    for epochs in (1, 3):
        print(f"  {epochs} epoch(s): dSFT {hours(sft, epochs, 16, 0.336, PEAK['A100']):.2f} h, "
              f"dDPO {hours(dpo, epochs, 16, 0.336, PEAK['A100']):.2f} h")
    print("\nper-device memory (GiB, the memory planner's): full parameters, fp32 masters, bf16 compute, FSDP full "
          "shard (1 GPU: none)")
    cases = {"dSFT, 16 rows x 2048 tokens per device": (16 * 2048, False),
             "dDPO, 8 pairs (~8k tokens) per device": (8 * DPO_TOKENS_PER_PAIR, True),
             "dDPO, 4 pairs (~4.5k tokens), the H200 run": (4500, True)}
    for label, (tokens, reference) in cases.items():
        for gpus in (1, 8, 16):
            with_ckpt = memory_plan(gpus, tokens, reference=reference)
            parts = ", ".join(f"{k} {v / 2**30:.1f}" for k, v in with_ckpt.components.items())
            print(f"  {label:<44} {gpus:>2} GPU(s): {with_ckpt.total / 2**30:6.1f} with activation checkpointing, "
                  f"{with_ckpt.total_other / 2**30:6.1f} without  ({parts})")
    if args.gpu_json:
        data = json.loads(args.gpu_json.read_text())
        print("\nmeasured (gpu_round2.py):")
        for name, record in data.get("entries", {}).items():
            result = record.get("result") or {}
            if result.get("mfu") is not None:
                print(f"  {name:<32} MFU {100 * result['mfu']:.1f}%  peak {result['peak_mem_gib']:.1f} GiB")


if __name__ == "__main__":
    main()
