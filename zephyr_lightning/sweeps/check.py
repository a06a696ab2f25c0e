"""Check W&B sweep files against the Hydra configs they drive, with no W&B server.

A W&B agent runs a sweep's ``command:`` once per trial, passing each parameter as ``key=value``
(``${args_no_hyphens}``), so a parameter's name is a Hydra key of the experiment the command selects
(``+experiment=dpo``). `check_sweep_file` proves, offline, that:

- the file is a sweep W&B accepts in the parts that matter here (method, metric and its goal, parameter
  distributions and bounds, hyperband settings, no unknown top-level key);
- the program exists and the command hands parameters to Hydra as overrides (``${args_no_hyphens}``, not
  ``${args}``, whose ``--key=value`` Hydra rejects) and selects an existing experiment;
- every parameter is a key of the composed experiment (a misspelt key is named, with the closest real ones);
- every parameter composes at its extremes (min and max, each categorical value), formatted exactly as
  the W&B agent formats it, and the object that owns the key (the module, the optimizer config, ...)
  accepts each of those values (the declaration in its signature, checked as train.py's config validation
  checks it, so a value the run would refuse is refused here);
- the metric is one that the experiment's module logs (its ``logged_metrics()``), and the runs log to W&B.

`run_sweep_command` then runs the command once as an agent would (same expansion, W&B's own formatting)
with a few extra overrides that make the run short, and checks that the run logged the sweep's metric.

Hydra is imported inside the functions that compose configs: ``import zephyr_lightning`` needs no Hydra.
"""

from __future__ import annotations

import difflib
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zephyr_lightning.sweeps.trials import COMPLETED, RESULT_FILE, TrialResult, read_result

# The top-level keys of W&B's sweep schema (the `sweeps` package's config/schema.json, which rejects others).
WANDB_SWEEP_KEYS = frozenset({
    "apiVersion", "kind", "controller", "description", "program", "job", "image_uri", "entity", "project",
    "method", "command", "name", "run_cap", "metric", "metrics", "scheduler", "early_terminate", "parameters",
})
METHODS = ("bayes", "random", "grid")
GOALS = ("minimize", "maximize")
HYDRA_ARGS_MACRO = "${args_no_hyphens}"
# The agent's other ways to pass parameters, and why each is wrong for a Hydra program.
WRONG_ARGS_MACROS = {
    "${args}": "passes --key=value, which Hydra rejects",
    "${args_no_boolean_flags}": "passes --key=value, which Hydra rejects",
    "${args_no_equals}": "passes --key value, which Hydra rejects",
    "${args_json}": "passes one JSON string, which Hydra cannot read",
    "${args_json_file}": "passes a JSON file path, which Hydra cannot read",
    "${args_append_hydra}": "passes +key=value, which adds a misspelt key instead of failing",
    "${args_override_hydra}": "passes ++key=value, which adds a misspelt key instead of failing",
}
AGENT_MACROS = ("${env}", "${interpreter}", "${program}", HYDRA_ARGS_MACRO, *WRONG_ARGS_MACROS)
# Overrides that make `run_sweep_command`'s one run short (two training and two validation batches).
QUICK_RUN_OVERRIDES = ("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2")

# Distribution -> how its support maps to the values checked: (space of min/max, log-spaced?).
# "values": min/max are the values; "exp": min/max are natural logs of the values (W&B's log_uniform);
# "inv_exp": the value is exp(-x); "normal"/"log_normal": mu +- 3 sigma; "unit": [0, 1] (beta).
_DISTRIBUTIONS = {
    "uniform": ("values", False), "q_uniform": ("values", False), "int_uniform": ("values", False),
    "log_uniform_values": ("values", True), "q_log_uniform_values": ("values", True),
    "inv_log_uniform_values": ("values", True),
    "log_uniform": ("exp", True), "q_log_uniform": ("exp", True), "inv_log_uniform": ("inv_exp", True),
    "normal": ("normal", False), "q_normal": ("normal", False),
    "log_normal": ("log_normal", True), "q_log_normal": ("log_normal", True),
    "beta": ("unit", False), "q_beta": ("unit", False),
}


@dataclass
class ParameterRange:
    """The values of one swept parameter that are checked: its extremes, and a typical value for a run."""

    key: str
    extremes: list[Any]
    typical: Any


