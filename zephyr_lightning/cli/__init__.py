"""The Hydra commands: ``zephyr-train`` (``python train.py``), ``zephyr-aif`` (``python -m
zephyr_lightning.aif``) and ``zephyr-eval`` (``python -m zephyr_lightning.evaluate``). These are the only
modules that read Hydra config; everything they build is a plain-Python library object (``import
zephyr_lightning`` needs no Hydra)."""
