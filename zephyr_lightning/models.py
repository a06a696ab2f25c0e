"""Load a causal LM and its tokenizer: dtype, attention implementation, checkpointing, LoRA adapters,
quantization, chat template.

`ModelSpec` is the one description of "which model" that SFT, DPO (policy and reference),
generation and export share. A spec is plain data, so a resumed run rebuilds the same model from it.

Besides hub names and local folders, one name is built in: ``builtin:tiny-mistral``, a
few-million-parameter Mistral built from a `MistralConfig` with a fixed seed, paired with the real
Mistral-7B tokenizer shipped inside the `mistral-common` package. It needs no network.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from zephyr_lightning import adapters, attention
from zephyr_lightning.arguments import (
    Fraction,
    Positive,
    PositiveInt,
    check_arguments,
    cross_check,
    value_problem,
)
from zephyr_lightning.atomic import folder_once

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
TINY_MISTRAL = "builtin:tiny-mistral"

# Zephyr's chat template (HuggingFaceH4/zephyr-7b-beta): every turn is "<|role|>\n" + content + eos.
ZEPHYR_CHAT_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)

# Architecture of the embedded default. Small enough to train in seconds on 2 CPU cores, but with the
# real 32000-piece vocabulary, so the log-prob and tokenisation code paths are the real ones.
TINY_MISTRAL_CONFIG: dict[str, Any] = dict(
    vocab_size=32000,
    hidden_size=64,
    intermediate_size=192,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    sliding_window=None,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# The names a config may give a dtype (``auto``: as the checkpoint saved it) and an attention kernel.
DType = Literal["float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "auto"]
AttnImplementation = Literal["auto", "sdpa", "eager", "flash_attention_2", "flex_attention", "varlen"]
ATTN_IMPLEMENTATIONS: tuple[str, ...] = get_args(AttnImplementation)
# bitsandbytes weight quantization of the frozen base (QLoRA: 4-bit NF4).
Quantization = Literal["4bit", "8bit"]
# LoRA settings: a `peft.LoraConfig`, or a dict of its fields. Hydra's `model/peft=lora` builds a LoraConfig
# (`_target_: peft.LoraConfig`), whose own signature declares each field's type; `_lora_rule` adds ranges.
PeftSettings = Any


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Map a config string ("bfloat16", "bf16", ...) to a torch dtype; None and "auto" stay None."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return None if dtype == "auto" else dtype
    return _DTYPES[dtype]


@functools.cache
def _log_attention_choice(message: str) -> None:
    # Cached so that policy, reference and every rank-local rebuild say it once.
    log.info(message)


def resolve_attn_implementation(attn_implementation: AttnImplementation, on_cuda: bool | None = None) -> str:
    """Pick the attention kernel and log the choice once.

    ``auto``: FlashAttention-2 when flash-attn is installed and CUDA is available; else, on CUDA,
    PyTorch's own varlen FlashAttention kernel (``varlen``, torch >= 2.10), which packed batches need to
    avoid dense masks; else ``sdpa``. ``varlen`` is registered with transformers when chosen.
    """
    check_arguments(resolve_attn_implementation, {"attn_implementation": attn_implementation}, prefix="model")
    requested = attn_implementation
    on_cuda = torch.cuda.is_available() if on_cuda is None else on_cuda
    if requested == "auto":
        if on_cuda and importlib.util.find_spec("flash_attn") is not None:
            _log_attention_choice("attention: flash_attention_2 (flash-attn installed, CUDA available)")
            return "flash_attention_2"
        if on_cuda and attention.torch_varlen_available() and attention.register():
            _log_attention_choice(
                "attention: varlen (torch's FlashAttention varlen kernel; flash-attn not installed: pip install -e '.[gpu]')"
            )
            return attention.NAME
        reason = "no CUDA device" if not on_cuda else "flash-attn not installed (pip install -e '.[gpu]')"
        _log_attention_choice(f"attention: sdpa ({reason})")
        return "sdpa"
    if requested == attention.NAME:
        if on_cuda and not attention.torch_varlen_available():
            raise ValueError("model.attn_implementation=varlen needs torch >= 2.10 (torch.nn.attention.varlen)")
        if not attention.register():
            raise ValueError("model.attn_implementation=varlen needs a transformers with AttentionInterface (>= 4.54)")
    return requested


def _builtin_name_rule(arguments: dict) -> tuple[str, str] | None:
    name = str(arguments.get("name_or_path", ""))
    if name.startswith(BUILTIN_PREFIX) and name != TINY_MISTRAL:
        return "name_or_path", f"the only built-in model is {TINY_MISTRAL!r}"
    return None


def _lora_ranges(r: PositiveInt, lora_alpha: Positive, lora_dropout: Fraction) -> None:
    """The ranges of LoRA's main settings (peft's LoraConfig declares their types only)."""


def _lora_rule(arguments: dict) -> list[tuple[str, str]]:
    settings = arguments.get("peft")
    problems = []
    for name, annotation in typing.get_type_hints(_lora_ranges, include_extras=True).items():
        value = adapters.setting(settings, name)
        if name == "return" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # absent (peft's default), or the wrong type, which peft's declaration reports
        problem = value_problem(annotation, value)
        if problem:
            problems.append((f"peft.{name}", problem))
    return problems


def quantization_problem(quantization: str | None, on_cuda: bool | None = None) -> str | None:
    """Why ``quantization`` cannot load here, or None. bitsandbytes' 4/8-bit training kernels (QLoRA)
    need a CUDA GPU; the one rule both config validation and the loader apply."""
    if quantization is None:
        return None
    on_cuda = torch.cuda.is_available() if on_cuda is None else on_cuda
    if not on_cuda:
        return (f"{quantization} weights (QLoRA, bitsandbytes) need a CUDA GPU and this run has none; "
                "use model.quantization=null (LoRA without quantization) on CPU")
    return None


def trained_spec_problem(quantization: str | None, peft: Any, name_or_path: str) -> tuple[str, str] | None:
    """Why a model with these settings cannot be *trained* (a frozen reference may be anything), or None."""
    if quantization is not None and peft is None and not adapters.is_local_adapter_folder(str(name_or_path)):
        return ("quantization", f"{quantization} weights are frozen: train LoRA adapters on them (model/peft=lora, "
                "i.e. QLoRA) or load the weights unquantized (model.quantization=null)")
    return None


@cross_check(_builtin_name_rule, _lora_rule)
@dataclass
class ModelSpec:
    """Which causal LM to load and how.

    Args:
        name_or_path: hub name, local folder (e.g. an export at ``DIR/hf``) or ``builtin:tiny-mistral``.
        dtype: weight dtype: ``float32``, ``bfloat16``, ``float16`` or ``auto`` (as saved).
        attn_implementation: ``auto`` (flash-attn on CUDA when installed, else sdpa), ``sdpa``,
            ``eager``, ``flash_attention_2`` or ``flex_attention``.
        gradient_checkpointing: recompute activations in backward to save memory.
        trust_remote_code: run model code from the hub; off unless you trust the source.
        revision: hub revision (branch, tag or commit) for reproducible runs.
        tokenizer_name_or_path: tokenizer source when it differs from the model's.
        chat_template: Jinja chat template overriding the tokenizer's; when the tokenizer has none,
            Zephyr's template is used.
        seed: initialisation seed for built-in models (the reference rebuilds bit-identical from it).
        config_overrides: architecture values for built-in models (e.g. ``{hidden_size: 128}``).
        compile: ``torch.compile`` each decoder layer (``True``: inductor; a string: that backend). Fuses
            the memory-bound work between matrix products (norms, activations, rotary); shapes are
            compiled as dynamic, so packed batches of any length reuse one graph.
        peft: LoRA adapters to train on the frozen base: a ``peft.LoraConfig`` or a dict of its fields
            (``None``: every weight trains). When ``name_or_path`` is an adapter folder, that adapter is
            merged into its base first and a new adapter trains on top (the handbook's QLoRA dDPO recipe).
        quantization: load the frozen base weights in bitsandbytes ``4bit`` (NF4, double quantization,
            compute in ``dtype``) or ``8bit`` (QLoRA; needs ``peft`` and a CUDA GPU).

    ``name_or_path`` may also be an adapter folder (``adapter_config.json``, e.g. ``DIR/hf-adapter`` of an
    earlier adapter run): its base is loaded (``seed`` and ``config_overrides`` apply to a built-in base)
    and the adapter put on it. With ``peft=None`` the adapter itself keeps training (its own settings).
    """

    name_or_path: str = TINY_MISTRAL
    dtype: DType = "float32"
    attn_implementation: AttnImplementation = "auto"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    revision: str | None = None
    tokenizer_name_or_path: str | None = None
    chat_template: str | None = None
    seed: int = 0
    config_overrides: dict[str, Any] = field(default_factory=dict)
    compile: bool | str = False
    peft: PeftSettings = None
    quantization: Quantization | None = None

    def __post_init__(self) -> None:
        check_arguments(ModelSpec, vars(self), prefix="model")
        self.config_overrides = dict(self.config_overrides or {})
        if isinstance(self.peft, dict) or (self.peft is not None and hasattr(self.peft, "items")):
            self.peft = adapters.lora_settings(dict(self.peft))  # plain fields (e.g. from a checkpoint)

    def with_dtype(self, dtype: str | None) -> ModelSpec:
        """The same model in another dtype (``None``: this one)."""
        return self if dtype is None else dataclasses.replace(self, dtype=dtype)

    @property
    def is_builtin(self) -> bool:
        return self.name_or_path.startswith(BUILTIN_PREFIX)

    @property
    def adapter_base(self) -> str | None:
        """The base model when ``name_or_path`` is an adapter folder or repo, else None."""
        return adapters.adapter_folder_base(self.name_or_path, self.revision)

    @property
    def trains_adapters(self) -> bool:
        """Whether training this spec trains adapters only (a new one, or the adapter folder it names)."""
        return self.peft is not None or self.adapter_base is not None

    def without_adapters(self) -> ModelSpec:
        """The model an adapter run starts from: this spec without a new adapter (an adapter folder stays,
        applied to its base)."""
        return dataclasses.replace(self, peft=None)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (checkpoints record it and load it with ``weights_only=True``)."""
        data = asdict(dataclasses.replace(self, peft=None))
        data["peft"] = adapters.lora_settings(self.peft) if self.peft is not None else None
        return data

    def load_model(self) -> PreTrainedModel:
        return load_causal_lm(self)

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self)


