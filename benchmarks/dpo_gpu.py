"""DPO on one GPU at ~1B parameters: this project against TRL, tokens/s and MFU.

    python benchmarks/dpo_gpu.py [--out results.json] [--runs ours_live,trl_live,...]

Model: Mistral architecture, 1.10B parameters (hidden 2048, 22 layers, 32 heads, 4 KV heads, FFN
5632, vocab 32000), random init, bf16 weights, AdamW, beta 0.1. Data: 320 random token pairs,
prompts of 64-384 tokens, completions of 32-640 tokens, max length 2048, batch 8 pairs, 30 steps of
which the first 5 are not timed. MFU counts 6 x params per policy token plus 2 x params per reference
token (attention not counted) against 989 TFLOP/s (dense bf16, H100/H200 SXM).

Ours: DPOModule under a Lightning Trainer (bf16-true), batches packed without padding, attention by
torch's varlen FlashAttention kernel (``attn_implementation=varlen``; FlashAttention-2 proper when the
flash-attn package is installed), chunked log-probs. TRL: DPOTrainer 1.x with sdpa (its padded path).

Before timing, three checks on a tiny model: varlen attention equals per-sequence sdpa; packed DPO
losses equal padded ones; and a DPO fit under the FSDP strategy (1 GPU) leaves the reference
untouched and exports weights equal to the trained policy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import H100_BF16_PEAK, Workload, make_pairs, print_table, run_ours, run_trl  # noqa: E402

from zephyr_lightning import attention  # noqa: E402

ONE_B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4, max_position_embeddings=4096, sliding_window=None, tie_word_embeddings=False,
             rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def check_varlen(device) -> dict:
    from zephyr_lightning.models import build_tiny_mistral

    attention.register()
    model = build_tiny_mistral(seed=0, num_attention_heads=8, num_key_value_heads=2, hidden_size=128).to(device, torch.bfloat16).eval()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 32000, (n,), generator=g) for n in (37, 200, 5, 64)]
    row = torch.cat(seqs)[None].to(device)
    pos = torch.cat([torch.arange(len(s)) for s in seqs])[None].to(device)
    with torch.no_grad():
        model.set_attn_implementation("varlen")
        packed = model(input_ids=row, position_ids=pos, use_cache=False).logits[0].float()
        model.set_attn_implementation("sdpa")
        alone = torch.cat([model(input_ids=s[None].to(device), use_cache=False).logits[0].float() for s in seqs])
    diff = (packed - alone).abs().max().item()
    return {"varlen_vs_sdpa_max_abs_logit_diff": diff, "logit_scale": alone.abs().max().item(), "ok": diff < 5e-2}


def check_packed_dpo(device) -> dict:
    from zephyr_lightning import DPOModule, ModelSpec
    from zephyr_lightning.data.collators import PreferenceCollator

    w = Workload(pairs=8, prompt_range=(5, 40), completion_range=(3, 50))
    pairs = make_pairs(w)
    module = DPOModule(ModelSpec(dtype="bfloat16", attn_implementation="varlen"),
                       reference=ModelSpec(seed=3, dtype="bfloat16", attn_implementation="varlen"))
    module.configure_model()
    module.to(device).eval()
    out = {}
    with torch.no_grad():
        for packing in (False, True):
            batch = PreferenceCollator(0, packing=packing)(pairs)
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            out[packing] = module.compute(batch)["loss"].float()
    diff = (out[True] - out[False]).abs().max().item()
    return {"packed_vs_padded_max_abs_loss_diff_bf16": diff, "ok": diff < 2e-2}


def check_fsdp(device) -> dict:
    import lightning as L
    from transformers import AutoModelForCausalLM

    from zephyr_lightning import DPOModule, OptimizerConfig
    from zephyr_lightning.callbacks import HFExport
    from zephyr_lightning.callbacks.hf_export import full_state_dict
    from zephyr_lightning.data.collators import PreferenceCollator
    from zephyr_lightning.strategies import fsdp_strategy

    w = Workload(pairs=16, batch_size=4, prompt_range=(5, 40), completion_range=(3, 50))
    pairs = make_pairs(w)
    loader = torch.utils.data.DataLoader(pairs, batch_size=4, collate_fn=PreferenceCollator(0))
    module = DPOModule("builtin:tiny-mistral", optim=OptimizerConfig(lr=1e-3, warmup_ratio=0.0))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(accelerator="gpu", devices=1, strategy=fsdp_strategy(), precision="bf16-mixed", max_steps=4,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            callbacks=[HFExport(Path(tmp) / "hf")], default_root_dir=tmp)
        trainer.fit(module, train_dataloaders=loader)
        initial = DPOModule("builtin:tiny-mistral")
        initial.configure_model()
        full = {k: v.detach().float().cpu() for k, v in full_state_dict(trainer).items()}
        ref_untouched = all(torch.equal(full[f"reference.{k}"], v.float()) for k, v in initial.reference.state_dict().items())
        exported = AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf")
        export_matches = all(torch.equal(full[f"model.{k}"], v.float()) for k, v in exported.state_dict().items())
        policy_moved = not torch.equal(exported.lm_head.weight.float(), initial.model.lm_head.weight.float())
        wrapped = sum(type(m).__name__ == "FullyShardedDataParallel" for m in trainer.strategy.model.modules())
    return {"fsdp_units": wrapped, "reference_untouched": ref_untouched, "export_trained": policy_moved,
            "export_matches_policy": export_matches, "ok": ref_untouched and policy_moved and export_matches and wrapped >= 5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--runs", default="ours_live,ours_live_ckpt,ours_precomputed,trl_live,trl_live_nockpt,trl_precomputed")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--profile", type=Path, default=None, help="kernel table of 'ours_live_compile' steps")
    args = parser.parse_args()
    device = torch.device("cuda")
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "checks": {}, "runs": [], "errors": {}}

    def save():
        if args.out:
            args.out.write_text(json.dumps(report, indent=2, default=str))

    if not args.skip_checks:
        for name, check in (("varlen", check_varlen), ("packed_dpo", check_packed_dpo), ("fsdp", check_fsdp)):
            try:
                report["checks"][name] = check(device)
            except Exception as err:  # keep going: the timings are still worth having
                report["checks"][name] = {"ok": False, "error": repr(err), "trace": traceback.format_exc()[-3000:]}
            print(name, report["checks"][name], flush=True)
            save()

    from transformers import MistralConfig, MistralForCausalLM

    from zephyr_lightning.models import load_tokenizer

    attention.register()
    config = MistralConfig(**ONE_B)
    torch.manual_seed(0)
    with torch.device(device):
        base = MistralForCausalLM(config).to(torch.bfloat16)
    state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    params = sum(p.numel() for p in base.parameters())
    del base
    report["params"] = params

    def make_model(attn):
        def build():
            with torch.device(device):
                model = MistralForCausalLM(config).to(torch.bfloat16)
            model.load_state_dict(state)
            model.set_attn_implementation(attn)
            return model.train()
        return build

    w = Workload(steps=args.steps, batch_size=args.batch_size, pairs=max(320, 40 * args.batch_size))
    pairs = make_pairs(w)
    tokenizer = load_tokenizer("builtin:tiny-mistral")
    plans = {
        "ours_live": lambda: run_ours("ours live (packed, varlen)", w, pairs, make_model("varlen"), device, packing=True,
                                      precompute=False, precision="bf16-true", peak_flops=H100_BF16_PEAK),
        "ours_live_ckpt": lambda: run_ours("ours live + grad ckpt", w, pairs, make_model("varlen"), device, packing=True,
                                           precompute=False, gradient_checkpointing=True, precision="bf16-true",
                                           peak_flops=H100_BF16_PEAK),
        "ours_precomputed": lambda: run_ours("ours precomputed (packed, varlen)", w, pairs, make_model("varlen"), device,
                                             packing=True, precompute=True, precision="bf16-true", peak_flops=H100_BF16_PEAK),
        "ours_precomputed_ckpt": lambda: run_ours("ours precomputed + grad ckpt", w, pairs, make_model("varlen"), device,
                                                  packing=True, precompute=True, gradient_checkpointing=True,
                                                  precision="bf16-true", peak_flops=H100_BF16_PEAK),
        "ours_live_compile": lambda: run_ours("ours live + compile", w, pairs, make_model("varlen"), device, packing=True,
                                              precompute=False, compile=True, precision="bf16-true",
                                              peak_flops=H100_BF16_PEAK, profile_to=args.profile and str(args.profile)),
        "ours_live_ckpt_compile": lambda: run_ours("ours live + grad ckpt + compile", w, pairs, make_model("varlen"),
                                                   device, packing=True, precompute=False, gradient_checkpointing=True,
                                                   compile=True, precision="bf16-true", peak_flops=H100_BF16_PEAK),
        "ours_precomputed_compile": lambda: run_ours("ours precomputed + compile", w, pairs, make_model("varlen"), device,
                                                     packing=True, precompute=True, compile=True, precision="bf16-true",
                                                     peak_flops=H100_BF16_PEAK),
        "trl_live": lambda: run_trl("trl live (grad ckpt, its default)", w, pairs, make_model("sdpa"), tokenizer, device,
                                    precompute=False, gradient_checkpointing=True, bf16=True, peak_flops=H100_BF16_PEAK),
        "trl_live_nockpt": lambda: run_trl("trl live, no grad ckpt", w, pairs, make_model("sdpa"), tokenizer, device,
                                           precompute=False, gradient_checkpointing=False, bf16=True, peak_flops=H100_BF16_PEAK),
        "trl_precomputed": lambda: run_trl("trl precomputed (grad ckpt)", w, pairs, make_model("sdpa"), tokenizer, device,
                                           precompute=True, gradient_checkpointing=True, bf16=True, peak_flops=H100_BF16_PEAK),
    }
    results = []
    for key in args.runs.split(","):
        try:
            result = plans[key]()
            results.append(result)
            report["runs"].append(result.__dict__)
            print(result, flush=True)
        except Exception as err:
            report["errors"][key] = traceback.format_exc()[-3000:]
            print(f"{key} failed: {err!r}", flush=True)
        save()
    print(f"\n{report['device']}, torch {torch.__version__}, {params / 1e9:.2f}B params")
    print_table(results, {
        "ours live (packed, varlen)": "trl live (grad ckpt, its default)",
        "ours live + grad ckpt": "trl live (grad ckpt, its default)",
        "ours live + compile": "trl live (grad ckpt, its default)",
        "ours live + grad ckpt + compile": "trl live (grad ckpt, its default)",
        "ours precomputed + compile": "trl precomputed (grad ckpt)",
        "ours precomputed (packed, varlen)": "trl precomputed (grad ckpt)",
        "ours precomputed + grad ckpt": "trl precomputed (grad ckpt)",
    })


if __name__ == "__main__":
    main()
