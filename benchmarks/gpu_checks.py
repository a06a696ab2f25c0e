"""Correctness checks cheap enough to run before every timing on the lent GPU (and, with tiny shapes, on CPU).

- `varlen_vs_sdpa`: the varlen attention on a packed row against sdpa on each sequence alone, with bf16
  weights and with fp32 weights under bf16 autocast (the project's precision set-up);
- `packed_vs_padded_dpo`: DPO losses of packed and padded batches, fp32 policy + bf16 reference, autocast;
- `update_survival`: the share of trainable elements one AdamW step at lr 5e-7 actually changes, in a given
  precision set-up (issue 13: bf16 weights with plain AdamW lose most such updates);
- `fsdp_round_trip`: a DPO step under Lightning's FSDP strategy with fp32 shards and bf16-mixed: updates
  survive, the reference stays untouched, the export equals the trained policy (CUDA only).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from dpo_runs import ListData, PairWorkload, lightning_trainer, make_pairs


def varlen_vs_sdpa(device: torch.device) -> dict[str, Any]:
    from zephyr_lightning import attention
    from zephyr_lightning.models import build_tiny_mistral

    attention.register()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 32000, (n,), generator=g) for n in (37, 200, 5, 64)]
    row = torch.cat(seqs)[None].to(device)
    pos = torch.cat([torch.arange(len(s)) for s in seqs])[None].to(device)
    out: dict[str, Any] = {}
    for label, dtype, autocast in (("bf16_weights", torch.bfloat16, False), ("fp32_weights_bf16_autocast", torch.float32, True)):
        model = build_tiny_mistral(seed=0, num_attention_heads=8, num_key_value_heads=2, hidden_size=128)
        model = model.to(device, dtype).eval()
        try:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                model.set_attn_implementation("varlen")
                packed = model(input_ids=row, position_ids=pos, use_cache=False).logits[0].float()
                model.set_attn_implementation("sdpa")
                alone = torch.cat([model(input_ids=s[None].to(device), use_cache=False).logits[0].float() for s in seqs])
            diff = (packed - alone).abs().max().item()
            out[label] = {"max_abs_logit_diff": diff, "logit_scale": alone.abs().max().item(), "ok": diff < 5e-2}
        except Exception as err:  # recorded: the timed runs that use this path would fail the same way
            out[label] = {"ok": False, "error": f"{type(err).__name__}: {str(err)[:500]}"}
    out["ok"] = all(v["ok"] for v in out.values())
    return out


def packed_vs_padded_dpo(device: torch.device) -> dict[str, Any]:
    from zephyr_lightning import DPOModule, ModelSpec
    from zephyr_lightning.data.collators import PreferenceCollator

    pairs = make_pairs(PairWorkload(pairs=8, prompt_range=(5, 40), completion_range=(3, 50)))
    module = DPOModule(ModelSpec(dtype="float32", attn_implementation="varlen"),
                       reference=ModelSpec(seed=3, dtype="bfloat16", attn_implementation="varlen"))
    module.configure_model()
    module.to(device).eval()
    losses = {}
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        for packing in (False, True):
            batch = PreferenceCollator(0, packing=packing)(pairs)
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            losses[packing] = module.preference_step(batch)["loss"].float()
    diff = (losses[True] - losses[False]).abs().max().item()
    return {"max_abs_loss_diff": diff, "set_up": "fp32 policy, bf16 reference, bf16 autocast", "ok": diff < 2e-2}


class _UpdateProbe(L.Callback):
    """Snapshots the policy before the first step and records which elements got a nonzero gradient."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.before = {n: p.detach().clone() for n, p in pl_module.model.named_parameters() if p.requires_grad}
        self.dtypes = sorted({str(p.dtype) for p in pl_module.model.parameters() if p.requires_grad})

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.with_grad = {n: (p.grad != 0) for n, p in pl_module.model.named_parameters()
                          if p.requires_grad and p.grad is not None}

    def counts(self, pl_module) -> dict[str, Any]:
        total = changed = graded = changed_graded = 0
        for name, param in pl_module.model.named_parameters():
            if name not in self.before:
                continue
            moved = param.detach() != self.before[name]
            mask = self.with_grad.get(name, torch.zeros_like(moved))
            total += moved.numel()
            changed += int(moved.sum())
            graded += int(mask.sum())
            changed_graded += int((moved & mask).sum())
        return {"trainable_elements": total, "changed_share": changed / total,
                "nonzero_grad_elements": graded, "changed_share_of_nonzero_grad": changed_graded / max(graded, 1),
                "parameter_dtypes": self.dtypes}


