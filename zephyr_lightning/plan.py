"""Memory planner: what one training step holds per device, by component, and whether it fits a GPU.

`plan_memory` takes the model's shape and the run's set-up (precision, strategy, device count, LoRA,
quantization, reference, batch tokens, activation checkpointing) and returns a `MemoryPlan` of bytes per
device:

- weights: the trained model as stored (sharded by FSDP and ZeRO-3), frozen base and adapters included;
- gradients: one per trainable parameter in its dtype (DDP adds its bucket copy);
- optimizer: AdamW's two moments, in the parameters' dtype (DeepSpeed keeps them in float32);
- masters: float32 master weights DeepSpeed keeps beside bf16 weights (fp32 weights are their own masters);
- reference: a separate frozen DPO reference; none when it shares the policy's weights (LoRA), is
  precomputed, or uniform (a continued adapter's frozen copy is counted here);
- autocast copies: the bf16 copies of fp32 weights that autocast (``*-mixed`` precision without FSDP)
  saves for backward;
- activations: what autograd saves in the forward pass, from the decoder's shape and the tokens of the
  largest micro-batch, with and without activation checkpointing;
- workspace: transients of the backward pass (one layer's gradients, a log-prob chunk, FSDP's gathered units).

The activation formula counts the tensors a Mistral/Llama decoder layer saves, per token, as measured with
``torch.autograd.graph.saved_tensors_hooks`` on the tiny model (tests/test_plan.py keeps it within 15% of the
measured bytes); docs/memory.md compares it with the GPU peaks of benchmarks/README.md. Nothing here imports
Hydra: `plan_from_config` reads a composed config as plain dicts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Strategy = Literal["single", "ddp", "fsdp", "deepspeed_zero3"]
ReferenceKind = Literal["separate", "shared", "adapter_copy", "precomputed", "none"]
GPUS_GB = {"24 GB (RTX 4090, L4, A10G)": 24, "40 GB (A100 40GB)": 40, "80 GB (A100/H100 80GB)": 80, "141 GB (H200)": 141}
# What a plan must leave free on a GPU: the CUDA context, the caching allocator's fragmentation, and what the
# plan leaves out (the data loader's pinned buffers, NCCL's buffers, kernels' scratch space).
HEADROOM = 0.10
GIB = 2**30
# The log-prob code's chunk of float32 logits (zephyr_lightning.logprobs.DEFAULT_CHUNK_ELEMENTS).
LOGPROB_CHUNK_ELEMENTS = 2**25

_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "auto": 2}
# NF4 stores 4 bits per weight plus one absmax per 64 weights; double quantization stores those as 8 bits
# with a float32 scale per 256 blocks (QLoRA, Dettmers et al. 2023, section 3). LLM.int8(): 1 byte per weight.
_QUANTIZED_BYTES = {"4bit": 0.5 + 1 / 64 + 4 / (64 * 256), "8bit": 1.0}


class ShapeUnknown(ValueError):
    """The model's architecture cannot be read without the network and is not in `KNOWN_SHAPES`."""


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a Mistral/Llama-style decoder that memory depends on (its ``config.json``)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        heads = int(config["num_attention_heads"])
        return cls(
            vocab_size=int(config["vocab_size"]), hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]), num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=heads, num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each projection of one decoder layer, by its module name."""
        h, q, kv, f = self.hidden_size, self.num_attention_heads * self.head_dim, \
            self.num_key_value_heads * self.head_dim, self.intermediate_size
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}

    @property
    def decoder_linear_parameters(self) -> int:
        return self.num_hidden_layers * sum(i * o for i, o in self.linear_shapes().values())

    @property
    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def norm_parameters(self) -> int:
        return (2 * self.num_hidden_layers + 1) * self.hidden_size

    @property
    def parameters(self) -> int:
        return self.decoder_linear_parameters + self.embedding_parameters + self.norm_parameters


def _mistral(vocab: int, h: int, f: int, layers: int, heads: int, kv: int) -> ModelShape:
    return ModelShape(vocab, h, f, layers, heads, kv, h // heads)


# Architectures of models a plan may name without the network (each from its config.json on the hub).
MISTRAL_7B = _mistral(32000, 4096, 14336, 32, 32, 8)
LLAMA2_70B = _mistral(32000, 8192, 28672, 80, 64, 8)
KNOWN_SHAPES: dict[str, ModelShape] = {
    "mistralai/Mistral-7B-v0.1": MISTRAL_7B,
    "HuggingFaceH4/mistral-7b-sft-beta": MISTRAL_7B,
    "HuggingFaceH4/zephyr-7b-beta": MISTRAL_7B,
    "alignment-handbook/zephyr-7b-sft-full": MISTRAL_7B,
    "alignment-handbook/zephyr-7b-sft-qlora": MISTRAL_7B,  # an adapter on Mistral-7B-v0.1
    "meta-llama/Llama-2-7b-hf": _mistral(32000, 4096, 11008, 32, 32, 32),
    "meta-llama/Llama-2-70b-hf": LLAMA2_70B,
    "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": _mistral(32000, 2048, 5632, 22, 32, 4),
}


@dataclass(frozen=True)
class LoraShape:
    """What memory depends on in a LoRA config."""

    r: int = 8
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    lora_dropout: float = 0.0
    modules_to_save: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Any) -> LoraShape:
        from zephyr_lightning.adapters import setting

        targets = setting(settings, "target_modules") or ("q_proj", "v_proj")  # peft's default for Mistral/Llama
        targets = (targets,) if isinstance(targets, str) else tuple(sorted(targets))
        return cls(r=int(setting(settings, "r", 8)), target_modules=targets,
                   lora_dropout=float(setting(settings, "lora_dropout", 0.0) or 0.0),
                   modules_to_save=tuple(setting(settings, "modules_to_save") or ()))

    def targets(self, shape: ModelShape) -> dict[str, tuple[int, int]]:
        return {name: dims for name, dims in shape.linear_shapes().items() if name in self.target_modules}

    def parameters(self, shape: ModelShape) -> int:
        adapters = shape.num_hidden_layers * sum(self.r * (i + o) for i, o in self.targets(shape).values())
        saved = sum(shape.vocab_size * shape.hidden_size for name in self.modules_to_save
                    if name in ("lm_head", "embed_tokens"))
        return adapters + saved


@dataclass
class MemoryPlan:
    """Bytes per device, by component; ``activations`` as configured, ``activations_other`` with activation
    checkpointing switched the other way (for the comparison the planner prints)."""

    components: dict[str, float]
    activations_other: float
    gradient_checkpointing: bool
    devices: int
    strategy: str
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.components.values())

    @property
    def total_other(self) -> float:
        return self.total - self.components["activations"] + self.activations_other

    def fits(self, gpu_gb: float) -> bool:
        return self.total <= (1 - HEADROOM) * gpu_gb * 1e9

    def describe(self) -> str:
        """A table in GiB, and which named GPUs it fits."""
        other = "without" if self.gradient_checkpointing else "with"
        rows = [f"{name:<16} {value / GIB:>9.2f} GiB" for name, value in self.components.items()]
        rows.append(f"{'total':<16} {self.total / GIB:>9.2f} GiB per device ({self.devices} x {self.strategy})")
        rows.append(f"{'':<16} {self.total_other / GIB:>9.2f} GiB {other} activation checkpointing "
                    f"(activations {self.activations_other / GIB:.2f} GiB)")
        fits = [f"{name}: {'fits' if self.fits(gb) else 'does NOT fit'}" for name, gb in GPUS_GB.items()]
        return "\n".join([*rows, *fits, *(f"note: {note}" for note in self.notes)])


def _adapter_bytes(precision: str) -> int:
    # PEFT creates adapters in float32; only a *-true precision converts them.
    return 2 if str(precision) in ("bf16-true", "16-true") else 4


def layer_activation_bytes(
    shape: ModelShape,
    *,
    compute_bytes: int,
    full: bool,
    lora: LoraShape | None,
    adapter_bytes: int,
    autocast: bool,
    eager_attention_length: int = 0,
) -> float:
    """Bytes autograd saves per token in one decoder layer's forward pass (Mistral/Llama, RMSNorm in float32).

    ``full``: every weight trains (else a frozen base, with ``lora`` adapters or none). Each tensor is counted
    where something needs it for backward: RMSNorm keeps its float32 input, and its normalised input when its
    weight trains; a projection keeps its input when its weight trains; a LoRA adapter keeps its input (cast to
    the adapters' dtype, after dropout, with dropout's mask) and its rank-r output; attention keeps q, k, v and
    its output (plus the score matrix for eager attention); the MLP keeps gate, SiLU(gate) and up, and
    SiLU(gate) * up when down_proj or its adapter trains. Under autocast the float32 residual stream stays
    float32 and each trained projection keeps its own bf16 copy of its input.
    """
    h, f = shape.hidden_size, shape.intermediate_size
    q_out = shape.num_attention_heads * shape.head_dim
    kv = shape.num_key_value_heads * shape.head_dim
    c = compute_bytes
    norm_in = 4  # RMSNorm upcasts its input to float32 and keeps it
    residual = 4 if autocast else c
    targets = lora.targets(shape) if lora else {}
    out = 2 * h * norm_in  # both norms' inputs
    if full:
        out += 2 * h * (4 if autocast else c)  # both norms' normalised values (their weights train)
    # Inputs of the projections: shared by q/k/v (one tensor), gate/up (one), o_proj (attention's output, kept
    # by attention anyway), down_proj (SiLU(gate) * up).
    inputs = {"qkv": (("q_proj", "k_proj", "v_proj"), h), "mlp": (("gate_proj", "up_proj"), h),
              "o": (("o_proj",), 0), "down": (("down_proj",), f)}
    for names, width in inputs.values():
        if full:
            out += width * (c if not autocast else 4)  # the norm's output, kept once
            if autocast:
                out += len(names) * width * c  # each projection's own bf16 cast
            continue
        hit = [n for n in names if n in targets]
        if not hit:
            continue
        dims = targets[hit[0]][0]
        dropout = lora.lora_dropout > 0
        if adapter_bytes != residual or autocast:
            if not dropout:
                out += len(hit) * dims * adapter_bytes  # each adapter's own cast of its input
        else:
            out += width * c  # the shared input itself
        if dropout:
            out += len(hit) * dims * (adapter_bytes + 1)  # each adapter's dropout output and its mask
    out += (q_out + 2 * kv + q_out) * c  # q, k, v after rotary, and attention's output
    out += 3 * f * c  # gate, SiLU(gate), up
    if eager_attention_length:
        out += shape.num_attention_heads * eager_attention_length * c  # softmax(QK^T), per token
    out += sum(lora.r * adapter_bytes for _ in targets) if lora else 0
    return float(out)


def model_weight_bytes(shape: ModelShape, dtype_bytes: int, quantization: str | None) -> float:
    """The base model's weights: all in ``dtype_bytes``, or quantized decoder projections with the rest in
    float32 (PEFT's ``prepare_model_for_kbit_training`` upcasts norms, embeddings and head)."""
    if quantization is None:
        return shape.parameters * dtype_bytes
    others = shape.embedding_parameters + shape.norm_parameters
    return shape.decoder_linear_parameters * _QUANTIZED_BYTES[quantization] + others * 4


def plan_memory(
    shape: ModelShape,
    *,
    tokens: int,
    sequence_length: int = 0,
    dtype: str = "float32",
    precision: str | int = "32-true",
    strategy: Strategy = "single",
    devices: int = 1,
    lora: LoraShape | None = None,
    quantization: str | None = None,
    reference: ReferenceKind = "none",
    reference_dtype: str | None = None,
    gradient_checkpointing: bool = False,
    eager_attention: bool = False,
    scored_tokens: int | None = None,
) -> MemoryPlan:
    """Memory per device of one training step of a causal LM of ``shape``.

    ``tokens``: tokens of the largest micro-batch on one device, padding included (DPO: chosen and rejected).
    ``reference``: ``separate`` (a second frozen model), ``shared`` (the policy's own weights with adapters
    off), ``adapter_copy`` (a frozen copy of a continued adapter), ``precomputed`` or ``none`` (SFT,
    reference-free). ``sequence_length``: for eager attention's score matrices.
    """
    precision = str(precision)
    true_dtype = {"bf16-true": 2, "16-true": 2, "64-true": 8}.get(precision)
    autocast = precision.endswith("-mixed") and strategy != "fsdp"
    weight_bytes = true_dtype or _BYTES.get(str(dtype), 4)
    if strategy == "deepspeed_zero3" and precision.endswith("-mixed"):
        weight_bytes = 2  # ZeRO-3 bf16: bf16 weights, fp32 masters and moments kept apart
    compute = 2 if (precision.startswith(("bf16", "16")) or true_dtype == 2) else weight_bytes
    shards = devices if strategy in ("fsdp", "deepspeed_zero3") else 1
    adapter = _adapter_bytes(precision)
    notes = []

    full = lora is None
    trainable = shape.parameters if full else lora.parameters(shape)
    trained_bytes = weight_bytes if full else adapter
    base = model_weight_bytes(shape, weight_bytes, quantization)
    components: dict[str, float] = {}
    components["weights"] = (base + (0 if full else trainable * adapter)) / shards
    gradients = trainable * trained_bytes / shards
    if strategy == "ddp" and devices > 1:
        gradients *= 2  # DDP's gradient buckets are a second copy (gradient_as_bucket_view off)
    components["gradients"] = gradients
    moment_bytes = 4 if strategy == "deepspeed_zero3" else trained_bytes
    components["optimizer"] = 2 * trainable * moment_bytes / shards
    components["masters"] = 4 * trainable / shards if strategy == "deepspeed_zero3" and trained_bytes < 4 else 0.0
    if reference == "separate":
        ref_bytes = true_dtype or (2 if strategy == "deepspeed_zero3" else _BYTES.get(str(reference_dtype or dtype), 4))
        components["reference"] = model_weight_bytes(shape, ref_bytes, quantization) / shards
    elif reference == "adapter_copy":
        components["reference"] = lora.parameters(shape) * adapter if lora else 0.0
    else:
        components["reference"] = 0.0
    linear = shape.decoder_linear_parameters
    components["autocast copies"] = linear * compute if autocast and weight_bytes > compute and not quantization else 0.0

    per_layer = layer_activation_bytes(shape, compute_bytes=compute, full=full, lora=lora, adapter_bytes=adapter,
                                       autocast=autocast, eager_attention_length=sequence_length if eager_attention else 0)
    residual = 4 if autocast else compute
    h = shape.hidden_size
    # Outside the layers: the final norm (input, and its normalised value when it trains) and the hidden
    # states of the scored tokens with their log-sum-exp (zephyr_lightning.logprobs).
    scored = tokens if scored_tokens is None else scored_tokens
    head = tokens * h * (4 + (compute if full else 0)) + scored * (h * compute + 4)
    layers = shape.num_hidden_layers
    stored = tokens * per_layer * layers + head
    checkpointed = tokens * h * residual * layers + head  # each layer's input; a layer is recomputed in backward
    components["activations"] = checkpointed if gradient_checkpointing else stored
    other = stored if gradient_checkpointing else checkpointed

    chunk = min(scored, max(16, LOGPROB_CHUNK_ELEMENTS // shape.vocab_size)) * shape.vocab_size * 4
    workspace = tokens * per_layer + 2 * chunk  # one layer's gradients (or its recomputation) and a logits chunk
    if strategy == "fsdp" and devices > 1:
        layer_params = sum(i * o for i, o in shape.linear_shapes().values())
        workspace += 2 * layer_params * compute  # two units gathered at a time (this one and the prefetched next)
    components["workspace"] = workspace
    if quantization and strategy in ("fsdp", "deepspeed_zero3"):
        notes.append("quantized weights are not sharded by this strategy here; QLoRA runs on one GPU or under DDP")
    return MemoryPlan(components, other, gradient_checkpointing, devices,
                      "single device" if strategy == "single" else strategy, notes)


# ---- from a composed training config -----------------------------------------------------------------


def model_shape(model: Mapping[str, Any]) -> ModelShape:
    """The architecture a ModelSpec node names: built-in (with ``config_overrides``), a local folder's
    config.json (an adapter folder's base), the transformers cache, or `KNOWN_SHAPES`."""
    from zephyr_lightning.adapters import adapter_folder_base
    from zephyr_lightning.models import BUILTIN_PREFIX, TINY_MISTRAL_CONFIG

    name = str(model.get("name_or_path", ""))
    if name.startswith(BUILTIN_PREFIX):
        return ModelShape.from_config({**TINY_MISTRAL_CONFIG, **(model.get("config_overrides") or {})})
    folder = Path(name)
    if (folder / "config.json").is_file():
        return ModelShape.from_config(json.loads((folder / "config.json").read_text()))
    if name in KNOWN_SHAPES:
        return KNOWN_SHAPES[name]
    base = adapter_folder_base(name, model.get("revision")) if folder.is_dir() else None
    if base:
        return model_shape({**model, "name_or_path": base})
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name, revision=model.get("revision"), local_files_only=True)
        return ModelShape.from_config(config.to_dict())
    except Exception as error:
        raise ShapeUnknown(f"model.name_or_path={name!r}: its config.json is neither local nor cached, and it is not "
                           f"one of the known shapes ({', '.join(KNOWN_SHAPES)}): {type(error).__name__}") from None


def _strategy(cfg: Mapping[str, Any]) -> tuple[Strategy, bool]:
    """The strategy's kind, and whether it checkpoints activations itself (FSDP's option)."""
    strategy = (cfg.get("trainer") or {}).get("strategy")
    target = str(strategy.get("_target_", "")) if isinstance(strategy, Mapping) else str(strategy or "")
    lowered = target.lower()
    if "fsdp" in lowered:
        return "fsdp", bool(strategy.get("activation_checkpointing")) if isinstance(strategy, Mapping) else False
    if "deepspeed" in lowered:
        return "deepspeed_zero3", False
    if "ddp" in lowered:
        return "ddp", False
    return "single", False


def _devices(trainer: Mapping[str, Any]) -> int:
    devices = trainer.get("devices", 1)
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        count = len(devices)
    elif isinstance(devices, int):
        count = devices
    elif str(devices).isdigit():
        count = int(devices)
    else:  # auto / -1: every visible GPU, else one process
        import torch

        count = torch.cuda.device_count() or 1
    return max(1, count) * int(trainer.get("num_nodes", 1) or 1)


def plan_from_config(cfg: Mapping[str, Any], *, devices: int | None = None) -> MemoryPlan:
    """The plan of a composed training config (plain dicts, resolved), as `python train.py` would run it."""
    module = cfg.get("module") or {}
    model = module.get("policy") or module.get("model") or cfg.get("model") or {}
    data, trainer = cfg.get("data") or {}, cfg.get("trainer") or {}
    dpo = "DPOModule" in str(module.get("_target_", ""))
    batch, max_length = int(data.get("batch_size") or 8), int(data.get("max_length") or 1024)
    sequences = batch * (2 if dpo else 1)
    strategy, fsdp_checkpointing = _strategy(cfg)
    peft, folder = model.get("peft"), str(model.get("name_or_path", ""))
    lora = LoraShape.from_settings(peft) if peft else _adapter_folder_lora(folder)
    reference: ReferenceKind = "none"
    if dpo and not module.get("reference_free"):
        if module.get("precompute_reference"):
            reference = "precomputed"
        elif module.get("reference") is not None:
            reference = "separate"
        elif lora is not None:
            reference = "shared" if peft else "adapter_copy"
        else:
            reference = "separate"
    return plan_memory(
        model_shape(model), tokens=sequences * max_length, sequence_length=max_length,
        dtype=str(model.get("dtype", "float32")), precision=trainer.get("precision", "32-true"), strategy=strategy,
        devices=devices or _devices(trainer), lora=lora, quantization=model.get("quantization"), reference=reference,
        reference_dtype=module.get("reference_dtype"),
        gradient_checkpointing=bool(model.get("gradient_checkpointing")) or fsdp_checkpointing,
        eager_attention=model.get("attn_implementation") == "eager",
    )


def _adapter_folder_lora(name: str) -> LoraShape | None:
    config = Path(name) / "adapter_config.json"
    if not config.is_file():
        return None
    return LoraShape.from_settings(json.loads(config.read_text()))


def tokens_note(cfg: Mapping[str, Any]) -> str:
    """How the plan counted tokens, for the printout."""
    data = cfg.get("data") or {}
    dpo = "DPOModule" in str((cfg.get("module") or {}).get("_target_", ""))
    batch, length = data.get("batch_size", 8), data.get("max_length", 1024)
    what = f"{batch} pairs x 2 sequences" if dpo else f"{batch} sequences"
    return f"activations for the longest micro-batch: {what} x max_length {length} tokens per device"


def smallest_gpu(plan: MemoryPlan) -> str:
    """The smallest named GPU the plan fits, in GB, or "none"."""
    fitting = [gb for gb in GPUS_GB.values() if plan.fits(gb)]
    return f"{min(fitting)} GB" if fitting else "none"


# The README's table: dDPO as the handbook's QLoRA recipe runs it (4 pairs x 2 sequences x 1024 tokens per
# device, activation checkpointing, bf16 compute, AdamW), for each kind of training and device count.
SCALING_SETUPS = {
    "full": "all weights: float32 masters, bf16-mixed; 1 GPU alone, else FSDP; a separate float32 reference",
    "LoRA": "r 128 on the 7 projections; bf16 base alone on 1 GPU, float32 base under FSDP (one dtype per unit)",
    "QLoRA": "the same adapters on a 4-bit NF4 base; 1 GPU, else DDP (one copy per GPU)",
}


def scaling_plan(shape: ModelShape, kind: str, devices: int) -> MemoryPlan:
    lora = LoraShape(r=128, target_modules=("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"),
                     lora_dropout=0.05)
    common = dict(tokens=4 * 2 * 1024, sequence_length=1024, precision="bf16-mixed", devices=devices,
                  gradient_checkpointing=True)
    sharded = "single" if devices == 1 else "fsdp"
    if kind == "full":
        return plan_memory(shape, dtype="float32", strategy=sharded, reference="separate", **common)
    if kind == "LoRA":
        return plan_memory(shape, dtype="bfloat16" if devices == 1 else "float32", strategy=sharded, lora=lora,
                           reference="shared", **common)
    return plan_memory(shape, dtype="bfloat16", strategy="single" if devices == 1 else "ddp", lora=lora,
                       quantization="4bit", reference="shared", **common)


def scaling_table(device_counts: Sequence[int] = (1, 8, 64)) -> str:
    """Markdown: GiB per device and the smallest named GPU that fits, for Mistral-7B and a Llama-2-70B-shaped
    model (generated by this function; tests/test_plan.py keeps the README's copy equal to it)."""
    header = "| model | training | " + " | ".join(f"{n} GPU{'s' if n > 1 else ''}" for n in device_counts) + " |"
    rows = [header, "| --- | --- | " + " | ".join("---" for _ in device_counts) + " |"]
    for name, shape in (("Mistral-7B", MISTRAL_7B), ("Llama-2-70B shape", LLAMA2_70B)):
        for kind in SCALING_SETUPS:
            cells = []
            for devices in device_counts:
                plan = scaling_plan(shape, kind, devices)
                cells.append(f"{plan.total / GIB:.1f} GiB ({smallest_gpu(plan)})")
            rows.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m zephyr_lightning.plan <the overrides of train.py>
    from zephyr_lightning.cli.plan import main

    main()
