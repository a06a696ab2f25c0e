"""This project's dSFT step against TRL's SFTTrainer on CPU, in one process, run after run.

    python benchmarks/sft_vs_trl.py [--steps 20] [--max-length 1024] [--batch-size 4] [--data synthetic]

Ours: SFTModule + SFTDataModule with packing (best-fit decreasing), chunked log-probs, under a real
Lightning Trainer. TRL 1.16: SFTTrainer with packing=True and padding_free=True (best-fit decreasing, all
rows of a batch flattened into one, sequence boundaries from position ids), its fastest documented set-up;
gradient checkpointing off on both sides (TRL's default turns it on; ``--trl-default`` adds that run).
Same tiny Mistral weights (the embedded default's architecture), same tokenized dialogues (our chat template
and assistant-token mask, handed to TRL as labels), same maximum length and rows per optimizer step, float32,
sdpa attention on both sides. Before timing, a cross-check: both compute the loss and gradients of the same
packed rows from the same weights. TRL is a benchmark-only dependency: pip install trl==1.16.0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402
from sft_runs import (  # noqa: E402
    DialogueWorkload,
    data_facts,
    loss_crosscheck,
    run_ours_sft,
    run_trl_sft,
    sft_datamodule,
    synthetic_dialogues,
    trl_dataset,
    write_split,
)

from zephyr_lightning.models import build_tiny_mistral, load_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4, help="packed rows per optimizer step")
    parser.add_argument("--data", default="synthetic",
                        help="'synthetic' (ultrachat-shaped random dialogues) or a path/builtin:tiny_chat")
    parser.add_argument("--trl-default", action="store_true", help="also run TRL with its default gradient checkpointing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    # About 1.3 epochs of packed rows for the timed steps, so both sides see fresh rows throughout.
    w = DialogueWorkload(max_length=args.max_length, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                         user_words=(8, 96), assistant_words=(32, 320), dialogues=0)
    tokenizer = load_tokenizer("builtin:tiny-mistral")
    base = build_tiny_mistral(seed=0).state_dict()

    def make_model():
        model = build_tiny_mistral(seed=0)
        model.load_state_dict(base)
        model.set_attn_implementation("sdpa")
        return model.train()

    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.data
        if args.data == "synthetic":
            mean_tokens = 2 * (sum(w.user_words) + sum(w.assistant_words)) / 2 + 20  # two turns on average
            w.dialogues = int(1.3 * args.steps * args.batch_size * args.max_length / mean_tokens) + 8
            path = str(write_split(synthetic_dialogues(w, tokenizer), Path(tmp) / "dialogues"))
        dm = sft_datamodule(path, tokenizer, w)
        rows = trl_dataset(dm)
        facts = data_facts(dm)
        print(f"data: {json.dumps(facts)}")
        check = loss_crosscheck(dm, rows, make_model, tokenizer, cpu, bf16=False)
        print(f"cross-check (same packed rows, same weights, float32): {json.dumps(check)}")
        if not check["ok"]:
            raise SystemExit("ours and TRL disagree on the same batch: the timings below would compare different work")
        results = [
            run_trl_sft("trl SFTTrainer (packing, padding_free)", w, rows, make_model, tokenizer, cpu,
                        gradient_checkpointing=False, bf16=False),
            run_ours_sft("ours SFTModule (packing)", w, dm, make_model, cpu),
        ]
        if args.trl_default:
            results.append(run_trl_sft("trl SFTTrainer, grad ckpt (its default)", w, rows, make_model, tokenizer, cpu,
                                       gradient_checkpointing=True, bf16=False))
    print(f"\nCPU, {torch.get_num_threads()} threads; {facts['dialogues']} dialogues ({facts['mean_tokens']:.0f} tokens "
          f"on average), max_length {w.max_length}, {w.batch_size} packed rows per step, {w.steps} steps "
          f"({w.warmup} untimed); tiny Mistral, float32")
    print_table(results, {"ours SFTModule (packing)": "trl SFTTrainer (packing, padding_free)"}, key="tokens_per_s")
    if args.json:
        args.json.write_text(json.dumps({"data": facts, "crosscheck": check, "runs": [r.to_dict() for r in results]},
                                        indent=2))


if __name__ == "__main__":
    main()
