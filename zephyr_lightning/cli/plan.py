"""The plan command: compose conf/train.yaml as the train command does, print the memory plan per device.

    zephyr-plan +experiment=zephyr_7b_dpo_qlora                 # installed; `python -m zephyr_lightning.plan ...`
    python -m zephyr_lightning.plan +experiment=zephyr_7b_dpo_full
    python -m zephyr_lightning.plan +experiment=dpo model/peft=lora trainer.devices=8 strategy=fsdp
    python -m zephyr_lightning.plan --devices 1,8,64 +experiment=zephyr_7b_sft_full

Every argument but ``--devices`` is a Hydra override, exactly as `python train.py` takes it. Nothing is loaded:
the model's shape comes from its config.json (local or cached), ``model.config_overrides`` for the built-in
model, or a table of known models.
"""

from __future__ import annotations

import argparse
import sys

from omegaconf import OmegaConf

from zephyr_lightning.cli.app import guarded_command
from zephyr_lightning.cli.configs import compose
from zephyr_lightning.plan import GIB, ShapeUnknown, plan_from_config, tokens_note


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    with guarded_command(argv):  # credentials in overrides stay off the console; user errors in one line
        _plan(argv)


def _plan(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="zephyr-plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", help="device counts to plan for, e.g. 1,8,64 (default: the config's)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for `python train.py`")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if not any(o.lstrip("+~").startswith("paths.output_dir") for o in overrides):
        overrides.append("paths.output_dir=.")  # nothing is written; Hydra's run folder exists only in a run
    cfg = compose("train", overrides)
    if cfg.get("module") is None:
        parser.error("no `module` in the config: choose a stage with +experiment=dpo or +experiment=sft")
    plain = OmegaConf.to_container(cfg, resolve=True)
    counts = [int(c) for c in args.devices.split(",")] if args.devices else [None]
    for count in counts:
        try:
            plan = plan_from_config(plain, devices=count)
        except ShapeUnknown as error:
            raise SystemExit(f"zephyr-plan: {error}") from None
        print(f"memory per device ({tokens_note(plain)}):")
        print(plan.describe())
        if len(counts) > 1:
            print(f"-- {plan.devices} devices: {plan.total / GIB:.2f} GiB each\n")


if __name__ == "__main__":
    main()
