"""Write Hugging Face model folders (config, safetensors weights, tokenizer with chat template, model card).

Every folder goes through `export_hf`: written to a temporary folder beside the target and renamed into
place when complete, so a crash never leaves a half-written folder that looks whole; the model card
(`zephyr_lightning.modelcard`) is written into that folder before the rename.

A run that trained adapters (LoRA, QLoRA) writes two folders (`export_adapter_run`): the adapter
(``OUT-adapter``: ``adapter_config.json`` + ``adapter_model.safetensors``, loadable with
``PeftModel.from_pretrained(base, folder)`` or as ``model.name_or_path``) and the full model with the
adapter merged into the base weights (``OUT``, loadable with ``AutoModelForCausalLM.from_pretrained``). The
merge starts from the base loaded again from its source *without* quantization, so a QLoRA run's merged
model is the full-precision base plus the adapter, never a rounded 4-bit sum. Each gets its own card
(``kind="merged"`` / ``kind="adapter"``).

Command line::

    python -m zephyr_lightning.export RUN_DIR                      # re-export RUN_DIR/hf with a fresh card
    python -m zephyr_lightning.export RUN_DIR --push-to-hub me/zephyr-dpo [--private] [--revision BRANCH]
    python -m zephyr_lightning.export CHECKPOINT.ckpt OUT_DIR      # a Lightning checkpoint -> OUT_DIR
    python -m zephyr_lightning.export EXPORT_DIR --push-to-hub me/zephyr-dpo   # push an export as it is
    python -m zephyr_lightning.export RUN_DIR --push-to-hub me/zephyr-dpo-lora --push-export adapter

A run folder's model is the newer of its ``hf/`` export and its newest checkpoint (a run that resumed and
was stopped again has newer weights in its checkpoint). The card is written from the run's records
(``.hydra/``, ``data_summary.json``, ``result.json``, ``eval/summary.json`` or ``--eval-summary PATH``,
the checkpoint's hyper-parameters and software versions). ``--push-to-hub`` needs ``HF_TOKEN`` in the
environment (`zephyr_lightning.hub`); it uploads the folder once it is complete, and a failed push keeps
the export and prints the command that retries it. An adapter run pushes one of its two folders
(`pushed_folder`): ``--push-export adapter|merged|auto``, by default the HFExport callback's default.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import inspect
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from zephyr_lightning import adapters
from zephyr_lightning.modelcard import CARD_FILE, collect_records, is_hub_id, render_card
from zephyr_lightning.models import ModelSpec, as_spec, build_tiny_mistral, load_causal_lm, load_tokenizer

log = logging.getLogger(__name__)

EXPORT_DIR = "hf"
_EXPORT_MARKERS = ("config.json", "adapter_config.json")
_RUN_MARKERS = (".hydra", "checkpoints", "result.json", "data_summary.json", EXPORT_DIR)


def _default_mode(kind: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return kind & ~umask


@contextlib.contextmanager
def staged_folder(out_dir: str | Path) -> Iterator[Path]:
    """A new, empty folder beside ``out_dir`` that replaces ``out_dir`` when the ``with`` block completes;
    on an exception it is removed and ``out_dir`` keeps what it held."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
        os.chmod(staging, _default_mode(0o777))  # mkdtemp makes it private; an export is an ordinary folder
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


def export_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    card: str | None = None,
) -> Path:
    """Save ``model`` (optionally with a gathered ``state_dict``), ``tokenizer`` and the model ``card``
    (``README.md`` text, `zephyr_lightning.modelcard.render_card`) to ``out_dir``."""
    out_dir = Path(out_dir)
    with staged_folder(out_dir) as staging:
        model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if card is not None:
            (staging / CARD_FILE).write_text(card, encoding="utf-8")
    log.info("exported Hugging Face model to %s", out_dir)
    return out_dir