@dataclass
class SweepCheck:
    """What `check_sweep_file` found: ``problems`` is empty when the file is valid."""

    path: str
    experiment: str | None = None
    parameters: list[ParameterRange] = field(default_factory=list)
    metric: str | None = None
    module: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class SweepRun:
    """One run of a sweep's command by `run_sweep_command`."""

    command: list[str]
    run_dir: Path
    returncode: int
    output: str
    result: TrialResult | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class _Problems(list):
    def add(self, where: str, what: str) -> None:
        self.append(f"{where}: {what}")


def load_sweep_file(path: str | os.PathLike) -> dict[str, Any]:
    """The sweep file as a dict; a ValueError naming the file when it is not a YAML mapping."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read the sweep file: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a sweep file is a YAML mapping (program, method, metric, parameters, command)")
    return data


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parameter_range(key: str, spec: Any) -> ParameterRange:
    """The values of a W&B parameter spec worth composing: every categorical value, or the two ends of a
    distribution's support (for W&B's ``log_uniform`` that is exp(min) and exp(max), not min and max).
    Raises ValueError naming the parameter on a malformed spec."""
    where = f"parameters.{key}"
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: a parameter is a mapping with value, values, or min/max (and a distribution)")
    if "parameters" in spec:
        raise ValueError(f"{where}: nested parameters reach the program as one dict-valued argument; "
                         f"name the Hydra key with dots instead (e.g. module.beta)")
    if "value" in spec:
        values = [spec["value"]]
    elif "values" in spec:
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}.values: a non-empty list")
    else:
        values = None
    if values is not None:
        if any(v is None for v in values):
            raise ValueError(f"{where}: the W&B agent passes None as the string 'None'; "
                             f"write the string 'null' for Hydra's null")
        return ParameterRange(key, list(values), values[0])

    distribution = spec.get("distribution")
    if distribution is None:
        if "min" not in spec or "max" not in spec:
            raise ValueError(f"{where}: give value, values, or min and max (and a distribution)")
        # W&B infers int_uniform from two integers, uniform otherwise.
        ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
        distribution = "int_uniform" if ints else "uniform"
    if distribution in ("categorical", "constant"):
        raise ValueError(f"{where}: distribution {distribution} needs values (or value)")
    if distribution not in _DISTRIBUTIONS:
        raise ValueError(f"{where}.distribution: unknown distribution {distribution!r}; "
                         f"W&B's are {sorted([*_DISTRIBUTIONS, 'categorical', 'constant'])}")
    space, log = _DISTRIBUTIONS[distribution]
    if space in ("normal", "log_normal"):
        mu, sigma = spec.get("mu", 0.0), spec.get("sigma", 1.0)
        if not (_number(mu) and _number(sigma) and sigma > 0):
            raise ValueError(f"{where}: mu must be a number and sigma a positive number")
        low, high = mu - 3 * sigma, mu + 3 * sigma  # the central 99.7% of the samples
        if space == "log_normal":
            low, high = math.exp(low), math.exp(high)
        return ParameterRange(key, [low, high], math.exp(mu) if space == "log_normal" else mu)
    if space == "unit":
        return ParameterRange(key, [0.0, 1.0], 0.5)

    low, high = spec.get("min"), spec.get("max")
    if not (_number(low) and _number(high)):
        raise ValueError(f"{where}: distribution {distribution} needs numeric min and max")
    if not low < high:
        raise ValueError(f"{where}: min ({low}) must be below max ({high})")
    if distribution == "int_uniform" and not (isinstance(low, int) and isinstance(high, int)):
        raise ValueError(f"{where}: int_uniform needs integer min and max")
    if space == "values" and log and low <= 0:
        raise ValueError(f"{where}: {distribution} samples log-spaced values: min must be > 0, got {low}")
    if space == "exp":
        low, high = math.exp(low), math.exp(high)
    elif space == "inv_exp":
        low, high = math.exp(-high), math.exp(-low)
    if distribution == "int_uniform":
        return ParameterRange(key, [low, high], (low + high) // 2)
    return ParameterRange(key, [low, high], math.sqrt(low * high) if log else (low + high) / 2)


def _check_structure(sweep: dict[str, Any], problems: _Problems, path: str) -> None:
    unknown = sorted(set(sweep) - WANDB_SWEEP_KEYS)
    if unknown:
        problems.add(path, f"unknown top-level keys {unknown}; W&B accepts {sorted(WANDB_SWEEP_KEYS)}")
    method = sweep.get("method")
    if method not in METHODS:
        problems.add(f"{path}: method", f"{method!r} is not one of {list(METHODS)}")
    metric = sweep.get("metric")
    if metric is None:
        if method == "bayes" or "early_terminate" in sweep:
            problems.add(f"{path}: metric", "bayes search and early termination need a metric (name and goal)")
    elif not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        problems.add(f"{path}: metric", "a mapping with a name (the logged key, e.g. val/loss) and a goal")
    elif metric.get("goal") not in GOALS:
        problems.add(f"{path}: metric.goal",
                     f"{metric.get('goal')!r} is not one of {list(GOALS)} (W&B minimizes when it is missing)")
    stop = sweep.get("early_terminate")
    if stop is not None:
        if not isinstance(stop, dict) or stop.get("type") != "hyperband":
            problems.add(f"{path}: early_terminate", "W&B's only early termination is type: hyperband")
        else:
            if "min_iter" not in stop and not ("max_iter" in stop and "s" in stop):
                problems.add(f"{path}: early_terminate", "hyperband needs min_iter, or max_iter and s")
            for key in ("min_iter", "max_iter", "s", "eta"):
                if key in stop and not (isinstance(stop[key], int) and stop[key] > 0):
                    problems.add(f"{path}: early_terminate.{key}", f"a positive integer, got {stop[key]!r}")
    run_cap = sweep.get("run_cap")
    if run_cap is not None and not (isinstance(run_cap, int) and run_cap > 0):
        problems.add(f"{path}: run_cap", f"a positive integer, got {run_cap!r}")


def _check_command(sweep: dict[str, Any], problems: _Problems, path: str, root: Path, config_dir: Path) -> tuple[list[str], str | None]:
    """The Hydra overrides written in the command, and the experiment it selects."""
    program = sweep.get("program")
    if not isinstance(program, str):
        problems.add(f"{path}: program", "the training script, e.g. train.py (relative to where the agent runs)")
    elif not (root / program).is_file():
        problems.add(f"{path}: program", f"{program} does not exist under {root}")
    command = sweep.get("command")
    if command is None:
        problems.add(f"{path}: command", "missing: W&B's default command passes ${args} (--key=value), which Hydra "
                     "rejects; use [${env}, python, ${program}, +experiment=NAME, ${args_no_hyphens}]")
        return [], None
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        problems.add(f"{path}: command", "a list of strings")
        return [], None
    for macro, why in WRONG_ARGS_MACROS.items():
        if macro in command:
            problems.add(f"{path}: command", f"{macro} {why}; use {HYDRA_ARGS_MACRO}")
    if command.count(HYDRA_ARGS_MACRO) != 1:
        problems.add(f"{path}: command", f"must contain {HYDRA_ARGS_MACRO} once, so parameters arrive as key=value")
    for entry in command:
        if entry.startswith("${") and entry.endswith("}") and entry not in AGENT_MACROS and not entry.startswith("${envvar:"):
            problems.add(f"{path}: command", f"unknown macro {entry}; the agent knows {list(AGENT_MACROS)}")
    if command.count("${program}") != 1:
        problems.add(f"{path}: command", "must contain ${program} once")
        return [], None
    at = command.index("${program}")
    if not any(c == "${interpreter}" or Path(c).name.startswith("python") for c in command[:at]):
        problems.add(f"{path}: command", "no interpreter before ${program}: add python (or ${interpreter})")
    overrides = [c for c in command[at + 1:] if not (c.startswith("${") and c.endswith("}"))]
    experiments = [o.split("=", 1)[1] for o in overrides if o.startswith("+experiment=")]
    if len(experiments) != 1:
        problems.add(f"{path}: command", "must select one experiment with +experiment=NAME")
        return overrides, None
    experiment = experiments[0]
    if not (config_dir / "experiment" / f"{experiment}.yaml").is_file():
        available = sorted(p.stem for p in (config_dir / "experiment").glob("*.yaml"))
        problems.add(f"{path}: command", f"+experiment={experiment}: no {config_dir}/experiment/{experiment}.yaml; "
                     f"experiments: {available}")
        return overrides, None
    return overrides, experiment


def _agent_args(values: dict[str, Any]) -> dict[str, list[str]]:
    # The agent's argument lists (${args}, ${args_no_hyphens}, ...), built by W&B's own code.
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    return create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})


def agent_overrides(values: dict[str, Any]) -> list[str]:
    """``key=value`` exactly as the W&B agent writes ``${args_no_hyphens}``."""
    return _agent_args(values)["args_no_hyphens"]


def expand_command(sweep: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """The command line a W&B agent runs for a trial with these parameter values (as in wandb_agent.py)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command

    sweep_vars = _agent_args(values)
    sweep_vars["interpreter"] = ["python"]
    sweep_vars["program"] = [sweep["program"]]
    if os.name != "nt":
        sweep_vars["env"] = ["/usr/bin/env"]
    expanded = []
    for entry in create_sweep_command(list(sweep["command"])):
        entry = str(entry)
        if entry.startswith("${") and entry.endswith("}"):
            expanded += sweep_vars.get(entry[2:-1]) or []
        else:
            expanded.append(entry)
    return expanded


