"""Write a Hugging Face model folder (config, safetensors weights, tokenizer with chat template).

Exports are written to a temporary folder beside the target and renamed into place when complete,
so a crash never leaves a half-written folder that looks whole.

Command line: ``python -m zephyr_lightning.export CHECKPOINT.ckpt OUT_DIR`` turns a Lightning
checkpoint of an SFT or DPO run into such a folder.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from zephyr_lightning.models import as_spec, build_tiny_mistral, load_tokenizer

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


def _empty_model(spec_data: Any) -> PreTrainedModel:
    spec = as_spec(spec_data)
    if spec.is_builtin:
        return build_tiny_mistral(spec.seed, **spec.config_overrides)
    config = AutoConfig.from_pretrained(spec.name_or_path, trust_remote_code=spec.trust_remote_code, revision=spec.revision)
    return AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)


def export_checkpoint(checkpoint_path: str | Path, out_dir: str | Path) -> Path:
    """Lightning checkpoint of a `CausalLMModule` -> Hugging Face folder."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    hparams = checkpoint.get("hyper_parameters", {})
    spec = hparams.get("model", hparams.get("policy"))  # SFT names it model, DPO policy
    if not isinstance(spec, dict):
        raise ValueError(
            f"{checkpoint_path}: the checkpoint does not record a model spec (the module was given a ready "
            "model); export from Python with zephyr_lightning.export.export_hf instead"
        )
    model = _empty_model(spec)
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
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
