"""Load a causal LM and its tokenizer: dtype, attention implementation, checkpointing, chat template.

`ModelSpec` is the one description of "which model" that SFT, DPO (policy and reference),
generation and export share. A spec is plain data, so a resumed run rebuilds the same model from it.

Besides hub names and local folders, one name is built in: ``builtin:tiny-mistral``, a
few-million-parameter Mistral built from a `MistralConfig` with a fixed seed, paired with the real
Mistral-7B tokenizer shipped inside the `mistral-common` package. It needs no network.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from zephyr_lightning import attention
from zephyr_lightning.arguments import check_arguments, cross_check

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


@cross_check(_builtin_name_rule)
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

    def __post_init__(self) -> None:
        check_arguments(ModelSpec, vars(self), prefix="model")
        self.config_overrides = dict(self.config_overrides or {})

    def with_dtype(self, dtype: str | None) -> ModelSpec:
        """The same model in another dtype (``None``: this one)."""
        return self if dtype is None else dataclasses.replace(self, dtype=dtype)

    @property
    def is_builtin(self) -> bool:
        return self.name_or_path.startswith(BUILTIN_PREFIX)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
    """Load (or build) the causal LM a spec names, in train mode with the requested attention."""
    spec = as_spec(spec)
    dtype = parse_dtype(spec.dtype)
    attn = resolve_attn_implementation(spec.attn_implementation)
    if spec.is_builtin:
        model = build_tiny_mistral(spec.seed, **spec.config_overrides)
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(attn)
        else:
            model.config._attn_implementation = attn
        if dtype is not None:
            model = model.to(dtype)
    else:
        kwargs: dict[str, Any] = dict(
            attn_implementation=attn,
            trust_remote_code=spec.trust_remote_code,
            revision=spec.revision,
        )
        kwargs[_from_pretrained_dtype_kwarg()] = dtype if dtype is not None else "auto"
        model = AutoModelForCausalLM.from_pretrained(spec.name_or_path, **kwargs)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if spec.compile:
        compile_decoder_layers(model, backend="inductor" if spec.compile is True else spec.compile)
    # from_pretrained returns eval mode and Lightning does not switch it back; callers that train
    # need train mode (the DPO reference is put back in eval by its owner).
    model.train()
    return model


def compile_decoder_layers(model: PreTrainedModel, backend: str = "inductor") -> PreTrainedModel:
    """Compile every decoder layer in place (``nn.Module.compile``: parameter names, checkpoints and
    exports are unchanged). Layers share their code, so one graph serves them all."""
    layers = getattr(model.base_model, "layers", None)
    if layers is None:
        raise ValueError(f"model.compile: {type(model).__name__} has no base_model.layers to compile")
    # Policy and reference layers, train and no-grad graphs: allow more variants than the default 8.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for layer in layers:
        layer.compile(dynamic=True, backend=backend)
    return model


def _cache_root() -> Path:
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
    target = _cache_root() / "mistral-7b-v0.1-tokenizer"
    if (target / "tokenizer_config.json").exists():
        return target
    import mistral_common

    source = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not source.exists():
        raise FileNotFoundError(
            f"{source} is missing: the installed mistral-common no longer ships the Mistral-7B tokenizer; "
            "pin mistral-common to a release that does or set model.tokenizer_name_or_path"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=target.parent))
    try:
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
        try:
            staging.rename(target)
        except OSError:
            if not (target / "tokenizer_config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_tokenizer(spec: ModelSpec | str) -> PreTrainedTokenizerBase:
    """The tokenizer for a spec, with a chat template and a pad token always set."""
    spec = as_spec(spec)
    source = spec.tokenizer_name_or_path or spec.name_or_path
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