def _leaf_keys(cfg: Any) -> list[str]:
    from omegaconf import OmegaConf

    def walk(node: Any, prefix: str) -> Iterable[str]:
        for key, value in node.items():
            if str(key).startswith("_"):  # _target_, _convert_: Hydra's own, never a parameter
                continue
            name = f"{prefix}{key}"
            yield name
            if isinstance(value, dict):
                yield from walk(value, f"{name}.")

    return list(walk(OmegaConf.to_container(cfg, resolve=False), ""))


def _owner(cfg: Any, key: str) -> str | None:
    """The nearest node at or above ``key`` that names a class (``_target_``): the object the key configures."""
    from omegaconf import DictConfig, OmegaConf

    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        node_path = ".".join(parts[:end])
        node = OmegaConf.select(cfg, node_path, throw_on_resolution_failure=False)
        if isinstance(node, DictConfig) and "_target_" in node:
            return node_path
    return None


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def check_sweep_file(
    path: str | os.PathLike,
    *,
    config_dir: str | os.PathLike = "conf",
    config_name: str = "train",
    root: str | os.PathLike = ".",
) -> SweepCheck:
    """Check one W&B sweep file against the Hydra configs in ``config_dir``; see the module docstring.

    ``root`` is where the agent runs (``program`` is relative to it). Every problem found is reported,
    each naming the file and the key or parameter at fault.
    """
    shown = str(path)
    check = SweepCheck(shown)
    problems = _Problems()
    check.problems = problems
    try:
        sweep = load_sweep_file(path)
    except ValueError as error:
        problems.append(str(error))
        return check
    root, config_dir = Path(root).resolve(), Path(config_dir).resolve()
    if not (config_dir / f"{config_name}.yaml").is_file():
        problems.add(shown, f"no Hydra config {config_name}.yaml in {config_dir} (set --config-dir)")
        return check

    _check_structure(sweep, problems, shown)
    command_overrides, check.experiment = _check_command(sweep, problems, shown, root, config_dir)
    metric = sweep.get("metric")
    check.metric = metric.get("name") if isinstance(metric, dict) else None

    parameters = sweep.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        problems.add(f"{shown}: parameters", "a non-empty mapping of Hydra keys to W&B distributions")
        parameters = {}
    for key, spec in parameters.items():
        try:
            check.parameters.append(parameter_range(str(key), spec))
        except ValueError as error:
            problems.add(shown, str(error))
    if check.experiment is None:
        return check
    _check_against_config(check, problems, config_dir, config_name, command_overrides)
    return check


