"""The package as a user installs it: a wheel built from this checkout, installed into a fresh virtual
environment, its commands run from an empty folder (no checkout on the path)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("zephyr-train", "zephyr-aif", "zephyr-eval")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding only the built wheel; its dependencies come from this interpreter's site-packages,
    added as a plain path (so this environment's editable install of the checkout is not seen)."""
    work = tmp_path_factory.mktemp("installed")
    # Built from a copy of the sources, as a release would be: no stale build/ folder, no run outputs.
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "outputs", "multirun", "wandb", "__pycache__", ".whl", "runs"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(work / "dist"), str(source)], check=True, capture_output=True)
    wheel = next((work / "dist").glob("zephyr_lightning-*.whl"))
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "_parent_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir


def _run(env_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": ""}
    return subprocess.run([str(env_dir / "bin" / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def test_the_wheel_holds_the_configs_and_imports_from_site_packages(installed, tmp_path):
    out = _run(installed, tmp_path, "python", "-c", "import zephyr_lightning, zephyr_lightning.cli.configs as c; "
               "print(zephyr_lightning.__file__); print(c.conf_dir())")
    assert out.returncode == 0, out.stderr
    package, conf = out.stdout.split()
    assert str(installed) in package and str(ROOT) not in package
    assert Path(conf, "train.yaml").is_file() and Path(conf, "aif", "aif.yaml").is_file()
    assert Path(conf, "eval", "eval.yaml").is_file() and Path(conf, "eval", "judges", "offline.yaml").is_file()
    assert Path(conf, "module", "dpo.yaml").is_file() and Path(conf, "experiment", "dpo.yaml").is_file()


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_answers_help(installed, tmp_path, command):
    out = _run(installed, tmp_path, command, "--help")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Configuration groups" in out.stdout or "== Config ==" in out.stdout


def test_the_embedded_default_trains_from_an_empty_folder(installed, tmp_path):
    run_dir = tmp_path / "run"
    out = _run(installed, tmp_path, "zephyr-train", "+experiment=dpo", f"hydra.run.dir={run_dir}", "logger=csv",
               "trainer.max_steps=3", "callbacks.sample_generation.max_new_tokens=4")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"
    assert (run_dir / "hf" / "model.safetensors").is_file()

    aif_dir = tmp_path / "aif"
    out = _run(installed, tmp_path, "zephyr-aif", f"hydra.run.dir={aif_dir}", "prompts.limit=4", "progress_bar=false")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (aif_dir / "binarized" / "train_prefs.jsonl").is_file()

    eval_dir = tmp_path / "eval"
    out = _run(installed, tmp_path, "zephyr-eval", f"hydra.run.dir={eval_dir}", "questions.limit=2", "safety.limit=1",
               "evaluation.show_progress=false", "report.plots=false")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["baseline"] == "tiny_base" and "win_rate" in summary["tiny_long [reference]"]

def test_the_plan_command_runs_from_an_empty_folder(installed, tmp_path):
    out = _run(installed, tmp_path, "zephyr-plan", "+experiment=zephyr_7b_dpo_qlora")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "activations" in out.stdout and "141 GB (H200): fits" in out.stdout