def as_spec(source: str | ModelSpec | dict[str, Any]) -> ModelSpec:
    """Accept a spec, a dict of its fields (e.g. from checkpoint hyper-parameters) or a bare name."""
    if isinstance(source, ModelSpec):
        return source
    if isinstance(source, str):
        return ModelSpec(name_or_path=source)
    if isinstance(source, dict) or hasattr(source, "items"):
        return ModelSpec(**dict(source))
    raise TypeError(f"expected a ModelSpec, a dict or a model name, got {type(source).__name__}")


# What makes a folder a model (a full model, or a PEFT adapter over one) or a tokenizer.
_MODEL_FILES = ("config.json", "adapter_config.json")
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")


def _looks_like_hub_name(source: str) -> bool:
    """``name`` or ``namespace/name`` in the characters the Hub allows (``runs/sft/hf`` is not one)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if source.startswith((".", "/", "~")) or "\\" in source:
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def _near_names(path: Path) -> str:
    """``; did you mean ...`` naming the entries of the nearest existing parent folder like ``path``'s name."""
    import difflib

    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        path, parent = parent, parent.parent
    if not parent.is_dir():
        return ""
    close = difflib.get_close_matches(path.name, [p.name for p in parent.iterdir()], n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(str(parent / name)) for name in close)}?" if close else ""


