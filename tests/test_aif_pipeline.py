"""The AIF command as a user runs it, the chain into DPO, and every shipped conf/aif option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tests.helpers import compose as compose_train
from train import train
from zephyr_lightning import PreferenceDataModule
from zephyr_lightning.aif import Judge
from zephyr_lightning.cli.aif import CONF_DIR, run

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def compose_aif(overrides: list[str], run_dir: Path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("aif", overrides=[*overrides, f"run_dir={run_dir}", "progress_bar=false"])


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def aif_run(tmp_path_factory) -> Path:
    """`python -m zephyr_lightning.aif` with its default config (smaller: 6 prompts, 8 new tokens)."""
    run_dir = tmp_path_factory.mktemp("aif_run")
    result = subprocess.run(
        [
            sys.executable, "-m", "zephyr_lightning.aif", f"hydra.run.dir={run_dir}", "prompts.limit=6",
            "generate.models.tiny_a.max_new_tokens=8", "generate.models.tiny_b.max_new_tokens=8",
            "progress_bar=false", "binarize.test_size=2",
        ],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_default_command_chains_into_dpo(aif_run, tmp_path, tokenizer):
    summary = json.loads((aif_run / "summary.json").read_text())
    assert summary["generate"]["rows_written"] == 6
    assert summary["judge"]["completions"] == 6 * 4 and summary["judge"]["failed"] == 0
    generations = read_rows(aif_run / "generations.jsonl")
    assert all(len(r["completions"]) == 4 for r in generations)
    assert (aif_run / "aif.log").exists() and (aif_run / ".hydra" / "config.yaml").exists()
    pairs = summary["binarize"]["pairs"]
    assert pairs + sum(summary["binarize"]["dropped"].values()) == 6
    assert summary["binarize"]["splits"] == {"train_prefs": pairs - 2, "test_prefs": 2}

    # The binarized folder is what PreferenceDataModule reads, unchanged...
    data = PreferenceDataModule(str(aif_run / "binarized"), tokenizer, max_length=256, max_prompt_length=128)
    data.setup("fit")
    assert len(data.datasets["train"]) == pairs - 2 and len(data.datasets["val"]) == 2
    # ...and DPO trains on it through the real Hydra app.
    cfg = compose_train(
        ["+experiment=dpo", f"data.path={aif_run / 'binarized'}", "trainer.fast_dev_run=true", "logger=csv",
         "callbacks.sample_generation.max_new_tokens=4", "data.batch_size=2"],
        tmp_path,
    )
    metrics = train(cfg)
    assert "train/loss" in metrics and "val/rewards/accuracies" in metrics


def test_steps_run_alone_in_the_same_folder(aif_run):
    # Re-judging asks nothing: every judgement is in the run folder's cache.
    summary = run(compose_aif(["step=judge"], aif_run))
    assert summary["judge"]["from_cache"] == 24 and summary["judge"]["judged"] == 0

    # The "rejected = lowest" variant, binarized again from the same judged rows.
    lowest_dir = aif_run / "lowest"
    run(compose_aif(["step=binarize", "binarize.rejected=lowest", f"files.binarized={lowest_dir}", "binarize.test_size=0"], aif_run))
    judged = {r["instruction"]: r for r in read_rows(aif_run / "judged.jsonl")}
    for pair in read_rows(lowest_dir / "train_prefs.jsonl"):
        scores = [c["overall_score"] for c in judged[pair["prompt"]]["completions"]]
        assert pair["score_chosen"] == max(scores) and pair["score_rejected"] == min(scores)


def test_a_step_without_its_input_says_which_step_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run step=generate first"):
        run(compose_aif(["step=judge"], tmp_path))
    with pytest.raises(ValueError, match=r"step='judging' is not one of"):
        run(compose_aif(["step=judging"], tmp_path))


@pytest.mark.parametrize(
    "overrides",
    [
        ["generate=tiny", "judge=heuristic"],
        ["generate=local", "generate.models.local.model.name_or_path=/models/sft", "judge=openai"],
        ["generate=openai_server", "generate.models.server.base_url=http://127.0.0.1:8000/v1",
         "generate.models.server.model=served", "judge=reward_model", "judge.model.name_or_path=/models/rm"],
    ],
)
def test_every_conf_aif_option_composes_and_instantiates(overrides, tmp_path):
    cfg = compose_aif(overrides, tmp_path)
    generators = [instantiate(node, _convert_="all") for node in cfg.generate.models.values()]
    assert generators and all(g.settings() for g in generators)
    judge = instantiate(cfg.judge, _convert_="all")
    assert isinstance(judge, Judge) and judge.fingerprint()
    if "judge=openai" in overrides:
        # Only the variable's name is in the config.
        assert cfg.judge.api_key_env == "OPENAI_API_KEY" and "api_key" not in cfg.judge
