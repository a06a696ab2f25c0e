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

# Mistral-7B-v0.1: vocab 32000, hidden 4096, 32 layers, 32 heads / 8 KV heads of 128, FFN 14336, untied head.
HIDDEN, LAYERS, FFN, VOCAB, KV_DIM = 4096, 32, 14336, 32000, 1024
LAYER_PARAMS = 2 * HIDDEN * HIDDEN + 2 * HIDDEN * KV_DIM + 3 * HIDDEN * FFN + 2 * HIDDEN
PARAMS = LAYERS * LAYER_PARAMS + 2 * VOCAB * HIDDEN + HIDDEN  # 7,241,732,096

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

GiB = 2**30


def activations_bytes(tokens: int, checkpointing: bool) -> float:
    """Activation memory of a Mistral-7B step over ``tokens`` tokens on one device (bf16 compute under
    autocast, fp32 residual stream, FlashAttention: no [tokens, tokens] tensors).

    Saved per token and decoder layer without checkpointing, in bytes: residual input and output of both
    norms (fp32, 2 x 4h), the norms' bf16 outputs (2 x 2h), q/k/v and rotary inputs (~5.5h), attention output
    (2h), FFN gate/up/SiLU/product (4 x 2 x FFN): about 30h + 8 FFN. With full checkpointing only each layer's
    fp32 input is kept (4h) and one layer is recomputed at a time. Plus the log-prob chunks (3 x 128 MiB).
    """
    per_layer = 30 * HIDDEN + 8 * FFN
    kept = LAYERS * (4 * HIDDEN) + per_layer if checkpointing else LAYERS * per_layer
    return tokens * kept + 3 * 128 * 2**20


def memory_gib(gpus: int, tokens_per_device: int, *, reference: bool, checkpointing: bool = True) -> dict[str, float]:
    """Per-device memory, full-parameter training with fp32 master weights (FSDP full shard over ``gpus``).

    Sharded: fp32 weights (4 B/param, the master copy), fp32 gradients (4 B), Adam moments (8 B), a bf16
    reference (2 B). Gathered: the bf16 units in flight (two decoder layers). On one device without FSDP,
    autocast keeps bf16 copies of the weights through the forward pass (2 B/param) instead. Gradients exist
    in the backward pass (and until the optimizer step), the cast copies in the forward pass: the peak is
    the larger of the two phases.
    """
    weights, grads, adam = 4 * PARAMS / gpus, 4 * PARAMS / gpus, 8 * PARAMS / gpus
    ref = 2 * PARAMS / gpus if reference else 0.0
    bf16_copies = 2 * PARAMS if gpus == 1 else 2 * 2 * LAYER_PARAMS
    acts = activations_bytes(tokens_per_device, checkpointing)
    forward = weights + adam + ref + bf16_copies + acts
    backward = weights + adam + ref + grads + acts + (0 if gpus == 1 else bf16_copies)
    return {"weights": weights / GiB, "grads": grads / GiB, "adam": adam / GiB, "reference": ref / GiB,
            "bf16 copies": bf16_copies / GiB, "activations": acts / GiB, "peak": max(forward, backward) / GiB}


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
    print("\nper-device memory (GiB): full parameters, fp32 masters, FSDP full shard (1 GPU: none), activation checkpointing")
    cases = {"dSFT, 16 rows x 2048 tokens per device": (16 * 2048, False),
             "dDPO, 8 pairs (~8k tokens) per device": (8 * DPO_TOKENS_PER_PAIR, True),
             "dDPO, 4 pairs (~4.5k tokens), the H200 run": (4500, True)}
    for label, (tokens, reference) in cases.items():
        for gpus in (1, 8, 16):
            m = memory_gib(gpus, tokens, reference=reference)
            parts = ", ".join(f"{k} {v:.1f}" for k, v in m.items() if k != "peak")
            print(f"  {label:<44} {gpus:>2} GPU(s): peak {m['peak']:6.1f}  ({parts})")
    if args.gpu_json:
        data = json.loads(args.gpu_json.read_text())
        print("\nmeasured (gpu_round2.py):")
        for name, record in data.get("entries", {}).items():
            result = record.get("result") or {}
            if result.get("mfu") is not None:
                print(f"  {name:<32} MFU {100 * result['mfu']:.1f}%  peak {result['peak_mem_gib']:.1f} GiB")


if __name__ == "__main__":
    main()
