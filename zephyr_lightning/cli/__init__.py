"""The Hydra commands: ``zephyr-train`` (``python train.py``), ``zephyr-aif`` (``python -m
zephyr_lightning.aif``), ``zephyr-eval`` (``python -m zephyr_lightning.evaluate``) and ``zephyr-plan``
(``python -m zephyr_lightning.plan``). These are the only modules that read Hydra config; everything they
build is a plain-Python library object (``import zephyr_lightning`` needs no Hydra).

Every command starts through `zephyr_lightning.cli.app`: ``@hydra_command(...)`` in place of ``hydra.main``
for a Hydra command, ``with guarded_command(argv):`` around the body of any other. That keeps credentials
out of everything a run writes and prints user errors as one message."""
