"""``python -m zephyr_lightning.sweeps check [--run] SWEEP.yaml ...``: check W&B sweep files offline.

Run it from the folder where ``wandb agent`` will run (the repository root): ``program`` is relative to it
and the Hydra configs are read from ``--config-dir`` (default ``./conf``). Exits 1 when any file has a
problem, printing each, named by file and key.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from zephyr_lightning.cli.app import guarded_command
from zephyr_lightning.sweeps.check import QUICK_RUN_OVERRIDES, check_sweep_file, run_sweep_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m zephyr_lightning.sweeps", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check W&B sweep files against the Hydra configs")
    check.add_argument("files", nargs="+", help="sweep files, e.g. sweeps/*.yaml")
    check.add_argument("--config-dir", default="conf", help="the Hydra config folder (default: ./conf)")
    check.add_argument("--config-name", default="train", help="the primary config (default: train)")
    check.add_argument("--root", default=".", help="where the agent runs; `program` is relative to it (default: .)")
    check.add_argument("--run", action="store_true",
                       help="also run each valid file's command once, as the agent would, with a short run")
    check.add_argument("--run-override", action="append", default=None, metavar="KEY=VALUE",
                       help=f"extra Hydra override for --run (repeatable; default: {' '.join(QUICK_RUN_OVERRIDES)})")
    check.add_argument("--timeout", type=float, default=None, help="seconds allowed to each --run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Check the files; 1 when any has a problem. Secrets on the command line or in the environment are
    blanked in what it prints (`zephyr_lightning.cli.app.guarded_command`)."""
    with guarded_command(argv):
        return _check(_parser().parse_args(argv))


def _check(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        check = check_sweep_file(path, config_dir=args.config_dir, config_name=args.config_name, root=args.root)
        if not check.ok:
            failed += 1
            print(f"FAIL {path}")
            for problem in check.problems:
                print(f"  {problem}")
            continue
        values = sum(len(p.extremes) for p in check.parameters)
        print(f"ok   {path}: +experiment={check.experiment}, {len(check.parameters)} parameters composed and "
              f"instantiated at {values} extreme values, metric {check.metric} logged by {check.module}")
        if args.run:
            overrides = args.run_override if args.run_override is not None else QUICK_RUN_OVERRIDES
            run = run_sweep_command(path, root=args.root, extra_overrides=overrides, timeout=args.timeout)
            print(f"     ran: {' '.join(run.command)}")
            if run.ok:
                value = run.result.metrics.get(check.metric) if check.metric else None
                print(f"ok   {path}: the command ran" + (f"; {check.metric}={value:.6g}" if value is not None else ""))
            else:
                failed += 1
                for problem in run.problems:
                    print(f"  {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
