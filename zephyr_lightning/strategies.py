"""Lightning strategies set up for causal LMs: FSDP wrapping the decoder layers of the policy and the
reference alike, and DeepSpeed ZeRO-3 as Zephyr used it."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Literal

from torch import nn


def resolve_layer_class(name: str) -> type[nn.Module]:
    """A decoder layer class from its name: ``MistralDecoderLayer`` (looked up in transformers'
    ``models.mistral.modeling_mistral``) or a dotted path ``package.module.Class``."""
    if "." in name:
        module_name, _, class_name = name.rpartition(".")
    else:
        if not name.endswith("DecoderLayer"):
            raise ValueError(f"strategy layer class {name!r}: give a *DecoderLayer name or a dotted path")
        family = name[: -len("DecoderLayer")].lower()
        module_name, class_name = f"transformers.models.{family}.modeling_{family}", name
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"strategy layer class {name!r} not found in {module_name}: give a dotted path") from err


def fsdp_strategy(
    layer_classes: list[str] | tuple[str, ...] = ("MistralDecoderLayer",),
    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD",
    activation_checkpointing: bool = False,
    state_dict_type: Literal["full", "sharded"] = "full",
    cpu_offload: bool = False,
    **kwargs: Any,
):
    """`FSDPStrategy` whose wrap policy is the model's decoder layer class.

    Every instance of those classes is its own FSDP unit, in the policy and in the frozen reference,
    so both are sharded. ``use_orig_params=True`` lets frozen and trainable parameters share the root
    unit. Mixed precision follows the Trainer's ``precision`` (``bf16-mixed`` in conf/strategy/fsdp.yaml).
    ``state_dict_type="full"`` gathers whole checkpoints on rank 0 (simple, fine up to ~7B);
    ``"sharded"`` writes one file per rank (faster and leaner for large models). The HF export gathers a
    full state dict either way.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    classes = {resolve_layer_class(name) for name in layer_classes}
    return FSDPStrategy(
        auto_wrap_policy=classes,
        activation_checkpointing_policy=classes if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        cpu_offload=cpu_offload,
        use_orig_params=True,
        **kwargs,
    )


def deepspeed_zero3_strategy(offload_optimizer: bool = False, offload_parameters: bool = False, **kwargs: Any):
    """DeepSpeed ZeRO stage 3 (the set-up of the Zephyr paper and the alignment handbook).

    Needs ``pip install deepspeed`` (the ``deepspeed`` extra). Both models are partitioned; log-probs use
    the model's own head under ZeRO-3 (its weights exist only inside the head's forward).
    """
    if importlib.util.find_spec("deepspeed") is None:
        raise ImportError("strategy=deepspeed_zero3 needs DeepSpeed: pip install -e '.[deepspeed]'")
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(stage=3, offload_optimizer=offload_optimizer, offload_parameters=offload_parameters, **kwargs)