def _check_against_config(
    check: SweepCheck, problems: _Problems, config_dir: Path, config_name: str, command_overrides: Sequence[str]
) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from zephyr_lightning.cli.configs import register_signatures
    from zephyr_lightning.validation import validate_config

    shown = check.path
    absent = object()
    register_signatures()
    with tempfile.TemporaryDirectory(prefix="sweep-check-") as scratch, \
            initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        try:
            cfg = compose(config_name, overrides=list(command_overrides))
        except Exception as error:
            problems.add(f"{shown}: command", f"the command's overrides do not compose: {_short(error)}")
            return
        base = list(command_overrides)
        # Objects that write files (trainer, callbacks) get a scratch run folder instead of Hydra's.
        if "paths" in cfg and "output_dir" in cfg.paths:
            base.append(f"paths.output_dir={scratch}")
        keys = _leaf_keys(cfg)

        for parameter in check.parameters:
            key = parameter.key
            if OmegaConf.select(cfg, key, default=absent, throw_on_resolution_failure=False) is absent:
                close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
                problems.add(f"{shown}: parameters.{key}", f"not a key of the config composed by +experiment="
                             f"{check.experiment}{hint}")
                continue
            for value in parameter.extremes:
                override = agent_overrides({key: value})[0]
                try:
                    composed = compose(config_name, overrides=[*base, override])
                    plain = OmegaConf.to_container(composed, resolve=True)
                except Exception as error:
                    problems.add(f"{shown}: parameters.{key}", f"{override} does not compose: {_short(error)}")
                    continue
                # The same declarations the constructors and train.py's validation read.
                owner = _owner(composed, key)
                target = f"{OmegaConf.select(composed, owner)._target_} ({owner})" if owner else "the run"
                for error in validate_config(plain, OmegaConf.to_container(composed, resolve=False)):
                    if error.split("=", 1)[0].split(":", 1)[0] == key:
                        problems.add(f"{shown}: parameters.{key}", f"{override}: {target} rejects it: {error}")

        module_cfg = cfg.get("module")
        if module_cfg is None or "_target_" not in module_cfg:
            problems.add(f"{shown}: command", f"+experiment={check.experiment} sets no module")
            return
        check.module = module_cfg._target_
        try:
            module_cls = get_class(check.module)
        except Exception as error:
            problems.add(f"{shown}: command", f"module {check.module} cannot be imported: {_short(error)}")
            return
        logged = tuple(getattr(module_cls, "logged_metrics", lambda: ())())
        if check.metric is not None:
            if not logged:
                problems.add(f"{shown}: metric.name", f"{check.module} does not list its metrics (logged_metrics())")
            elif check.metric not in logged:
                close = difflib.get_close_matches(check.metric, logged, n=3, cutoff=0.5)
                hint = f"did you mean {' or '.join(close)}? " if close else ""
                problems.add(f"{shown}: metric.name", f"{check.metric!r} is not logged by {check.module}; {hint}"
                             f"it logs: {', '.join(logged)}")
        loggers = cfg.get("logger") or {}
        targets = [str(node.get("_target_", "")) for node in loggers.values() if node is not None and hasattr(node, "get")]
        if not any("wandb" in target.lower() for target in targets):
            problems.add(f"{shown}: command", f"the runs log to no W&B logger (loggers: {targets or 'none'}), so W&B "
                         f"would never receive {check.metric}; drop logger=... from the command")


