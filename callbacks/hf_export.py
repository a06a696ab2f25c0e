"""Export the trained model as a Hugging Face folder with a model card when fitting ends, and push it."""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
from transformers import PreTrainedTokenizerBase

from zephyr_lightning.arguments import check_arguments, cross_check
from zephyr_lightning.callbacks._tokenizer import find_tokenizer
from zephyr_lightning.export import PushExport, adapter_dir_for, export_adapter_run, export_hf, pushed_folder
from zephyr_lightning.hub import HubPushError, HubRepoId, push_folder, push_refusal
from zephyr_lightning.modelcard import collect_records, render_card, software_versions

log = logging.getLogger(__name__)


def full_state_dict(trainer: L.Trainer) -> dict:
    """The LightningModule's whole state dict on rank 0, whatever the strategy shards."""
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = trainer.strategy
    if isinstance(strategy, FSDPStrategy) and getattr(strategy, "_state_dict_type", "full") != "full":
        # Checkpoints are sharded; the export still needs every weight in one place.
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(strategy.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return strategy.lightning_module_state_dict()


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def live_config(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """The run described in the shape of a composed config (``module``, ``model``, ``optim``, ``trainer``,
    ``data``), from the live objects: what a card tells when the run folder has no ``.hydra/config.yaml``
    (the module used from Python, a pipeline stage)."""
    hparams = dict(getattr(pl_module, "hparams", {}) or {})
    cls = type(pl_module)
    spec = hparams.get("policy", hparams.get("model"))
    config: dict[str, Any] = {
        "module": {"_target_": f"{cls.__module__}.{cls.__qualname__}",
                   **{k: v for k, v in hparams.items() if k not in ("model", "policy", "optim")}},
        "model": spec if isinstance(spec, dict) else {"name_or_path": spec} if spec else {},
        "optim": hparams.get("optim") or {},
        "trainer": {
            "precision": trainer.precision,
            "max_epochs": trainer.max_epochs,
            "max_steps": trainer.max_steps,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "gradient_clip_val": trainer.gradient_clip_val,
            "strategy": type(trainer.strategy).__name__.removesuffix("Strategy"),
        },
    }
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None:
        # The constructor arguments the DataModule keeps as attributes (its own and its base classes').
        names = {name for c in type(datamodule).__mro__ if "__init__" in vars(c)
                 for name in inspect.signature(vars(c)["__init__"]).parameters if name != "self"}
        values = {name: getattr(datamodule, name, None) for name in sorted(names)}
        config["data"] = {name: value for name, value in values.items() if value is not None and _plain(value)}
    return config


def live_progress(trainer: L.Trainer) -> dict[str, float]:
    """Optimizer steps, epochs (a fraction for a run stopped mid-epoch) and world size of the finished fit."""
    progress: dict[str, float] = {"global_step": trainer.global_step, "world_size": trainer.world_size}
    batches = trainer.num_training_batches
    if isinstance(batches, int) and batches > 0:
        steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
        progress["epochs"] = round(trainer.global_step / steps_per_epoch, 2)
    return progress


def _hub_model_id_needed(args: dict[str, Any]) -> tuple[str, str] | None:
    if args["push_to_hub"] and not args["hub_model_id"]:
        return "hub_model_id", "required when push_to_hub=true (the Hub repository, e.g. your-name/zephyr-7b-dpo)"
    return None


@cross_check(_hub_model_id_needed)
class HFExport(L.Callback):
    """Write ``dirpath`` (config, safetensors weights, tokenizer with chat template, model card) at the end
    of fit, and push it to the Hugging Face Hub when asked.

    The folder loads with ``AutoModelForCausalLM.from_pretrained(dirpath)`` and is what the next
    stage starts from (``model.name_or_path=DIR/hf``). The weights are the module's ``model`` at the
    end of training, gathered from all ranks first under sharded strategies. The tokenizer is the
    one given here, or the DataModule's ``tokenizer``. A module that trained adapters also writes the
    adapter folder (``adapter_dirpath``, by default ``DIR/hf-adapter``), and ``dirpath`` holds the full
    model with the adapter merged in (`zephyr_lightning.export.export_adapter_run`). The card (``README.md``,
    `zephyr_lightning.modelcard`) is written from the run folder's records (``trainer.default_root_dir``)
    and the live trainer: the final ``callback_metrics``, progress, the software of this process (also
    stored in every checkpoint, for a later ``python -m zephyr_lightning.export``).

    Args:
        dirpath: the export folder, written through a temporary folder and renamed into place when complete.
        tokenizer: saved with the model; default the DataModule's.
        adapter_dirpath: where an adapter run's adapter folder goes; default ``<dirpath>-adapter``.
        push_to_hub: upload the finished folder to ``hub_model_id`` (global rank 0 only). Needs a token in
            ``HF_TOKEN``; without one the callback refuses at construction, before anything is loaded. A
            failed push keeps the export and logs the command that retries it; the run itself succeeds.
        hub_model_id: the Hub repository, ``namespace/name``.
        push_export: which of an adapter (LoRA/QLoRA) run's two folders is pushed: ``"adapter"``
            (``adapter_dirpath``: what TRL's ``push_to_hub`` and the alignment handbook publish for their
            QLoRA recipes; megabytes; loads with ``AutoPeftModelForCausalLM``, which fetches the base it names),
            ``"merged"`` (``dirpath``: a full model that transformers, vLLM or TGI load alone), or ``"auto"``:
            the adapter when its base is a Hub repository, else the merged model (an adapter whose base is a
            local folder or ``builtin:`` loads nowhere else). Full fine-tuning pushes ``dirpath`` whatever this says.
        private: create the repository private (applies to a new repository only).
        revision: the branch to push to, created when missing; default ``main``.
        license: the model's license id for the card's metadata (e.g. ``apache-2.0``); default the
            license in a local starting model's card, else none.
    """

    def __init__(
        self,
        dirpath: str | Path,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        adapter_dirpath: str | Path | None = None,
        push_to_hub: bool = False,
        hub_model_id: HubRepoId | None = None,
        push_export: PushExport = "auto",
        private: bool | None = None,
        revision: str | None = None,
        license: str | None = None,
    ) -> None:
        check_arguments(HFExport, locals(), prefix="callbacks.hf_export")
        if push_to_hub and (refusal := push_refusal()):
            raise HubPushError(f"callbacks.hf_export.push_to_hub=true: {refusal}")
        self.dirpath = Path(dirpath)
        self.tokenizer = tokenizer
        self.adapter_dirpath = adapter_dir_for(dirpath) if adapter_dirpath is None else Path(adapter_dirpath)
        self.push_to_hub = push_to_hub
        self.hub_model_id = hub_model_id
        self.push_export = push_export
        self.private = private
        self.revision = revision
        self.license = license
        self._software: dict[str, str] | None = None

    @property
    def software(self) -> dict[str, str]:
        if self._software is None:
            self._software = software_versions()
        return self._software

    def state_dict(self) -> dict[str, Any]:
        # Every checkpoint carries the versions that trained it, for a card written later from the checkpoint.
        return {"software": dict(self.software)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # a resumed run records the versions it runs with

    def card(self, trainer: L.Trainer, pl_module: L.LightningModule, kind: str = "full") -> str | None:
        """The model card of the export (``kind``: full, merged or adapter), or None (with the reason
        logged) when it cannot be written: a documentation failure must not cost the trained model."""
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        try:
            records = collect_records(trainer.default_root_dir, config=live_config(trainer, pl_module), metrics=metrics,
                                      software=self.software, progress=live_progress(trainer))
            return render_card(records, kind=kind, model_id=self.hub_model_id, license=self.license)
        except Exception:
            log.exception("the model card could not be written; exporting %s without one", self.dirpath)
            return None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A collective under FSDP/DeepSpeed: every rank takes part, rank 0 receives the full weights.
        full_state = full_state_dict(trainer)
        if not trainer.is_global_zero:
            return  # one process writes the folder and pushes it
        self.export(trainer, pl_module, full_state)
        if self.push_to_hub:
            self.push()

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule, full_state: dict) -> None:
        """Write the folder(s) from the module's gathered state dict (rank 0)."""
        prefix = "model."
        tokenizer = find_tokenizer(trainer, self.tokenizer)
        adapter_keys = getattr(pl_module, "adapter_keys", None)
        if adapter_keys is not None:
            state = {k[len(prefix) :]: v for k, v in full_state.items() if k in adapter_keys}
            source = pl_module.model_spec if pl_module.model_spec is not None else pl_module.model
            export_adapter_run(source, state, tokenizer, self.dirpath, self.adapter_dirpath,
                               cards=lambda kind: self.card(trainer, pl_module, kind))
            log.info("Hugging Face export: %s (merged), %s (adapter)", self.dirpath, self.adapter_dirpath)
        else:
            state = {k[len(prefix) :]: v for k, v in full_state.items() if k.startswith(prefix)}
            export_hf(pl_module.model, tokenizer, self.dirpath, state_dict=state, card=self.card(trainer, pl_module))
            log.info("Hugging Face export: %s", self.dirpath)

    def push(self) -> str | None:
        """Upload the finished export (`pushed_folder` picks an adapter run's folder); on failure log why and
        the command that retries it, and return None."""
        folder = pushed_folder(self.dirpath, self.push_export, self.adapter_dirpath)
        try:
            return push_folder(folder, self.hub_model_id, private=self.private, revision=self.revision)
        except HubPushError as error:
            log.error("%s", error)
            return None