def update_survival(device: torch.device, policy, reference, *, precision: str, lr: float = 5e-7,
                    packing: bool = False, w: PairWorkload | None = None) -> dict[str, Any]:
    """One DPO optimizer step (AdamW, no warmup, no decay) at ``lr``: which trainable elements changed.

    Elements whose gradient is exactly zero (embedding rows of tokens absent from the batch) cannot move under
    AdamW; ``changed_share_of_nonzero_grad`` is the figure to read (about 1.0 when updates survive).
    """
    from zephyr_lightning import DPOModule, OptimizerConfig
    from zephyr_lightning.data.collators import PreferenceCollator

    w = w or PairWorkload(pairs=8, batch_size=4, prompt_range=(32, 128), completion_range=(16, 128), steps=1)
    probe = _UpdateProbe()
    with tempfile.TemporaryDirectory() as tmp:
        module = DPOModule(policy, reference=reference, optim=OptimizerConfig(lr=lr, warmup_ratio=0.0))
        data = ListData(make_pairs(w), PreferenceCollator(0, packing=packing), w.batch_size)
        trainer = lightning_trainer(device, precision, 1, tmp, [probe])
        trainer.fit(module, datamodule=data)
        out = {"precision": precision, "lr": lr, **probe.counts(module)}
    out["ok"] = out["changed_share_of_nonzero_grad"] >= 0.9
    return out


def fsdp_round_trip(device: torch.device) -> dict[str, Any]:
    """One DPO step at lr 5e-7 under FSDP (1 GPU), fp32 shards, bf16-mixed: what conf/strategy/fsdp.yaml runs."""
    from transformers import AutoModelForCausalLM

    from zephyr_lightning import DPOModule, OptimizerConfig
    from zephyr_lightning.callbacks import HFExport
    from zephyr_lightning.callbacks.hf_export import full_state_dict
    from zephyr_lightning.data.collators import PreferenceCollator
    from zephyr_lightning.strategies import fsdp_strategy

    pairs = make_pairs(PairWorkload(pairs=8, prompt_range=(5, 40), completion_range=(3, 50)))
    loader = torch.utils.data.DataLoader(pairs, batch_size=4, collate_fn=PreferenceCollator(0))
    module = DPOModule("builtin:tiny-mistral", optim=OptimizerConfig(lr=5e-7, warmup_ratio=0.0))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(accelerator="gpu", devices=1, strategy=fsdp_strategy(), precision="bf16-mixed", max_steps=1,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            callbacks=[HFExport(Path(tmp) / "hf")], default_root_dir=tmp)
        trainer.fit(module, train_dataloaders=loader)
        initial = DPOModule("builtin:tiny-mistral")
        initial.configure_model()
        full = {k: v.detach().float().cpu() for k, v in full_state_dict(trainer).items()}
        # Embedding rows of tokens absent from the batch get no gradient and cannot move: leave them out.
        start = {k: v.float() for k, v in initial.model.state_dict().items() if "embed_tokens" not in k}
        moved = sum(int((full[f"model.{k}"] != v).sum()) for k, v in start.items())
        elements = sum(v.numel() for v in start.values())
        ref_untouched = all(torch.equal(full[f"reference.{k}"], v.float()) for k, v in initial.reference.state_dict().items())
        exported = AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf")
        export_matches = all(torch.equal(full[f"model.{k}"], v.float()) for k, v in exported.state_dict().items())
        wrapped = sum(type(m).__name__ == "FullyShardedDataParallel" for m in trainer.strategy.model.modules())
        shard_dtypes = sorted({str(p.dtype) for p in trainer.strategy.model.parameters()})
    return {"fsdp_units": wrapped, "shard_dtypes": shard_dtypes, "changed_share_without_embeddings": moved / elements,
            "reference_untouched": ref_untouched, "export_matches_policy": export_matches,
            "ok": ref_untouched and export_matches and wrapped >= 5 and moved / elements > 0.9}