def recard_export(source: str | Path, out_dir: str | Path, card: str) -> Path:
    """A copy of the export folder ``source`` with ``card`` as its README.md, at ``out_dir`` (which may be
    ``source`` itself). Files are hard-linked where the file system allows (no copy of the weights)."""
    source = Path(source)
    with staged_folder(out_dir) as staging:
        for path in sorted(source.rglob("*")):
            target = staging / path.relative_to(source)
            if path.is_dir():
                target.mkdir(exist_ok=True)
            elif path.relative_to(source) != Path(CARD_FILE):  # the card is written anew, never through a link
                try:
                    os.link(path, target)
                except OSError:
                    shutil.copy2(path, target)
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
    log.info("wrote %s with a new model card", out_dir)
    return Path(out_dir)


def adapter_dir_for(out_dir: str | Path) -> Path:
    """Where an adapter run writes its adapter folder, beside the merged model's: ``hf`` -> ``hf-adapter``."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}-adapter")


# Which of an adapter run's two exports a push uploads (`pushed_folder`).
PushExport = Literal["auto", "adapter", "merged"]


def pushed_folder(export_dir: str | Path, push_export: PushExport, adapter_dir: str | Path | None = None) -> Path:
    """The folder a push of ``export_dir`` uploads. A full fine-tuning export is pushed as it is. For an adapter
    run (``export_dir`` the merged model, ``adapter_dir`` beside it holding ``adapter_config.json``;
    default ``<export_dir>-adapter``) ``push_export`` chooses: ``"adapter"``, ``"merged"``, or ``"auto"``:
    the adapter when the base it names is a Hub repository (what TRL and the alignment handbook push for
    LoRA/QLoRA runs: megabytes instead of a full model), else the merged model, because an adapter whose
    base is a local folder or a built-in model loads nowhere but on this machine."""
    export_dir = Path(export_dir)
    adapter_dir = adapter_dir_for(export_dir) if adapter_dir is None else Path(adapter_dir)
    if (export_dir / adapters.ADAPTER_CONFIG).is_file() or not (adapter_dir / adapters.ADAPTER_CONFIG).is_file():
        return export_dir  # an adapter folder given itself, or a full fine-tuning export
    if push_export == "auto":
        base = adapters.adapter_folder_base(str(adapter_dir))
        push_export = "adapter" if is_hub_id(base) else "merged"
        log.info("push_export=auto: pushing the %s export (the adapter's base %s %s a Hub repository)", push_export,
                 base, "is" if push_export == "adapter" else "is not")
    return adapter_dir if push_export == "adapter" else export_dir


def export_adapter_run(
    source: ModelSpec | torch.nn.Module,
    adapter_state: dict[str, torch.Tensor] | None,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    adapter_dir: str | Path | None = None,
    *,
    cards: Callable[[str], str | None] = lambda kind: None,
) -> tuple[Path, Path]:
    """Write an adapter run's adapter folder and merged model; return (merged folder, adapter folder).

    ``source`` is the run's `ModelSpec` (the base is loaded again, unquantized, on the CPU, and
    ``adapter_state``, the trained adapter's tensors by their ``PeftModel`` names, put on it), or a ready
    ``PeftModel`` that is not sharded (copied, then merged). ``cards(kind)`` gives each folder's model card
    (``"adapter"``, ``"merged"``); PEFT's own README placeholder is replaced by it.
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
    export_hf(model, tokenizer, adapter_dir, card=cards("adapter"))
    merged = export_hf(model.merge_and_unload(), tokenizer, out_dir, card=cards("merged"))
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


def _model_spec(checkpoint_path: str | Path, hparams: dict[str, Any]) -> dict[str, Any]:
    spec = hparams.get("model", hparams.get("policy"))  # SFT names it model, DPO policy
    if not isinstance(spec, dict):
        raise ValueError(
            f"{checkpoint_path}: the checkpoint does not record a model spec (the module was given a ready "
            "model); export from Python with zephyr_lightning.export.export_hf instead"
        )
    return spec