def source_problem(source: str, *, kind: Literal["model", "tokenizer"] = "model", revision: str | None = None) -> str | None:
    """Why ``source`` cannot be loaded as a model (or tokenizer), seen without loading anything; None
    when it can, or when only loading can tell (a hub name while the network is allowed).

    A local folder must hold a model (``config.json``, or a PEFT adapter's ``adapter_config.json``; for a
    tokenizer its files); a path that is not there is named as such, with the near names in its folder;
    with ``HF_HUB_OFFLINE=1`` a hub name must be in the local hub cache.
    """
    if source.startswith(BUILTIN_PREFIX):
        return None  # ModelSpec's own rule names the built-in models
    path = Path(source).expanduser()
    wanted = _MODEL_FILES if kind == "model" else _TOKENIZER_FILES
    if path.is_dir():
        if any((path / name).is_file() for name in wanted):
            return None
        found = sorted(p.name for p in path.iterdir())
        shown = f"{found[:8]}{' ...' if len(found) > 8 else ''}"
        return f"the folder holds no {kind} (no {' or '.join(wanted)}); it has {shown}"
    if path.exists():
        return f"is a file; a local {kind} is a folder (with {wanted[0]}), e.g. an export DIR/hf"
    if not _looks_like_hub_name(source):
        return f"no such folder{_near_names(path)}"
    import huggingface_hub
    from huggingface_hub import try_to_load_from_cache

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        cached = any(isinstance(try_to_load_from_cache(source, name, revision=revision), str) for name in wanted)
        if not cached:
            return (f"not a local folder, and not in the local hub cache (HF_HUB_OFFLINE=1 allows no download)"
                    f"{_near_names(path)}")
    return None


