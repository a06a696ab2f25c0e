"""This project's DPO training step against TRL's DPOTrainer on CPU, in one process, run after run.

    python benchmarks/dpo_vs_trl.py [--steps 30] [--pairs 160] [--batch-size 8]

Same tiny Mistral weights (the embedded default's architecture), same random token pairs, batch size
and maximum lengths, float32 on CPU. Prints pairs/s and peak memory for each run and the ratio
ours/TRL, with a live reference and with precomputed reference log-probs. TRL is a benchmark-only
dependency: pip install trl.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402
from dpo_runs import PairWorkload, make_pairs, run_ours_dpo, run_trl_dpo  # noqa: E402

from zephyr_lightning.models import build_tiny_mistral, load_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    w = PairWorkload(pairs=args.pairs, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                 prompt_range=(16, 96), completion_range=(8, 160), max_length=256)
    pairs = make_pairs(w)
    base = build_tiny_mistral(seed=0).state_dict()

    def make_model():
        model = build_tiny_mistral(seed=0)
        model.load_state_dict(base)
        return model.train()

    cpu = torch.device("cpu")
    tokenizer = load_tokenizer("builtin:tiny-mistral")
    results = [
        run_trl_dpo("trl live", w, pairs, make_model, make_model, tokenizer, cpu, precompute=False,
                    gradient_checkpointing=False, bf16=False),
        run_ours_dpo("ours live (padded)", w, pairs, make_model, make_model, cpu, packing=False, precompute=False),
        run_ours_dpo("ours live (packed)", w, pairs, make_model, make_model, cpu, packing=True, precompute=False),
        run_trl_dpo("trl precomputed", w, pairs, make_model, None, tokenizer, cpu, precompute=True,
                    gradient_checkpointing=False, bf16=False),
        run_ours_dpo("ours precomputed (padded)", w, pairs, make_model, make_model, cpu, packing=False, precompute=True),
        run_ours_dpo("ours precomputed (packed)", w, pairs, make_model, make_model, cpu, packing=True, precompute=True),
    ]
    print(f"\nCPU, {torch.get_num_threads()} threads; {w.pairs} pairs, batch {w.batch_size}, {w.steps} steps "
          f"({w.warmup} untimed); tiny Mistral, float32")
    print_table(results, {
        "ours live (padded)": "trl live", "ours live (packed)": "trl live",
        "ours precomputed (padded)": "trl precomputed", "ours precomputed (packed)": "trl precomputed",
    })
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=2))


if __name__ == "__main__":
    main()
