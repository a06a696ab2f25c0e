"""The model card of an export: ``README.md`` in the Hub's format, written from the run's own records.

Every export writes one (`write_card`, into the export folder before it is renamed into place): the
HFExport callback at the end of fit, ``python -m zephyr_lightning.export``, and the LoRA exports (the
adapter folder and the merged one, ``kind="adapter"`` / ``kind="merged"``). A card is a YAML metadata
block (``base_model``, ``datasets``, ``tags``, ``license``, ``library_name``, ``pipeline_tag``) and prose:
the stage and its recipe, the starting and reference models, the data, the final metrics, the evaluation
summary, the software versions, the command that reproduces the run, and what the paper says about the
stage. Nothing is guessed: a field whose record is missing is left out, and metadata names only what the
Hub can resolve (``namespace/name`` ids, not local paths or ``builtin:`` sources).

The records (`RunRecords`, gathered by `collect_records` from a run folder):

- ``config``: the composed config, ``<run_dir>/.hydra/config.yaml`` (secrets already blanked by
  ``train.py``). Without one, the callback describes the live module, trainer and DataModule in the same
  shape, and the standalone export the checkpoint's hyper-parameters. LoRA settings are read from
  ``model.peft`` (``r``, ``alpha``, ``dropout``, ``target_modules``, any other key as it is) and
  quantization from ``model.quantization``, when present.
- ``overrides``: ``<run_dir>/.hydra/overrides.yaml``, the command line that made the run.
- ``data_summary``: ``<run_dir>/data_summary.json``. Each top-level entry with a ``rows`` count is a
  split (one table row; its other numbers become columns, its nested values are listed under the
  table); every other top-level entry (mixture fractions, filters, decontamination counts, ...) is
  rendered as it is, as nested lists.
- ``metrics``: the final logged metrics (``trainer.callback_metrics`` at export time in the callback,
  ``<run_dir>/result.json`` for the standalone export).
- ``eval_summary``: see below.
- ``software``: package versions, recorded by the training process (the HFExport callback stores them
  in every checkpoint); when a run left none, those of the exporting process, and the card says so.
- ``progress``: optimizer steps, epochs run (a fraction when cut short) and world size, when known.

**Evaluation summary contract.** ``python -m zephyr_lightning.evaluate`` writes ``<eval_dir>/summary.json``.
The card reads ``<run_dir>/eval/summary.json`` when present, or the file given to
``python -m zephyr_lightning.export --eval-summary PATH``. It is a JSON object: each top-level number is
a result (``"win_rate": 0.62``); each top-level object of numbers is a group of results, shown as
``group/name`` (``"mt_bench": {"turn_1": 6.9, "turn_2": 6.1}``); each top-level string is a note shown
above the results (``"judge": "gpt-4-0613"``); anything else is ignored.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from zephyr_lightning.arguments import config_value
from zephyr_lightning.secrets import REDACTED, redact, redact_text, secret_env_values

log = logging.getLogger(__name__)

ExportKind = Literal["full", "merged", "adapter"]
EXPORT_KINDS: tuple[str, ...] = get_args(ExportKind)
CARD_FILE = "README.md"
EVAL_SUMMARY = Path("eval") / "summary.json"
PAPER = "https://arxiv.org/abs/2310.16944"
PROJECT = "zephyr-lightning"
# Distributions whose versions a card lists (peft only when installed).
SOFTWARE = ("zephyr-lightning", "torch", "transformers", "lightning", "datasets", "peft")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow", ".txt")
_MAX_TEXT = 200  # longest string value shown from a record (a dropped row's text, an unreadable line)
_MAX_ITEMS = 10


@dataclass
class RunRecords:
    """What a run left behind that a card can tell (see the module docstring); every part is optional."""

    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] | None = None
    data_summary: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    eval_summary: dict[str, Any] | None = None
    software: dict[str, str] = field(default_factory=dict)
    software_from_run: bool = True
    progress: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- records


def software_versions() -> dict[str, str]:
    """Versions of the packages that make a model (those installed), plus Python's."""
    versions = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in SOFTWARE:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def read_json(path: str | Path) -> Any:
    """A JSON file's content; a clear error naming the file when it is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from None


def read_eval_summary(path: str | Path) -> dict[str, Any]:
    """An evaluation summary (the contract is in the module docstring): a JSON object."""
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: an evaluation summary must be a JSON object, got {type(summary).__name__}")
    return summary


def read_run_config(run_dir: str | Path) -> dict[str, Any] | None:
    """``<run_dir>/.hydra/config.yaml`` as plain data, interpolations resolved where they can be outside
    the run (``${hydra:...}`` cannot: those values are left out), or None without one."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    return _plain(OmegaConf.load(path))