def _from_pretrained_dtype_kwarg() -> str:
    # transformers 4.56 renamed `torch_dtype` to `dtype`; keep both majors working.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def build_tiny_mistral(seed: int = 0, **overrides: Any) -> PreTrainedModel:
    """The embedded default: a tiny Mistral with deterministic initial weights for a given seed."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(**{**TINY_MISTRAL_CONFIG, **overrides})
    # A private RNG stream: building the reference must not shift the data order of the run.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MistralForCausalLM(config)
    return model


def load_causal_lm(spec: ModelSpec | str) -> PreTrainedModel:
    """Load (or build) the causal LM a spec names, in train mode with the requested attention.

    With ``spec.peft`` or an adapter folder the result is a ``peft.PeftModel`` whose base weights are
    frozen and whose adapter trains; with ``spec.quantization`` the base weights are bitsandbytes 4/8-bit
    (prepared with PEFT's ``prepare_model_for_kbit_training``).
    """
    spec = as_spec(spec)
    problem = quantization_problem(spec.quantization)
    if problem:
        raise ValueError(f"model.quantization={spec.quantization!r}: {problem}")
    adapter_base = spec.adapter_base
    base_spec = spec if adapter_base is None else dataclasses.replace(spec, name_or_path=adapter_base)
    model = _load_weights(base_spec)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if spec.quantization is not None and (spec.peft is not None or adapter_base is not None):
        from peft import prepare_model_for_kbit_training

        # Freezes the base, upcasts its non-quantized weights (norms, embeddings, head) to float32.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=spec.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if adapter_base is not None:
        model = _with_adapter_folder(model, spec)
    if spec.peft is not None:
        model = adapters.add_lora(model, spec.peft, base_name=spec.name_or_path)
        log.info("LoRA: %s trainable of %s parameters", f"{_trainable(model):,}", f"{_total(model):,}")
    if spec.compile:
        compile_decoder_layers(model, backend="inductor" if spec.compile is True else spec.compile)
    # from_pretrained returns eval mode and Lightning does not switch it back; callers that train
    # need train mode (the DPO reference is put back in eval by its owner).
    model.train()
    return model


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _total(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _with_adapter_folder(model: PreTrainedModel, spec: ModelSpec) -> torch.nn.Module:
    """Put the adapter of the folder ``spec.name_or_path`` on its loaded base. Without ``spec.peft`` it keeps
    training; with one it is merged into the base first (a new adapter follows)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, spec.name_or_path, revision=spec.revision, is_trainable=spec.peft is None)
    if spec.peft is None:
        log.info("adapter %s on %s: continuing it (%s trainable parameters)", spec.name_or_path,
                 model.peft_config[adapters.TRAINED_ADAPTER].base_model_name_or_path, f"{_trainable(model):,}")
        return model
    if spec.quantization is not None:
        log.warning("merging the adapter %s into %s base weights: bitsandbytes re-quantizes the sum, which rounds "
                    "it (as the alignment handbook's QLoRA dDPO did); merging into an unquantized export is exact",
                    spec.name_or_path, spec.quantization)
    return model.merge_and_unload()


def _load_weights(spec: ModelSpec) -> PreTrainedModel:
    """The base model's weights: built in, or ``from_pretrained`` (quantized when the spec asks)."""
    dtype = parse_dtype(spec.dtype)
    attn = resolve_attn_implementation(spec.attn_implementation)
    if spec.is_builtin and spec.quantization is None:
        model = build_tiny_mistral(spec.seed, **spec.config_overrides)
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(attn)
        else:
            model.config._attn_implementation = attn
        return model.to(dtype) if dtype is not None else model
    source = builtin_folder(spec) if spec.is_builtin else spec.name_or_path
    kwargs: dict[str, Any] = dict(attn_implementation=attn, trust_remote_code=spec.trust_remote_code,
                                  revision=None if spec.is_builtin else spec.revision)
    kwargs[_from_pretrained_dtype_kwarg()] = dtype if dtype is not None else "auto"
    if spec.quantization is not None:
        kwargs["quantization_config"] = bitsandbytes_config(spec.quantization, dtype)
        kwargs["device_map"] = {"": quantized_device()}  # bitsandbytes quantizes on the device it loads to
    return AutoModelForCausalLM.from_pretrained(source, **kwargs)


def quantized_device() -> int | str:
    """Where quantized weights load: this process's GPU (Lightning has set it before `configure_model`)."""
    return torch.cuda.current_device()


