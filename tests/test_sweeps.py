"""Sweeps: the W&B sweep files checked offline against the configs, their command run as the agent runs it,
and the Optuna twin as a real multirun whose trials are each recorded, failed ones included."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import CONF_DIR, compose
from zephyr_lightning import DPOModule, SFTModule
from zephyr_lightning.sweeps import (
    QUICK_RUN_OVERRIDES,
    TrainingDiverged,
    TrialResult,
    check_sweep_file,
    collect_trials,
    expand_command,
    read_result,
    run_sweep_command,
    write_result,
    write_trials_table,
)
from zephyr_lightning.sweeps.check import parameter_range
from zephyr_lightning.sweeps.trials import describe_trials, nonfinite_losses

ROOT = CONF_DIR.parent
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))
# Each W&B sweep file and its offline twin (conf/hparams_search/), which must search the same space.
TWINS = {"dpo_beta_lr.yaml": "dpo_optuna", "sft_lr.yaml": "sft_optuna", "dpo_lora.yaml": "dpo_lora_optuna"}
QUIET = ("callbacks.sample_generation.max_new_tokens=4",)

# Logged by callbacks, not modules: the NaN guard's gradient norm and the update guard's share.
CALLBACK_METRICS = {"train/grad_norm", "train/updated_share"}


def _experiment(path: Path) -> str:
    command = yaml.safe_load(path.read_text())["command"]
    return next(c.split("=", 1)[1] for c in command if c.startswith("+experiment="))


def _require_experiment(path: Path) -> str:
    experiment = _experiment(path)
    if not (CONF_DIR / "experiment" / f"{experiment}.yaml").exists():
        pytest.skip(f"{path.name}: conf/experiment/{experiment}.yaml does not exist yet")
    return experiment


def test_every_sweep_file_has_an_offline_twin():
    assert SWEEP_FILES and {p.name for p in SWEEP_FILES} == set(TWINS)


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_shipped_sweep_files_are_valid(path):
    experiment = _require_experiment(path)
    check = check_sweep_file(path, config_dir=CONF_DIR, root=ROOT)
    assert check.ok, "\n".join(check.problems)
    assert check.experiment == experiment
    module = {"dpo": DPOModule, "sft": SFTModule}[experiment]
    assert check.module.rsplit(".", 1)[-1] == module.__name__ and check.metric in module.logged_metrics()


def test_dpo_sweep_is_the_issue_search():
    sweep = yaml.safe_load((ROOT / "sweeps" / "dpo_beta_lr.yaml").read_text())
    assert sweep["method"] == "bayes" and sweep["program"] == "train.py"
    assert sweep["metric"] == {"name": "val/rewards/accuracies", "goal": "maximize"}
    assert sweep["parameters"] == {
        "module.beta": {"distribution": "log_uniform_values", "min": 0.01, "max": 0.5},
        "optim.lr": {"distribution": "log_uniform_values", "min": 1e-7, "max": 1e-5},
    }
    assert sweep["early_terminate"]["type"] == "hyperband"
    assert sweep["command"] == ["${env}", "python", "${program}", "+experiment=dpo", "${args_no_hyphens}"]


def test_broken_sweep_file_is_rejected_naming_each_key(tmp_path):
    broken = {
        "program": "train.py",
        "method": "bayes",
        "metric": {"name": "val/reward/accuracies", "goal": "maximize"},
        "parameters": {
            "module.betaa": {"distribution": "log_uniform_values", "min": 0.01, "max": 0.5},
            "optim.lr": {"distribution": "uniform", "min": -1e-5, "max": 1e-5},
            "module.label_smoothing": {"values": [0.0, 0.7]},
            "module.beta": {"values": [0.1]},
        },
        "command": ["${env}", "python", "${program}", "+experiment=dpo", "${args}"],
    }
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    problems = check_sweep_file(path, config_dir=CONF_DIR, root=ROOT).problems
    text = "\n".join(problems)

    def one(*needles: str) -> str:
        found = [p for p in problems if all(n in p for n in needles)]
        assert len(found) == 1, f"expected one problem with {needles} in:\n{text}"
        assert found[0].startswith(str(path)), found[0]
        return found[0]

    assert "did you mean module.beta" in one("parameters.module.betaa", "not a key")
    assert "did you mean val/rewards/accuracies" in one("metric.name", "'val/reward/accuracies' is not logged")
    assert "optim.lr=-1e-05: must be > 0" in one("parameters.optim.lr", "optim.lr=-1e-05", "OptimizerConfig")
    assert "module.label_smoothing=0.7: must be < 0.5" in one("parameters.module.label_smoothing", "=0.7", "DPOModule")
    one("command", "${args} passes --key=value")
    assert len(problems) == 6, text  # the five above and the missing ${args_no_hyphens}; module.beta is fine


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"command": ["${env}", "python", "${program}", "+experiment=nope", "${args_no_hyphens}"]}, "+experiment=nope"),
        ({"command": None}, "W&B's default command passes ${args}"),
        ({"program": "missing.py"}, "program: missing.py does not exist"),
        ({"metric": {"name": "val/rewards/accuracies"}}, "metric.goal"),
        ({"early_terminate": {"type": "hyperband"}}, "hyperband needs min_iter"),
        ({"parameters": {"module": {"parameters": {"beta": {"value": 0.1}}}}}, "name the Hydra key with dots"),
        ({"parameters": {"module.beta": {"values": [None]}}}, "write the string 'null'"),
        ({"command": ["${env}", "python", "${program}", "+experiment=dpo", "logger=csv", "${args_no_hyphens}"]},
         "log to no W&B logger"),
        ({"methd": "bayes"}, "unknown top-level keys ['methd']"),
    ],
)
def test_each_kind_of_mistake_is_named(tmp_path, change, needle):
    sweep = yaml.safe_load((ROOT / "sweeps" / "dpo_beta_lr.yaml").read_text())
    for key, value in change.items():
        if value is None:
            del sweep[key]
        else:
            sweep[key] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    problems = check_sweep_file(path, config_dir=CONF_DIR, root=ROOT).problems
    assert any(needle in p for p in problems), problems


def test_cli_checks_files_from_the_repository_root(tmp_path, monkeypatch, capsys):
    from zephyr_lightning.sweeps.__main__ import main

    monkeypatch.chdir(ROOT)  # the defaults: --config-dir conf, --root .
    files = [str(p.relative_to(ROOT)) for p in SWEEP_FILES if (CONF_DIR / "experiment" / f"{_experiment(p)}.yaml").exists()]
    assert main(["check", *files]) == 0
    assert capsys.readouterr().out.count("ok   sweeps/") == len(files)
    bad = tmp_path / "bad.yaml"
    bad.write_text("program: train.py\nmethod: bayes\nparameters: [\n")
    assert main(["check", str(bad), *files]) == 1
    assert f"FAIL {bad}" in capsys.readouterr().out


def test_parameter_ranges_follow_wandb_distributions():
    # W&B's log_uniform takes natural logs, log_uniform_values the values themselves.
    assert parameter_range("a", {"distribution": "log_uniform", "min": -2.0, "max": 1.0}).extremes == [math.exp(-2), math.exp(1)]
    values = parameter_range("a", {"distribution": "log_uniform_values", "min": 1e-6, "max": 1e-4})
    assert values.extremes == [1e-6, 1e-4] and values.typical == pytest.approx(1e-5)
    assert parameter_range("a", {"distribution": "inv_log_uniform", "min": 0.0, "max": 2.0}).extremes == [math.exp(-2), 1.0]
    ints = parameter_range("a", {"min": 1, "max": 4})  # two integers: W&B infers int_uniform
    assert ints.extremes == [1, 4] and ints.typical == 2
    assert parameter_range("a", {"distribution": "normal", "mu": 1.0, "sigma": 0.5}).extremes == [-0.5, 2.5]
    assert parameter_range("a", {"values": ["sigmoid", "ipo"]}).extremes == ["sigmoid", "ipo"]
    for spec, match in [({"distribution": "log_uniform_values", "min": 0.0, "max": 1.0}, "min must be > 0"),
                        ({"distribution": "uniform", "min": 2.0, "max": 1.0}, "must be below max"),
                        ({"distribution": "int_uniform", "min": 1, "max": 2.5}, "integer min and max"),
                        ({"distribution": "gaussian", "min": 0, "max": 1}, "unknown distribution 'gaussian'"),
                        ({"values": []}, "non-empty list")]:
        with pytest.raises(ValueError, match=match):
            parameter_range("a", spec)


def test_command_expands_as_the_wandb_agent_expands_it():
    sweep = yaml.safe_load((ROOT / "sweeps" / "dpo_beta_lr.yaml").read_text())
    assert expand_command(sweep, {"module.beta": 0.05, "optim.lr": 1e-6}) == [
        "/usr/bin/env", "python", "train.py", "+experiment=dpo", "module.beta=0.05", "optim.lr=1e-06"]


def test_sweep_command_runs_as_the_agent_would(tmp_path):
    path = ROOT / "sweeps" / "sft_lr.yaml"
    _require_experiment(path)
    run = run_sweep_command(path, root=ROOT, extra_overrides=[*QUICK_RUN_OVERRIDES, *QUIET],
                            run_dir=tmp_path / "run", timeout=600)
    assert run.ok, "\n".join(run.problems)
    assert run.command[:4] == ["/usr/bin/env", "python", "train.py", "+experiment=sft"]
    lr = next(float(c.split("=")[1]) for c in run.command if c.startswith("optim.lr="))
    assert lr == pytest.approx(1e-5)  # the geometric middle of 1e-6..1e-4
    assert run.result.status == "completed" and math.isfinite(run.result.value)
    assert run.result.value == run.result.metrics["val/loss"]
    # What the module says it logs is exactly what a real run logged.
    # (plus the gradient norm that the non-finite guard callback logs)
    assert set(run.result.metrics) - CALLBACK_METRICS == set(SFTModule.logged_metrics())


def test_optuna_multirun_records_every_trial_and_survives_a_failed_one(tmp_path):
    """Three trials of the real Optuna twin on the embedded default; trial 0 is made to fail (its batch size is
    its job number, 0, which the DataModule rejects) while trials 1 and 2 train."""
    import optuna

    sweep_dir, storage = tmp_path / "sweep", f"sqlite:///{tmp_path / 'study.db'}"
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "hparams_search=dpo_optuna", "+experiment=dpo",
         "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage={storage}", f"hydra.sweep.dir={sweep_dir}",
         # No failure tolerated by the sweeper itself: the sweep goes on only because train.py records the
         # failure and returns None instead of raising.
         "hydra.sweeper.max_failure_rate=0.0",
         "data.batch_size=${hydra:job.num}", "data.eval_batch_size=8", *QUICK_RUN_OVERRIDES, *QUIET],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    trials = dict(collect_trials(sweep_dir))
    assert list(trials) == ["0", "1", "2"]
    # Config validation rejects it before anything loads, naming the key and the value.
    assert trials["0"].status == "failed" and "data.batch_size=0" in trials["0"].error
    done = {name: trials[name] for name in ("1", "2")}
    for name, trial in done.items():
        assert trial.status == "completed" and trial.optimized_metric == "val/rewards/accuracies"
        assert trial.value == trial.metrics["val/rewards/accuracies"] and 0.0 <= trial.value <= 1.0
        assert set(trial.metrics) - CALLBACK_METRICS == set(DPOModule.logged_metrics())
        # Each trial wrote its own outputs: nothing was overwritten.
        assert (sweep_dir / name / "checkpoints" / "last.ckpt").exists()
        assert (sweep_dir / name / "hf" / "model.safetensors").exists()
        swept = dict(o.split("=", 1) for o in trial.overrides if o.startswith(("module.beta=", "optim.lr=")))
        assert 0.01 <= float(swept["module.beta"]) <= 0.5 and 1e-7 <= float(swept["optim.lr"]) <= 1e-5
    assert done["1"].overrides != done["2"].overrides
    # One W&B group for the whole sweep, named after it.
    groups = {trial.wandb_group for trial in trials.values()}
    assert len(groups) == 1 and groups.pop().startswith("dpo-optuna-")

    # Optuna's own record agrees: the failed trial is FAIL, the others COMPLETE with the values train.py returned.
    study = optuna.load_study(study_name="dpo_beta_lr", storage=storage)
    states = {str(t.number): t for t in study.trials}
    assert states["0"].state == optuna.trial.TrialState.FAIL
    for name, trial in done.items():
        assert states[name].state == optuna.trial.TrialState.COMPLETE and states[name].value == trial.value
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(t.value for t in done.values())

    with open(sweep_dir / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["trial"], r["status"]) for r in rows] == [("0", "failed"), ("1", "completed"), ("2", "completed")]
    failed_log = (sweep_dir / "0" / "train.log").read_text()
    assert "trial failed" in failed_log and "Traceback" in failed_log  # the trial's own log keeps the traceback


def test_diverged_training_is_an_error_and_ends_the_wandb_run(tmp_path):
    import wandb

    from train import train

    # Without the non-finite guard (which would stop at the first bad step, see below), the final metrics
    # are what reveal the divergence.
    # Three steps: the first has lr 0 (transformers' warmup), the second's update makes the third's loss NaN.
    cfg = compose(["+experiment=dpo", "optim.lr=1e30", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                   "trainer.limit_val_batches=1", "~callbacks.sample_generation", "~callbacks.hf_export",
                   "~callbacks.nonfinite_guard"], tmp_path)
    with pytest.raises(TrainingDiverged, match="training diverged: .*train/loss=nan") as caught:
        train(cfg)
    assert math.isnan(caught.value.metrics["val/loss"])
    # DPO's accuracy stays finite on NaN rewards: the losses, not the optimised metric, reveal the divergence.
    assert math.isfinite(caught.value.metrics["val/rewards/accuracies"])
    assert wandb.run is None  # the W&B run was finished, so the next trial of a multirun gets its own

    from zephyr_lightning.callbacks.nonfinite import NonFiniteError

    guarded = compose(["+experiment=dpo", "optim.lr=1e30", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                       "trainer.limit_val_batches=1", "~callbacks.sample_generation", "~callbacks.hf_export"],
                      tmp_path / "guarded")
    with pytest.raises(NonFiniteError, match="optimizer step"):
        train(guarded)
    assert wandb.run is None


def test_trial_records_are_strict_json_and_read_back(tmp_path):
    result = TrialResult(status="failed", optimized_metric="val/loss", metrics={"val/loss": float("nan"), "a": 1.5},
                         error="TrainingDiverged: val/loss=nan", overrides=["optim.lr=1", "seed=1"])
    path = write_result(tmp_path / "3", result)

    def reject(constant):
        raise ValueError(constant)

    json.loads(path.read_text(), parse_constant=reject)  # no bare NaN: any JSON reader takes it
    back = read_result(tmp_path / "3")
    assert math.isnan(back.metrics["val/loss"]) and back.metrics["a"] == 1.5 and back.error == result.error
    assert nonfinite_losses(back.metrics) == {"val/loss": back.metrics["val/loss"]}

    for number, lr in [(10, "2"), (2, "3")]:
        (tmp_path / str(number) / ".hydra").mkdir(parents=True)
        write_result(tmp_path / str(number), TrialResult("completed", "val/loss", 0.5, overrides=[f"optim.lr={lr}", "seed=1"]))
    (tmp_path / "3" / ".hydra").mkdir()
    (tmp_path / "7" / ".hydra").mkdir(parents=True)  # killed before it wrote result.json
    trials = collect_trials(tmp_path)
    assert [name for name, _ in trials] == ["2", "3", "7", "10"]  # numeric order
    assert trials[2][1].status == "failed" and "killed" in trials[2][1].error
    lines = describe_trials(trials)
    assert lines[0] == "trial 2: completed val/loss=0.5 (optim.lr=3)"  # only the override that varies
    with open(write_trials_table(tmp_path, trials)) as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["completed", "failed", "failed", "completed"]


@pytest.mark.parametrize("sweep_file, hparams_search", sorted(TWINS.items()))
def test_offline_twin_searches_the_same_space(sweep_file, hparams_search, tmp_path):
    """conf/hparams_search/<twin>.yaml, read by the Optuna sweeper's own parser, has the W&B file's keys,
    bounds, log scale, metric and direction."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.types import RunMode
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from omegaconf import OmegaConf
    from optuna.distributions import CategoricalDistribution, LogUniformDistribution

    path = ROOT / "sweeps" / sweep_file
    experiment = _require_experiment(path)
    sweep = yaml.safe_load(path.read_text())

    from zephyr_lightning.cli.configs import register_signatures

    register_signatures()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[f"hparams_search={hparams_search}", f"+experiment={experiment}"],
                            return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.mode == RunMode.MULTIRUN
    assert cfg.optimized_metric == sweep["metric"]["name"]
    assert sweeper.direction == sweep["metric"]["goal"]
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.num}"  # one folder per trial
    distributions, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert not fixed and set(distributions) == set(sweep["parameters"])
    for key, spec in sweep["parameters"].items():
        if "values" in spec:  # a categorical search: the same choices
            assert distributions[key] == CategoricalDistribution(spec["values"])
            continue
        assert spec["distribution"] == "log_uniform_values"
        assert distributions[key] == LogUniformDistribution(spec["min"], spec["max"])
