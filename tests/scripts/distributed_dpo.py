"""Run by tests/test_distributed.py: DPO on 2 CPU processes (gloo) with a real Lightning strategy.

    python tests/scripts/distributed_dpo.py STRATEGY DATA_DIR OUT_DIR [lora]

With ``lora`` the policy trains LoRA adapters (the reference is its base with the adapters disabled).
Each rank writes OUT_DIR/rank<r>.json (the prompt_ids it trained on) and OUT_DIR/rank<r>.pt (its final
policy weights, gathered where the strategy shards them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

from zephyr_lightning import DPOModule, ModelSpec, OptimizerConfig, PreferenceDataModule
from zephyr_lightning.callbacks.hf_export import full_state_dict


class RecordPrompts(L.Callback):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.extend(batch["prompt_id"])


def main() -> None:
    strategy_name, data_dir, out_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if strategy_name == "fsdp":
        from zephyr_lightning.strategies import fsdp_strategy

        strategy = fsdp_strategy(state_dict_type="full")
    else:
        strategy = strategy_name
    L.seed_everything(0)
    data = PreferenceDataModule(data_dir, "builtin:tiny-mistral", batch_size=2, max_length=96, max_prompt_length=48,
                                val_split=None)
    lora = sys.argv[4:] == ["lora"]
    policy = ModelSpec(peft={"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}) \
        if lora else ModelSpec()
    module = DPOModule(policy, optim=OptimizerConfig(lr=1e-2, warmup_ratio=0.0))
    recorder = RecordPrompts()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[recorder], default_root_dir=out_dir, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    state = {k: v.detach().cpu().clone() for k, v in full_state_dict(trainer).items() if k.startswith("model.")}
    rank = trainer.global_rank
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{rank}.json").write_text(json.dumps({"seen": recorder.seen, "steps": trainer.global_step}))
    if rank == 0 or strategy_name != "fsdp":
        torch.save(state, out_dir / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