def export_checkpoint(
    checkpoint_path: str | Path, out_dir: str | Path, *, cards: Callable[[str], str | None] = lambda kind: None
) -> Path:
    """Lightning checkpoint of a `CausalLMModule` -> Hugging Face folder (and its adapter folder beside it
    when the run trained adapters), each with the card ``cards(kind)`` as its README.md."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    spec = _model_spec(checkpoint_path, checkpoint.get("hyper_parameters", {}))
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if as_spec(spec).trains_adapters:  # the checkpoint holds the adapter only
        return export_adapter_run(as_spec(spec), state, load_tokenizer(spec), out_dir, cards=cards)[0]
    model = _empty_model(spec)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KeyError(f"{checkpoint_path}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return export_hf(model, load_tokenizer(spec), out_dir, card=cards("full"))


def checkpoint_records(checkpoint_path: str | Path) -> tuple[dict[str, Any], dict[str, float], dict[str, str] | None]:
    """What a checkpoint tells a model card: a config of the module's hyper-parameters (used when the run
    folder has no ``.hydra/config.yaml``), the progress (optimizer steps) and the
    software versions the training process recorded (None when it recorded none). Memory-mapped: the
    weights are not read."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    config: dict[str, Any] = {}
    if hparams:
        is_dpo = "policy" in hparams
        config["module"] = {"_target_": "zephyr_lightning.DPOModule" if is_dpo else "zephyr_lightning.SFTModule",
                            **{k: v for k, v in hparams.items() if k not in ("model", "policy", "optim")}}
        spec = hparams.get("policy" if is_dpo else "model")
        config["model"] = spec if isinstance(spec, dict) else {"name_or_path": spec} if spec else {}
        config["optim"] = hparams.get("optim") or {}
    # Lightning's `epoch` counts an epoch cut short by max_steps as done: only the step count is exact.
    progress = {"global_step": int(checkpoint.get("global_step", 0))}
    software = next((state["software"] for state in checkpoint.get("callbacks", {}).values()
                     if isinstance(state, dict) and isinstance(state.get("software"), dict)), None)
    return config, progress, software


def newest_checkpoint(run_dir: str | Path) -> Path | None:
    from zephyr_lightning.resume import find_latest_checkpoint

    return find_latest_checkpoint(Path(run_dir) / "checkpoints")


def is_export_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and any((Path(path) / marker).is_file() for marker in _EXPORT_MARKERS)


def is_run_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and any((Path(path) / marker).exists() for marker in _RUN_MARKERS)


def run_source(run_dir: str | Path) -> Path:
    """The newer of the run's complete ``hf/`` export and its newest checkpoint."""
    run_dir = Path(run_dir)
    export = run_dir / EXPORT_DIR
    checkpoint = newest_checkpoint(run_dir)
    candidates = [p for p in (export if is_export_folder(export) else None, checkpoint) if p is not None]
    if not candidates:
        raise FileNotFoundError(f"{run_dir}: neither an export ({EXPORT_DIR}/) nor a checkpoint (checkpoints/*.ckpt)")
    return max(candidates, key=lambda p: p.stat().st_mtime_ns if p.is_file() else (p / "config.json").stat().st_mtime_ns)


def _checkpoint_run_dir(checkpoint: Path) -> Path | None:
    folder = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return folder if is_run_folder(folder) else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m zephyr_lightning.export",
        description="Export a run as a Hugging Face folder with a model card, and optionally push it to the Hub.",
    )
    parser.add_argument("source", help="a run folder, a Lightning .ckpt of an SFT or DPO run, or an export folder "
                        "(pushed as it is unless OUT_DIR is given)")
    parser.add_argument("out_dir", nargs="?", help="folder to write (replaced if it exists); default RUN_DIR/hf "
                        "for a run folder; required for a checkpoint")
    parser.add_argument("--run-dir", help="the run folder whose records the card tells (default: the run folder "
                        "given, or the one holding the checkpoint or the export)")
    parser.add_argument("--eval-summary", metavar="PATH", help="an evaluation summary.json for the card "
                        "(default: RUN_DIR/eval/summary.json when present)")
    parser.add_argument("--license", help="the model's license id for the card's metadata (e.g. apache-2.0)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="push the export to this Hub repository "
                        "(namespace/name); needs HF_TOKEN in the environment")
    parser.add_argument("--push-export", choices=get_args(PushExport), help="which of an adapter run's folders to "
                        "push: its adapter, its merged model, or auto (the adapter when its base is a Hub repository; "
                        "the default when this command writes the export). An export folder given as SOURCE is "
                        "pushed as it is unless this is given")
    parser.add_argument("--private", action="store_true", help="create the repository private (a new one only)")
    parser.add_argument("--revision", help="the branch to push to (created if missing; default main)")
    return parser


