"""Run by tests/test_distributed.py: LoRA dDPO under torch FSDP on 2 CPU processes (gloo), wrapped as our
FSDP strategy wraps it.

    python tests/scripts/fsdp_lora.py DATA_DIR OUT_DIR

Lightning refuses FSDP on CPU (its strategy passes ``device_id=None`` for a CPU device, and FSDP then
looks for an accelerator), but torch's FSDP itself runs on CPU with gloo when handed
``device_id=torch.device("cpu")``. So this script does what ``FSDPStrategy._setup_model`` does, with the
arguments `zephyr_lightning.strategies.fsdp_strategy` gives it (auto-wrap policy on the decoder layers,
``use_orig_params=True``, full shard) and the mixed precision of ``conf/strategy/fsdp.yaml``
(``bf16-mixed``: bf16 compute over float32 shards): the whole `DPOModule` is the root unit, and each step
runs ``preference_step`` through the root's forward (Lightning's forward redirection), so the reference
is the policy with its adapters disabled, inside FSDP.

Each rank writes OUT_DIR/rank<r>.pt: the initial (unwrapped) state dict, the FSDP unit count, the adapter
keys the module keeps in checkpoints, the reference log-probs of the first and the last step, and the full
state dict gathered after the steps.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS = 3


def run(rank: int, data_dir: str, out_dir: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from lightning.pytorch.plugins.precision import FSDPPrecision
    from lightning.pytorch.strategies.strategy import _ForwardRedirection
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from zephyr_lightning import DPOModule, ModelSpec, OptimizerConfig, PreferenceDataModule
    from zephyr_lightning.strategies import fsdp_strategy

    torch.manual_seed(0)  # the same initial adapters on both ranks, as Lightning's seed_everything gives
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    module = DPOModule(ModelSpec(peft=lora), optim=OptimizerConfig(lr=1e-2, warmup_ratio=0.0))
    module.configure_model()
    initial = {k: v.detach().clone() for k, v in module.state_dict().items()}

    strategy = fsdp_strategy()
    wrapped = FSDP(module, cpu_offload=strategy.cpu_offload,
                   mixed_precision=FSDPPrecision("bf16-mixed").mixed_precision_config,
                   sharding_strategy=strategy.sharding_strategy, device_id=torch.device("cpu"), **strategy.kwargs)
    units = sum(isinstance(m, FSDP) for m in wrapped.modules())
    module.train()  # DPOModule.train keeps a separate reference in eval mode; here there is none

    data = PreferenceDataModule(data_dir, "builtin:tiny-mistral", batch_size=2, max_length=96, max_prompt_length=48,
                                val_split=None)
    data.setup("fit")
    batches = iter(data.train_dataloader())
    # Each rank its own batches, as a distributed sampler gives.
    mine = [batch for i, batch in zip(range(2 * STEPS), batches) if i % 2 == rank]
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    redirect = _ForwardRedirection()
    references = []
    original_reference = module.reference_logps

    def recording_reference(batch, policy):
        result = original_reference(batch, policy)
        references.append(torch.stack([result.chosen, result.rejected]).detach().clone())
        return result

    module.reference_logps = recording_reference
    for batch in mine:
        values = redirect(wrapped, module, "preference_step", batch)
        values["loss"].mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    # The first batch again: its reference log-probs must be those of the untouched base, as at step 1.
    redirect(wrapped, module, "preference_step", mine[0])

    # Both ranks gather (rank0_only=False) so the test can compare them. No offload_to_cpu: for CPU tensors it
    # keeps views of the freed unsharded buffers and the clone segfaults (torch 2.13); on GPU it copies.
    with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT,
                              FullStateDictConfig(offload_to_cpu=False, rank0_only=False)):
        gathered = {k: v.detach().clone() for k, v in wrapped.state_dict().items()}
    torch.save({"initial": initial, "units": units, "layers": module.model.config.num_hidden_layers, "adapter_keys": sorted(module.adapter_keys),
                "first_reference": references[0], "last_reference": references[-1], "gathered": gathered,
                "trainable_dtypes": sorted({str(p.dtype) for p in wrapped.parameters() if p.requires_grad})},
               Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def main() -> None:
    data_dir, out_dir = sys.argv[1], sys.argv[2]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    import socket

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run, args=(data_dir, out_dir, port), nprocs=2)


if __name__ == "__main__":
    main()
