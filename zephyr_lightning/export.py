"""Write Hugging Face folders (config, safetensors weights, tokenizer with chat template).

Every folder goes through `export_hf`, written to a temporary folder beside the target and renamed into
place when complete, so a crash never leaves a half-written folder that looks whole.

A run that trained adapters (LoRA, QLoRA) writes two folders (`export_adapter_run`): the adapter
(``OUT-adapter``: ``adapter_config.json`` + ``adapter_model.safetensors``, loadable with
``PeftModel.from_pretrained(base, folder)`` or as ``model.name_or_path``) and the full model with the
adapter merged into the base weights (``OUT``, loadable with ``AutoModelForCausalLM.from_pretrained``). The
merge starts from the base loaded again from its source *without* quantization, so a QLoRA run's merged
model is the full-precision base plus the adapter, never a rounded 4-bit sum.

Command line: ``python -m zephyr_lightning.export CHECKPOINT.ckpt OUT_DIR`` turns a Lightning
checkpoint of an SFT or DPO run into such a folder (and ``OUT_DIR-adapter`` for an adapter run).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from zephyr_lightning import adapters
from zephyr_lightning.models import ModelSpec, as_spec, build_tiny_mistral, load_causal_lm, load_tokenizer

log = logging.getLogger(__name__)


def export_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save ``model`` (optionally with a gathered ``state_dict``) and ``tokenizer`` to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if out_dir.exists():
            previous = out_dir.with_name(f".{out_dir.name}.previous")
            shutil.rmtree(previous, ignore_errors=True)
            out_dir.rename(previous)
            staging.rename(out_dir)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported Hugging Face model to %s", out_dir)
    return out_dir


def adapter_dir_for(out_dir: str | Path) -> Path:
    """Where an adapter run writes its adapter folder, beside the merged model's: ``hf`` -> ``hf-adapter``."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}-adapter")


def export_adapter_run(
    source: ModelSpec | torch.nn.Module,
    adapter_state: dict[str, torch.Tensor] | None,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    adapter_dir: str | Path | None = None,
) -> tuple[Path, Path]:
    """Write an adapter run's adapter folder and merged model; return (merged folder, adapter folder).

    ``source`` is the run's `ModelSpec` (the base is loaded again, unquantized, on the CPU, and
    ``adapter_state``, the trained adapter's tensors by their ``PeftModel`` names, put on it), or a ready
    ``PeftModel`` that is not sharded (copied, then merged).
    """
    adapter_dir = adapter_dir_for(out_dir) if adapter_dir is None else Path(adapter_dir)
    if isinstance(source, ModelSpec):
        plain = dataclasses.replace(source, quantization=None, gradient_checkpointing=False, compile=False,
                                    attn_implementation="sdpa")
        with torch.random.fork_rng(devices=[]):  # a new adapter's random init must not move the run's RNG
            model = load_causal_lm(plain)
        _load_adapter_state(model, adapter_state or {})
    else:
        model = copy.deepcopy(source)
        if adapters.has_reference_adapter(model):
            model.delete_adapter(adapters.REFERENCE_ADAPTER)  # the run's frozen starting point, not its product
        if adapter_state:
            _load_adapter_state(model, adapter_state)
    model.eval()
    export_hf(model, tokenizer, adapter_dir)
    merged = export_hf(model.merge_and_unload(), tokenizer, out_dir)
    return merged, adapter_dir


def _load_adapter_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    result = model.load_state_dict(state, strict=False)
    expected = set(adapters.trainable_parameter_names(model))
    missing = sorted(expected - set(state))
    if result.unexpected_keys or missing:
        raise KeyError(f"the adapter weights do not match the model: unexpected {result.unexpected_keys[:3]}, "
                       f"missing {missing[:3]}")


def _empty_model(spec_data: Any) -> PreTrainedModel:
    spec = as_spec(spec_data)
    if spec.is_builtin:
        return build_tiny_mistral(spec.seed, **spec.config_overrides)
    config = AutoConfig.from_pretrained(spec.name_or_path, trust_remote_code=spec.trust_remote_code, revision=spec.revision)
    return AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)


def export_checkpoint(checkpoint_path: str | Path, out_dir: str | Path) -> Path:
    """Lightning checkpoint of a `CausalLMModule` -> Hugging Face folder (and its adapter folder beside it
    when the run trained adapters)."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    hparams = checkpoint.get("hyper_parameters", {})
    spec = hparams.get("model", hparams.get("policy"))  # SFT names it model, DPO policy
    if not isinstance(spec, dict):
        raise ValueError(
            f"{checkpoint_path}: the checkpoint does not record a model spec (the module was given a ready "
            "model); export from Python with zephyr_lightning.export.export_hf instead"
        )
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if as_spec(spec).trains_adapters:  # the checkpoint holds the adapter only
        return export_adapter_run(as_spec(spec), state, load_tokenizer(spec), out_dir)[0]
    model = _empty_model(spec)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KeyError(f"{checkpoint_path}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return export_hf(model, load_tokenizer(spec), out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a Lightning .ckpt written by an SFT or DPO run")
    parser.add_argument("out_dir", help="folder to write (replaced if it exists)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(export_checkpoint(args.checkpoint, args.out_dir))


if __name__ == "__main__":
    main()
