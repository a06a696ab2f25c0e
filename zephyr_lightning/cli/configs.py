"""Where the Hydra configs are, and the defaults they take from the library's signatures.

The configs are the repository's ``conf/`` folder, installed inside the package (``zephyr_lightning/conf``)
by a wheel, so the commands work from a plain ``pip install``. A config of a library object lists only
what differs from its class's defaults; the rest comes from the class's signature, stored in Hydra's
ConfigStore as ``signatures/<Class>`` and merged in by the config's defaults list::

    defaults:
      - /signatures/ModelSpec@_here_
    name_or_path: mistralai/Mistral-7B-v0.1

so ``python train.py --cfg job`` still shows every effective value, and a default lives in one place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zephyr_lightning
from zephyr_lightning.arguments import declared_arguments, declared_defaults

# The classes whose config files take their defaults from the signature: `_target_` path -> class.
SIGNATURES: dict[str, Callable[[], type]] = {
    "zephyr_lightning.ModelSpec": lambda: zephyr_lightning.ModelSpec,
    "zephyr_lightning.OptimizerConfig": lambda: zephyr_lightning.OptimizerConfig,
    "zephyr_lightning.DPOModule": lambda: zephyr_lightning.DPOModule,
    "zephyr_lightning.SFTModule": lambda: zephyr_lightning.SFTModule,
    "zephyr_lightning.PreferenceDataModule": lambda: zephyr_lightning.PreferenceDataModule,
    "zephyr_lightning.SFTDataModule": lambda: zephyr_lightning.SFTDataModule,
    "zephyr_lightning.callbacks.UpdateGuard": lambda: _callback("UpdateGuard"),
    "zephyr_lightning.callbacks.NonFiniteGuard": lambda: _callback("NonFiniteGuard"),
    "zephyr_lightning.callbacks.SampleGeneration": lambda: _callback("SampleGeneration"),
    "zephyr_lightning.callbacks.HFExport": lambda: _callback("HFExport"),
    "zephyr_lightning.callbacks.JudgedEvaluation": lambda: _callback("JudgedEvaluation"),
    "zephyr_lightning.evaluate.Evaluation": lambda: _evaluation(),
}


def _callback(name: str) -> type:
    import zephyr_lightning.callbacks as callbacks

    return getattr(callbacks, name)


def _evaluation() -> type:
    from zephyr_lightning.evaluate import Evaluation

    return Evaluation


def conf_dir() -> Path:
    """The config folder: inside the installed package, or ``conf/`` beside it in a source checkout."""
    package = Path(zephyr_lightning.__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no Hydra configs found in {package / 'conf'} or {package.parent / 'conf'}: "
                            "reinstall zephyr-lightning (pip install .)")


def signature_node(target: str) -> dict[str, Any]:
    """``{_target_, every argument with a default}`` for one class; required arguments are ``???``."""
    cls = SIGNATURES[target]()
    node: dict[str, Any] = {"_target_": target}
    defaults = declared_defaults(cls)
    for name in declared_arguments(cls):
        node[name] = defaults.get(name, "???")
    return node


@functools.cache
def register_signatures() -> None:
    """Store ``signatures/<Class>`` for each class in `SIGNATURES` (once per process)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for target in SIGNATURES:
        store.store(group="signatures", name=target.rsplit(".", 1)[-1], node=signature_node(target))


def compose(config_name: str, overrides: Sequence[str] = (), *, config_dir: str | Path | None = None):
    """A config composed exactly as the command line would compose it (tests, recipes, the sweep checker).
    Also from inside a running Hydra app (a recipe composing each of its stages): that app's Hydra state is
    set aside while composing and put back after."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_signatures()
    running = GlobalHydra.instance()
    outer = running.hydra if running.is_initialized() else None
    running.clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir or conf_dir()), version_base="1.3"):
            return hydra_compose(config_name, overrides=list(overrides))
    finally:
        if outer is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(outer)