def _plain(node: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if not isinstance(node, (DictConfig, ListConfig)):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception:  # some interpolation below cannot be resolved here: resolve child by child
        pass
    keys = list(node.keys()) if isinstance(node, DictConfig) else list(range(len(node)))
    values = []
    for key in keys:
        try:
            values.append(_plain(node[key]))
        except Exception:
            values.append(None)
    return dict(zip(keys, values)) if isinstance(node, DictConfig) else values


def read_overrides(run_dir: str | Path) -> list[str] | None:
    """``<run_dir>/.hydra/overrides.yaml`` (the run's command-line overrides), or None without one."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    import yaml

    overrides = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    return [str(o) for o in overrides]


def collect_records(
    run_dir: str | Path | None,
    *,
    config: dict[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    eval_summary: str | Path | None = None,
    software: Mapping[str, str] | None = None,
    progress: Mapping[str, float] | None = None,
) -> RunRecords:
    """The records of the run in ``run_dir``; what is given here replaces what the folder holds.

    ``config`` is used when the folder has no ``.hydra/config.yaml``; ``metrics`` replace
    ``result.json``'s; ``eval_summary`` (a path) replaces ``<run_dir>/eval/summary.json``. Without
    ``software``, the versions of this process are recorded, marked as not the run's own.
    """
    folder = Path(run_dir) if run_dir is not None else None
    records = RunRecords(
        software=dict(software) if software else software_versions(),
        software_from_run=bool(software),
        progress=dict(progress or {}),
    )
    if folder is not None:
        records.config = read_run_config(folder) or {}
        records.overrides = read_overrides(folder)
        if (folder / "data_summary.json").is_file():
            records.data_summary = read_json(folder / "data_summary.json")
        if metrics is None and (folder / "result.json").is_file():
            from zephyr_lightning.sweeps.trials import read_result

            records.metrics = dict(read_result(folder).metrics)
        if eval_summary is None and (folder / EVAL_SUMMARY).is_file():
            eval_summary = folder / EVAL_SUMMARY
    if not records.config and config:
        records.config = dict(config)
    if metrics is not None:
        records.metrics = {k: float(v) for k, v in metrics.items()}
    if eval_summary is not None:
        records.eval_summary = read_eval_summary(eval_summary)
    records.config = redact(records.config)  # a second line: train.py already blanked .hydra/
    return records


# ---------------------------------------------------------------------------------------- the card


def write_card(
    folder: str | Path,
    records: RunRecords,
    *,
    kind: ExportKind = "full",
    model_id: str | None = None,
    license: str | None = None,
) -> Path:
    """Write ``folder/README.md`` (see `render_card`); returns its path."""
    path = Path(folder) / CARD_FILE
    path.write_text(render_card(records, kind=kind, model_id=model_id, license=license), encoding="utf-8")
    return path


def render_card(
    records: RunRecords,
    *,
    kind: ExportKind = "full",
    model_id: str | None = None,
    license: str | None = None,
) -> str:
    """The card's text: YAML metadata, then prose. ``model_id`` is the Hub repository the export goes to
    (the title and the usage example name it); ``license`` the model's license id, when known (else the
    license in a local starting model's own card, else none). Both default to the run's own
    ``callbacks.hf_export`` settings when its config has them."""
    if kind not in EXPORT_KINDS:
        raise ValueError(f"kind={kind!r}: must be one of {list(EXPORT_KINDS)}")
    from huggingface_hub import ModelCardData

    cfg = records.config
    stage = _stage(cfg)
    # The run's own export settings (callbacks.hf_export) stand in for what this call leaves unsaid.
    model_id = model_id or config_value(cfg, "callbacks.hf_export.hub_model_id")
    base = _model_spec(cfg).get("name_or_path")
    base_card = _local_card_metadata(base)
    license = license or config_value(cfg, "callbacks.hf_export.license") or base_card.get("license")
    # A local starting model that is a previous stage's export names the Hub repository it was made for.
    base_repo = base if is_hub_id(base) else base_card.get("model_name") if is_hub_id(base_card.get("model_name")) else None
    sources = _data_sources(cfg, records.data_summary)
    peft, quantization = config_value(cfg, "model.peft"), config_value(cfg, "model.quantization")
    tags = [PROJECT, *(["sft"] if stage == "sft" else ["dpo"] if stage == "dpo" else [])]
    if peft:
        tags.append("qlora" if quantization else "lora")
    tags += ["peft"] if kind == "adapter" else []
    metadata = ModelCardData(
        base_model=base_repo,
        datasets=[s for s in sources if is_hub_id(s)] or None,
        license=license,
        library_name="peft" if kind == "adapter" else "transformers",
        pipeline_tag="text-generation",
        tags=tags,
        model_name=model_id,
    )
    body = [
        *_intro(stage, base, base_card, sources, kind, model_id),
        *_usage(kind, model_id or "path/to/this/folder"),
        *_recipe(cfg, stage, records.progress),
        *_data(sources, records.data_summary),
        *_metrics(records.metrics),
        *_evaluation(records.eval_summary),
        *_reproduce(records.overrides, records.software),
        *_software(records.software, records.software_from_run),
        *_paper(stage),
    ]
    text = "---\n" + metadata.to_yaml() + "\n---\n\n" + "\n".join(body).rstrip() + "\n"
    for secret in secret_env_values():  # a second line: no credential's value reaches a card, wherever it hid
        text = text.replace(secret, REDACTED)
    return text


# ------------------------------------------------------------------------------------------ helpers


def _stage(cfg: Mapping[str, Any]) -> str | None:
    target = str(config_value(cfg, "module._target_") or "").rsplit(".", 1)[-1]
    return {"SFTModule": "sft", "DPOModule": "dpo"}.get(target)


def _model_spec(cfg: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("model", "module.policy", "module.model"):
        spec = config_value(cfg, key)
        if isinstance(spec, Mapping) and spec.get("name_or_path"):
            return dict(spec)
        if isinstance(spec, str) and spec:
            return {"name_or_path": spec}
    return {}


def is_hub_id(name: Any) -> bool:
    """A Hub repository id (``namespace/name``), not a local path or a built-in source."""
    if not isinstance(name, str) or not _HUB_ID.match(name) or ".." in name or "--" in name or len(name) > 96:
        return False
    return not name.lower().endswith(_LOCAL_SUFFIXES) and not Path(name).exists()


def _local_card_metadata(name_or_path: Any) -> dict[str, Any]:
    """The metadata of a local starting model's own card (a previous stage's export), or {}."""
    if not isinstance(name_or_path, str) or not (Path(name_or_path) / CARD_FILE).is_file():
        return {}
    from huggingface_hub.repocard import metadata_load

    try:
        return metadata_load(Path(name_or_path) / CARD_FILE) or {}
    except Exception:  # a hand-written README without valid metadata: nothing to inherit
        return {}


def _data_sources(cfg: Mapping[str, Any], summary: Mapping[str, Any] | None) -> list[str]:
    """Every data source the run names (``data.path``, ``source``/``sources``/``path`` entries of the
    data summary), in order, without repeats."""
    found: list[str] = []

    def add(value: Any) -> None:
        if isinstance(value, str) and value and value not in found:
            found.append(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                add(item.get("path") if isinstance(item, Mapping) else item)

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key in ("source", "sources", "path"):
                    add(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    add(config_value(cfg, "data.path"))
    walk(summary or {})
    return found


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        shown = ", ".join(_fmt(v) for v in value[:_MAX_ITEMS])
        return shown + (f", ... ({len(value)} in all)" if len(value) > _MAX_ITEMS else "")
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    text = " ".join(str(value).split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def _cell(value: Any) -> str:
    return _fmt(value).replace("|", "\\|")


def _code(name: Any) -> str:
    return f"`{name}`" if name is not None else ""


def _model_link(name: str, kind: str = "model") -> str:
    if not is_hub_id(name):
        return f"`{name}`"
    prefix = "https://huggingface.co/" + ("datasets/" if kind == "dataset" else "")
    return f"[{name}]({prefix}{name})"


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _bullets(value: Any, depth: int = 0) -> list[str]:
    """Nested Markdown lists of any JSON-like value; empty entries are left out."""
    pad = "  " * depth
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if item in ({}, [], None, ""):
                continue
            if _scalar(item) or (isinstance(item, list) and all(_scalar(v) for v in item)):
                lines.append(f"{pad}- {key}: {_fmt(item)}")
            elif depth >= 3:
                lines.append(f"{pad}- {key}: {_fmt(json.dumps(item))}")
            else:
                lines += [f"{pad}- {key}:", *_bullets(item, depth + 1)]
    elif isinstance(value, list):
        for item in value[:_MAX_ITEMS]:
            nested = _bullets(item, depth + 1) if not _scalar(item) else []
            lines += [f"{pad}- {_fmt(item)}"] if not nested else [f"{pad}-", *nested]
        if len(value) > _MAX_ITEMS:
            lines.append(f"{pad}- ... ({len(value)} in all)")
    elif value not in (None, ""):
        lines.append(f"{pad}- {_fmt(value)}")
    return lines


# ------------------------------------------------------------------------------------------ sections

_STAGES = {
    "sft": ("dSFT", "distilled supervised fine-tuning"),
    "dpo": ("dDPO", "distilled direct preference optimization"),
}
_KINDS = {
    "full": "This folder holds the full trained weights (safetensors), the tokenizer and its chat template.",
    "merged": "This folder holds the base model with the trained LoRA adapter merged into its weights: it loads "
    "like any causal LM, without PEFT.",
    "adapter": "This folder holds the trained LoRA adapter only (PEFT format); it loads on top of the base model.",
}
_LOSSES = {
    "sigmoid": "sigmoid (DPO, Rafailov et al. 2023)",
    "ipo": "ipo (IPO, Azar et al. 2023; log-probabilities averaged over completion tokens)",
    "hinge": "hinge (SLiC, Zhao et al. 2023)",
}


def _intro(stage, base, base_card, sources, kind, model_id) -> list[str]:
    short, long = _STAGES.get(stage, ("", ""))
    title = model_id or (f"{short} model" if short else "Model") + f" trained with {PROJECT}"
    what = f"a {short} ({long}) fine-tune" if short else "a fine-tune"
    sentence = f"This model is {what}"
    if base:
        sentence += f" of {_model_link(base)}"
    if sources:
        sentence += " on " + ", ".join(_model_link(s, "dataset") for s in sources)
    sentence += (f", trained with {PROJECT}, a PyTorch Lightning implementation of the Zephyr recipe "
                 f"([Tunstall et al. 2023]({PAPER})).")
    lines = [f"# {title}", "", sentence, "", _KINDS[kind]]
    if base_card:
        inherited = {k: base_card[k] for k in ("model_name", "base_model", "license", "datasets") if base_card.get(k)}
        if inherited:
            lines += ["", f"The starting model `{base}` is a local folder; its own card names "
                      + "; ".join(f"{k}: {_fmt(v)}" for k, v in inherited.items()) + "."]
    return lines + [""]


def _usage(kind: str, model_id: str) -> list[str]:
    if kind == "adapter":
        code = [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{model_id}")  # loads the base model, then the adapter',
            f'tokenizer = AutoTokenizer.from_pretrained("{model_id}")',
            'messages = [{"role": "user", "content": "What is the capital of France?"}]',
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)",
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=128)[0]))",
        ]
    else:
        code = [
            "from transformers import pipeline",
            "",
            f'chat = pipeline("text-generation", model="{model_id}")',
            'messages = [{"role": "user", "content": "What is the capital of France?"}]',
            'print(chat(messages, max_new_tokens=128)[0]["generated_text"][-1]["content"])',
        ]
    return ["## Use it", "", "```python", *code, "```", ""]


def _recipe(cfg: Mapping[str, Any], stage: str | None, progress: Mapping[str, float]) -> list[str]:
    rows: list[tuple[str, Any]] = []

    def add(label: str, value: Any) -> None:
        if value not in (None, "", [], {}):
            rows.append((label, value))

    module = config_value(cfg, "module") or {}
    spec = _model_spec(cfg)
    if stage:
        short, long = _STAGES[stage]
        add("stage", f"{short} ({long}), `{str(module.get('_target_', '')).rsplit('.', 1)[-1]}`")
    add("starting model", spec.get("name_or_path"))
    add("starting model revision", spec.get("revision"))
    if stage == "sft":
        loss_on = config_value(cfg, "data.loss_on")
        add("loss", "mean negative log-likelihood per scored token" + (f", on {loss_on} tokens" if loss_on else ""))
    if stage == "dpo":
        loss = module.get("loss_type")
        add("loss", _LOSSES.get(loss, loss))
        add("beta", module.get("beta"))
        if module.get("label_smoothing"):
            add("label smoothing (conservative DPO)", module.get("label_smoothing"))
        reference = module.get("reference")
        if module.get("reference_free"):
            add("reference model", "none (reference-free)")
        elif isinstance(reference, Mapping) and reference.get("name_or_path"):
            add("reference model", f"{reference['name_or_path']}, frozen")
        elif isinstance(reference, str):
            add("reference model", f"{reference}, frozen")
        elif "reference" in module:
            add("reference model", "the starting model, frozen")
        if module.get("precompute_reference"):
            add("reference log-probabilities", "computed once before training")
    optim = config_value(cfg, "optim") or {}
    if optim:
        add("optimizer", "AdamW" + (f" (betas {_fmt(optim['betas'])}, eps {_fmt(optim.get('eps'))})" if optim.get("betas") else ""))
    add("learning rate", optim.get("lr"))
    schedule = optim.get("schedule")
    if schedule:
        warmup = optim.get("warmup_ratio")
        add("schedule", f"{schedule}" + (f", {_fmt(warmup * 100)}% warmup" if warmup else ", no warmup"))
    if optim.get("min_lr_ratio"):
        add("final learning rate (fraction of peak)", optim["min_lr_ratio"])
    add("weight decay", optim.get("weight_decay"))
    trainer = config_value(cfg, "trainer") or {}
    epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps")
    add("epochs", epochs)
    if isinstance(max_steps, int) and max_steps > 0:
        add("max optimizer steps", max_steps)
    add("optimizer steps run", progress.get("global_step"))
    add("epochs run", progress.get("epochs"))
    data = config_value(cfg, "data") or {}
    unit = {"dpo": "preference pairs", "sft": "packed rows" if data.get("packing") else "dialogues"}.get(stage, "rows")
    batch = data.get("batch_size")
    add("batch size per device", f"{batch} {unit}" if batch else None)
    accumulate = trainer.get("accumulate_grad_batches")
    if accumulate and accumulate != 1:
        add("gradient accumulation", accumulate)
    world = progress.get("world_size") or _world_size(trainer)
    add("devices", world)
    if batch and world:
        add("effective batch size", f"{batch * (accumulate or 1) * world} {unit}")
    add("max length (tokens)", data.get("max_length"))
    add("max prompt length (tokens)", data.get("max_prompt_length"))
    if "packing" in data:
        add("packing", data.get("packing"))
    add("precision", trainer.get("precision"))
    add("strategy", _strategy_name(trainer.get("strategy")))
    add("weights dtype", spec.get("dtype"))
    if spec.get("gradient_checkpointing"):
        add("gradient checkpointing", True)
    add("attention", spec.get("attn_implementation"))
    add("gradient clipping (norm)", trainer.get("gradient_clip_val"))
    add("seed", cfg.get("seed") if isinstance(cfg, Mapping) else None)
    peft = config_value(cfg, "model.peft")
    if isinstance(peft, Mapping):
        labels = {"r": "LoRA rank (r)", "alpha": "LoRA alpha", "lora_alpha": "LoRA alpha", "dropout": "LoRA dropout",
                  "lora_dropout": "LoRA dropout", "target_modules": "LoRA target modules"}
        for key, value in peft.items():
            if not str(key).startswith("_"):
                add(labels.get(key, f"LoRA {key}"), value)
    quantization = config_value(cfg, "model.quantization")
    if isinstance(quantization, Mapping):
        add("quantization", {k: v for k, v in quantization.items() if not str(k).startswith("_")})
    elif quantization:
        add("quantization", quantization)
    if not rows:
        return []
    return ["## Training procedure", "", *_table(("setting", "value"), rows), ""]


def _world_size(trainer: Mapping[str, Any]) -> int | None:
    devices, nodes = trainer.get("devices"), trainer.get("num_nodes") or 1
    if isinstance(devices, list):
        devices = len(devices)
    return devices * nodes if isinstance(devices, int) and isinstance(nodes, int) and devices > 0 else None


def _strategy_name(strategy: Any) -> str | None:
    if isinstance(strategy, Mapping):
        target = str(strategy.get("_target_", "")).rsplit(".", 1)[-1]
        return target.removesuffix("_strategy").removesuffix("Strategy") or None
    return strategy if isinstance(strategy, str) else None


def _data(sources: list[str], summary: Mapping[str, Any] | None) -> list[str]:
    if not sources and not summary:
        return []
    lines = ["## Training data", ""]
    lines += [f"- {_model_link(s, 'dataset')}" for s in sources]
    if not summary:
        return lines + [""]
    splits = {k: v for k, v in summary.items() if isinstance(v, Mapping) and "rows" in v}
    others = {k: v for k, v in summary.items() if k not in splits}
    if splits:
        columns: list[str] = []
        for counts in splits.values():
            columns += [k for k, v in counts.items() if _scalar(v) and k not in columns]
        lines += ["", "Rows per split, from the run's data summary:", ""]
        lines += _table(("used for", *columns), [(name, *(counts.get(c, "") for c in columns)) for name, counts in splits.items()])
        details = [
            (name, key, value)
            for name, counts in splits.items()
            for key, value in counts.items()
            if not _scalar(value) and value not in ({}, [])
        ]
        if details:
            lines.append("")
        for name, key, value in details:
            if isinstance(value, list) and not all(_scalar(v) for v in value):
                lines.append(f"- {name}, {key}: {len(value)} entries")
            elif isinstance(value, list):
                lines.append(f"- {name}, {key}: {len(value)} ({_fmt(value)})")
            else:
                lines += [f"- {name}, {key}:", *_bullets(value, 1)]
    if others:
        lines += ["", *_bullets(others)]
    return lines + [""]


def _metric_order(name: str) -> tuple[int, str]:
    return ({"val": 0, "train": 1}.get(name.split("/", 1)[0], 2), name)


def _metrics(metrics: Mapping[str, float]) -> list[str]:
    if not metrics:
        return []
    rows = [(f"`{name}`", metrics[name]) for name in sorted(metrics, key=_metric_order)]
    return ["## Final metrics", "", "Logged at the end of training:", "", *_table(("metric", "value"), rows), ""]


def _evaluation(summary: Mapping[str, Any] | None) -> list[str]:
    if not summary:
        return []

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    notes = [(k, v) for k, v in summary.items() if isinstance(v, str)]
    rows = [(k, v) for k, v in summary.items() if number(v)]
    for group, values in summary.items():
        if isinstance(values, Mapping):
            rows += [(f"{group}/{k}", v) for k, v in values.items() if number(v)]
    if not rows and not notes:
        return []
    lines = ["## Evaluation", ""]
    lines += [f"- {key}: {_fmt(value)}" for key, value in notes]
    if rows:
        lines += ([""] if notes else []) + _table(("result", "value"), [(f"`{k}`", v) for k, v in rows])
    return lines + [""]


def _reproduce(overrides: list[str] | None, software: Mapping[str, str]) -> list[str]:
    if overrides is None:
        return []
    command = " ".join(["python", "train.py", *(shlex.quote(redact_text(o)) for o in overrides)])
    version = software.get(PROJECT)
    where = f" (version {version})" if version else ""
    return ["## Reproduce", "", f"From a checkout of {PROJECT}{where}, with the same data and starting model:", "",
            "```bash", command, "```", ""]


def _software(software: Mapping[str, str], from_run: bool) -> list[str]:
    if not software:
        return []
    note = "" if from_run else " (of the process that wrote this export; the training run did not record its own)"
    return [f"## Software{note}", "", *(f"- {name} {version}" for name, version in software.items()), ""]


_PAPER_NOTES = {
    "sft": [
        "Zephyr's first stage (sections 3 and 4 of the paper): distilled supervised fine-tuning of Mistral-7B "
        "on UltraChat, dialogues written by a teacher model (the filtered `HuggingFaceH4/ultrachat_200k`). "
        "The paper trains for one to three epochs with AdamW and no weight decay, a peak learning rate of "
        "2e-5 with a cosine schedule and 10% warmup, sequences of 2048 tokens, in bfloat16. It finds dSFT a "
        "prerequisite: preference optimization started from the base model instead fails to learn from the feedback.",
    ],
    "dpo": [
        "Zephyr's third stage (sections 3 and 4 of the paper): DPO on AI feedback. UltraFeedback has four "
        "models answer each prompt and GPT-4 score the answers; the best answer is kept as chosen and a random "
        "other one as rejected (`HuggingFaceH4/ultrafeedback_binarized`). The dSFT model is both the starting "
        "point and the frozen reference. The paper uses beta 0.1, a learning rate of 5e-7 with a linear "
        "schedule and 10% warmup, AdamW with no weight decay, in bfloat16; the alignment handbook's later "
        "recipe uses beta 0.01. Zephyr-7B-beta was trained for three epochs: the paper observes that the model "
        "overfits the preference data without losing chat quality, and reports MT-Bench 7.34 and an AlpacaEval "
        "win rate of 90.60%.",
    ],
}

_CITATION = """@misc{tunstall2023zephyr,
  title = {Zephyr: Direct Distillation of LM Alignment},
  author = {Lewis Tunstall and Edward Beeching and Nathan Lambert and Nazneen Rajani and Kashif Rasul and
            Younes Belkada and Shengyi Huang and Leandro von Werra and Cl\\'ementine Fourrier and Nathan Habib and
            Nathan Sarrazin and Omar Sanseviero and Alexander M. Rush and Thomas Wolf},
  year = {2023},
  eprint = {2310.16944},
  archivePrefix = {arXiv},
}"""


def _paper(stage: str | None) -> list[str]:
    lines = []
    if stage in _PAPER_NOTES:
        lines += ["## The stage in the paper", "", *_PAPER_NOTES[stage], ""]
    return lines + ["## Citation", "", "```bibtex", _CITATION, "```", ""]
