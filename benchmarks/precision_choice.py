"""Issue 13's choice of precision, by measurement: fp32 master weights + bf16 compute (what every GPU config
uses) against bf16 weights with plain AdamW (the old set-up) and bf16 weights with stochastic rounding
(torchao's AdamW, ``bf16_stochastic_round=True``), at the recipe's learning rates.

    python benchmarks/precision_choice.py                    # lr 5e-7 (dDPO) and 2e-5 (dSFT), 100 steps
    python benchmarks/precision_choice.py --steps 300 --lrs 5e-7

Each set-up trains the embedded tiny Mistral on the same token batches from the same start; a float64 run is
the reference trajectory. Per set-up: the share of trainable elements with a gradient that the first step changed, how far the
total update after the last step is from the reference's (``update error`` = |dW - dW_ref| / |dW_ref|: 0 is
exact, 1 is as wrong as not training), the final loss, and the optimizer's bytes per trainable parameter
(weights + gradients + optimizer state, measured from the tensors; autocast's transient bf16 copies not
counted). torchao is optional (``pip install torchao``); without it that row says so.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
from pathlib import Path

import torch

from zephyr_lightning.models import build_tiny_mistral


def batches(steps: int, batch: int, length: int, vocab: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # A small vocabulary slice, so that every embedding row in use gets gradients at every step.
    return [torch.randint(0, 512, (batch, length), generator=generator) for _ in range(steps)]


def optimizer_for(setup: str, params, lr: float):
    if setup == "bf16 + stochastic rounding":
        from torchao.optim import _AdamW

        return _AdamW(params, lr=lr, weight_decay=0.0, bf16_stochastic_round=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def train(base: torch.nn.Module, setup: str, lr: float, data: list[torch.Tensor]) -> dict:
    weights = {"float64 reference": torch.float64, "fp32 masters + bf16 autocast": torch.float32}.get(setup, torch.bfloat16)
    model = copy.deepcopy(base).to(weights).train()
    start = {n: p.detach().to(torch.float64).clone() for n, p in model.named_parameters()}
    optimizer = optimizer_for(setup, model.parameters(), lr)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if setup == "fp32 masters + bf16 autocast"
                else contextlib.nullcontext())
    first_step_share = None
    loss = torch.tensor(float("nan"))
    for step, ids in enumerate(data):
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        if step == 0:
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            # Among elements with a gradient (embedding rows of tokens absent from the batch cannot move).
            live = {n: p.grad != 0 for n, p in model.named_parameters()}
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        if step == 0:
            moved = sum(int(((p.detach() != before[n]) & live[n]).sum()) for n, p in model.named_parameters())
            first_step_share = moved / sum(int(m.sum()) for m in live.values())
    params = sum(p.numel() for p in model.parameters())
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if torch.is_tensor(t) and t.dim() > 0)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    update = {n: p.detach().to(torch.float64) - start[n] for n, p in model.named_parameters()}
    return {"update": update, "first_step_changed": first_step_share, "final_loss": loss.item(),
            "bytes_per_param": (weight_bytes + grad_bytes + state) / params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lrs", type=float, nargs="+", default=[5e-7, 2e-5])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    torch.manual_seed(0)
    base = build_tiny_mistral(seed=0)
    data = batches(args.steps, args.batch, args.length, base.config.vocab_size, seed=1)
    setups = ["fp32 masters + bf16 autocast", "bf16 + plain AdamW", "bf16 + stochastic rounding"]
    results: dict[str, dict] = {}
    print(f"tiny Mistral ({sum(p.numel() for p in base.parameters()):,} parameters), {args.steps} steps of "
          f"{args.batch} x {args.length} tokens, AdamW without warmup or decay; reference: the same run in float64")
    for lr in args.lrs:
        reference = train(base, "float64 reference", lr, data)
        norm = torch.sqrt(sum((u**2).sum() for u in reference["update"].values()))
        print(f"\nlr {lr:g}: reference final loss {reference['final_loss']:.4f}")
        print(f"{'set-up':<32} {'1st step changed':>16} {'update error':>13} {'final loss':>11} {'B/param':>8}")
        for setup in setups:
            try:
                out = train(base, setup, lr, data)
            except ImportError as error:
                print(f"{setup:<32} not measured: {error} (pip install torchao)")
                continue
            error_norm = torch.sqrt(sum(((out["update"][n] - u) ** 2).sum() for n, u in reference["update"].items()))
            row = {"first_step_changed": out["first_step_changed"], "update_error": float(error_norm / norm),
                   "final_loss": out["final_loss"], "bytes_per_param": out["bytes_per_param"]}
            results[f"{setup} @ {lr:g}"] = row
            print(f"{setup:<32} {100 * row['first_step_changed']:>15.1f}% {row['update_error']:>13.3f} "
                  f"{row['final_loss']:>11.4f} {row['bytes_per_param']:>8.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