def run_sweep_command(
    path: str | os.PathLike,
    *,
    root: str | os.PathLike = ".",
    extra_overrides: Sequence[str] = QUICK_RUN_OVERRIDES,
    run_dir: str | os.PathLike | None = None,
    timeout: float | None = None,
    values: dict[str, Any] | None = None,
) -> SweepRun:
    """Run the sweep's command once, as a W&B agent would, with each parameter at a typical value
    (``values`` overrides them) and ``extra_overrides`` appended to make the run short.

    ``python`` resolves to this interpreter (as in a shell with this environment activated). W&B is
    disabled unless ``WANDB_MODE`` says otherwise: a check should not create runs in a project. The run
    writes into ``run_dir`` (a new temporary folder by default); its ``result.json`` must show a completed
    run that logged the sweep's metric.
    """
    sweep = load_sweep_file(path)
    chosen = {p.key: p.typical for p in (parameter_range(str(k), s) for k, s in sweep.get("parameters", {}).items())}
    chosen.update(values or {})
    run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="sweep-run-"))
    command = [*expand_command(sweep, chosen), *extra_overrides, f"hydra.run.dir={run_dir}"]
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("WANDB_MODE", "disabled")
    try:
        completed = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        returncode, output = completed.returncode, completed.stdout + completed.stderr
    except subprocess.TimeoutExpired as error:
        returncode, output = -1, f"timed out after {timeout} s\n{error.stdout or ''}{error.stderr or ''}"
    run = SweepRun(command, run_dir, returncode, output, None)
    where = f"{path}: command"
    if returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        run.problems.append(f"{where}: the run failed (exit {returncode}): {' '.join(command)}\n{tail}")
    if not (run_dir / RESULT_FILE).is_file():
        run.problems.append(f"{where}: the run wrote no {RESULT_FILE} in {run_dir}")
        return run
    run.result = read_result(run_dir)
    if run.result.status != COMPLETED:
        run.problems.append(f"{where}: the run failed: {run.result.error}")
    metric = (sweep.get("metric") or {}).get("name")
    if metric is not None and run.result.status == COMPLETED and metric not in run.result.metrics:
        run.problems.append(f"{where}: the run never logged {metric} (W&B would not receive it); "
                            f"logged: {sorted(run.result.metrics)}")
    return run