def main(argv: list[str] | None = None) -> None:
    from zephyr_lightning.cli.app import guarded_command

    with guarded_command(argv):  # no credential on the console; user errors in one line
        _export(argv)


def _export(argv: list[str] | None) -> None:
    from zephyr_lightning.arguments import argument_errors
    from zephyr_lightning.hub import push_folder, push_refusal

    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.push_to_hub:  # before anything is loaded: a push that cannot start is refused now
        errors = argument_errors(push_folder, {"folder": ".", "repo_id": args.push_to_hub})
        if errors:
            parser.error(f"--push-to-hub {args.push_to_hub}: not a Hub repository id (namespace/name)")
        refusal = push_refusal()
        if refusal:
            parser.error(f"--push-to-hub: {refusal}")

    source = Path(args.source)
    out_dir = Path(args.out_dir) if args.out_dir else None
    if not source.exists():
        parser.error(f"{source}: no such file or folder")
    if source.is_file():
        if out_dir is None:
            parser.error(f"{source}: a checkpoint needs OUT_DIR, the folder to write")
        run_dir, model_source = _checkpoint_run_dir(source), source
    elif is_export_folder(source):
        if out_dir is None:
            if not args.push_to_hub:
                parser.error(f"{source} is an export already: give --push-to-hub REPO to push it, or its run "
                             "folder to export it again with a new card")
            if args.eval_summary or args.license:
                parser.error(f"{source} is pushed as it is: give its run folder to write a new card")
            _push(pushed_folder(source, args.push_export) if args.push_export else source, args)
            return
        run_dir, model_source = source.parent if is_run_folder(source.parent) else None, source
    else:
        run_dir, model_source = source, run_source(source)
        out_dir = out_dir or source / EXPORT_DIR
    run_dir = Path(args.run_dir) if args.run_dir else run_dir

    checkpoint = model_source if model_source.is_file() else (newest_checkpoint(run_dir) if run_dir else None)
    config, progress, software = checkpoint_records(checkpoint) if checkpoint else ({}, {}, None)
    try:
        records = collect_records(run_dir, config=config, eval_summary=args.eval_summary, software=software,
                                  progress=progress if model_source == checkpoint else None)
    except ValueError as error:
        parser.error(str(error))

    def cards(kind: str) -> str:
        return render_card(records, kind=kind, model_id=args.push_to_hub, license=args.license)

    log.info("exporting %s to %s", model_source, out_dir)
    if model_source.is_file():
        export_checkpoint(model_source, out_dir, cards=cards)
    else:
        adapter_source = adapter_dir_for(model_source)
        merged = not (model_source / "adapter_config.json").is_file() and adapter_source.is_dir()
        recard_export(model_source, out_dir, cards("merged" if merged else "full"))
        if merged:  # an adapter run's two folders: the adapter's card is rewritten beside the merged one's
            recard_export(adapter_source, adapter_dir_for(out_dir), cards("adapter"))
    print(out_dir)
    if args.push_to_hub:
        _push(pushed_folder(out_dir, args.push_export or _default_push_export()), args)


def _default_push_export() -> PushExport:
    from zephyr_lightning.callbacks.hf_export import HFExport

    return inspect.signature(HFExport).parameters["push_export"].default  # the callback's default, one home


def _push(folder: Path, args: argparse.Namespace) -> None:
    from zephyr_lightning.hub import HubPushError, push_folder

    try:
        print(push_folder(folder, args.push_to_hub, private=args.private or None, revision=args.revision))
    except HubPushError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