def bitsandbytes_config(quantization: Quantization, compute_dtype: torch.dtype | None):
    """QLoRA's quantization (Dettmers et al. 2023): NF4 with double quantization of the block scales,
    matrix products in ``compute_dtype`` (bfloat16 when the spec says ``auto``), as the alignment handbook's
    QLoRA recipes load their base (``load_in_4bit``, ``torch_dtype: bfloat16``). ``8bit``: LLM.int8()."""
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16)


def builtin_folder(spec: ModelSpec) -> Path:
    """A built-in model saved once to the cache (keyed by its seed, architecture and dtype), for loaders
    that read folders only: bitsandbytes quantizes weights while ``from_pretrained`` loads them."""
    key = json.dumps({"name": spec.name_or_path, "seed": spec.seed, "config": spec.config_overrides,
                      "dtype": spec.dtype}, sort_keys=True)
    target = cache_root() / "builtin" / hashlib.sha256(key.encode()).hexdigest()[:16]

    def build(staging: Path) -> None:
        model = build_tiny_mistral(spec.seed, **spec.config_overrides)
        dtype = parse_dtype(spec.dtype)
        (model.to(dtype) if dtype is not None else model).save_pretrained(staging)

    return folder_once(target, "config.json", build)


def compile_decoder_layers(model: PreTrainedModel, backend: str = "inductor") -> PreTrainedModel:
    """Compile every decoder layer in place (``nn.Module.compile``: parameter names, checkpoints and
    exports are unchanged). Layers share their code, so one graph serves them all."""
    layers = getattr(adapters.unwrap(model).base_model, "layers", None)
    if layers is None:
        raise ValueError(f"model.compile: {type(model).__name__} has no base_model.layers to compile")
    # Policy and reference layers, train and no-grad graphs: allow more variants than the default 8.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for layer in layers:
        layer.compile(dynamic=True, backend=backend)
    return model


def cache_root() -> Path:
    """Where the project caches what it builds once (built-in model folders, the tokenizer folder, reference
    log-probs): ``$ZEPHYR_LIGHTNING_CACHE``, else ``$XDG_CACHE_HOME/zephyr_lightning`` (``~/.cache``)."""
    root = os.environ.get("ZEPHYR_LIGHTNING_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "zephyr_lightning"
    )
    return Path(root)


def mistral_tokenizer_dir() -> Path:
    """A tokenizer folder made from mistral-common's copy of the Mistral-7B v0.1 sentencepiece model.

    The folder is created once in the cache (atomically, so parallel test workers or ranks never read a
    half-written folder) and after the first load also holds a `tokenizer.json`, which later loads read
    without sentencepiece.
    """
    target = cache_root() / "mistral-7b-v0.1-tokenizer"
    if (target / "tokenizer_config.json").exists():
        return target
    import mistral_common

    source = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not source.exists():
        raise FileNotFoundError(
            f"{source} is missing: the installed mistral-common no longer ships the Mistral-7B tokenizer; "
            "pin mistral-common to a release that does or set model.tokenizer_name_or_path"
        )

    def build(staging: Path) -> None:
        shutil.copy(source, staging / "tokenizer.model")
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": False,
            "model_max_length": 32768,
            "chat_template": ZEPHYR_CHAT_TEMPLATE,
        }
        (staging / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        tokenizer = AutoTokenizer.from_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return folder_once(target, "tokenizer_config.json", build)


def load_tokenizer(spec: ModelSpec | str) -> PreTrainedTokenizerBase:
    """The tokenizer for a spec, with a chat template and a pad token always set."""
    spec = as_spec(spec)
    source = spec.tokenizer_name_or_path or spec.name_or_path
    folder = Path(source)
    if folder.is_dir() and not (folder / "tokenizer_config.json").exists() and adapters.is_local_adapter_folder(source):
        source = adapters.adapter_folder_base(source) or source  # an adapter saved without its tokenizer
    if source.startswith(BUILTIN_PREFIX):
        source = str(mistral_tokenizer_dir())
    tokenizer = AutoTokenizer.from_pretrained(
        source, trust_remote_code=spec.trust_remote_code, revision=spec.revision
    )
    if spec.chat_template is not None:
        tokenizer.chat_template = spec.chat_template
    elif not getattr(tokenizer, "chat_template", None):
        log.info("tokenizer %s has no chat template: using Zephyr's", source)
        tokenizer.chat_template = ZEPHYR_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        # Pad ids are always masked out, so any existing token will do; unk keeps eos unambiguous.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer
