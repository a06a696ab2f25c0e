"""The library is importable on its own: no Hydra, callbacks under the package namespace."""

from __future__ import annotations

import subprocess
import sys


def test_library_imports_without_hydra():
    code = (
        "import sys, zephyr_lightning, zephyr_lightning.aif, zephyr_lightning.callbacks, zephyr_lightning.export, zephyr_lightning.sweeps;"
        "import zephyr_lightning.evaluate, zephyr_lightning.aif.grading;"
        "import zephyr_lightning.validation, zephyr_lightning.resume, zephyr_lightning.secrets;"
        "import zephyr_lightning.checkpoint_io, zephyr_lightning.data.resumable;"
        "from zephyr_lightning import DPOModule, PreferenceDataModule, dpo_loss;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_callbacks_are_installed_inside_the_package():
    import zephyr_lightning.callbacks as callbacks

    assert callbacks.__name__ == "zephyr_lightning.callbacks"
    assert hasattr(callbacks, "HFExport") and hasattr(callbacks, "SampleGeneration")
