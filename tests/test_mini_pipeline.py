"""The Mini-Zephyr recipe end to end at the smallest size, through its own command: every stage runs as
the library's command would run it, the report parses, a rerun keeps finished stages."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from recipes.mini_zephyr import parse_main_table, parse_prompt
from recipes.mini_zephyr.run import CONF, for_seed, hydra_value, stage_config, stage_overrides
from zephyr_lightning.aif.io import iter_jsonl
from zephyr_lightning.cli.configs import compose

ROOT = Path(__file__).resolve().parent.parent
EVALS = ("greedy", "sample")
TINY = [
    "seeds=[3]",
    "teacher.num_train=96",
    "teacher.num_test=8",
    "teacher.num_aif_prompts=24",
    "teacher.num_eval_prompts=8",
    "training.model.config_overrides.hidden_size=64",
    "training.model.config_overrides.intermediate_size=192",
    "+training.callbacks.progress_bar=null",
    "stages.sft.set.trainer.max_epochs=8",
    "stages.sft.set.optim.lr=1e-2",
    "stages.aif.set.generate.models.local.max_new_tokens=12",
    "+stages.aif.set.binarize.test_size=2",
    "stages.dpo.set.trainer.max_epochs=1",
    "stages.dpo.set.data.batch_size=8",
    *[f"evaluations.{e}.set.models.{m}.max_new_tokens=12" for e in EVALS for m in ("dsft", "ddpo")],
]


def recipe(run_dir: Path, *overrides: str):
    return compose("mini_zephyr", [*TINY, f"run_dir={run_dir}", *overrides], config_dir=CONF)


def test_each_stage_is_the_librarys_own_config_with_the_recipes_values(tmp_path):
    cfg = for_seed(compose("mini_zephyr", [f"run_dir={tmp_path}"], config_dir=CONF), 5)
    dirs = {k: str(tmp_path / "seed5" / k) for k in ("teacher", "sft", "aif", "dpo", "eval")}
    sft, line = stage_config(cfg, cfg.stages.sft)
    assert line.startswith("python train.py +experiment=sft logger=csv ++seed=5 ")
    # What `python train.py +experiment=sft` composes, with the recipe's values on top.
    assert sft.module._target_ == "zephyr_lightning.SFTModule" and sft.data._target_ == "zephyr_lightning.SFTDataModule"
    assert sft.seed == 5 and sft.model.seed == 5 and sft.model.config_overrides.hidden_size == 128
    assert sft.paths.output_dir == dirs["sft"] and sft.callbacks.hf_export.dirpath == f"{dirs['sft']}/hf"
    assert sft.data.path == dirs["teacher"] and sft.data.packing is True  # packing: from data=tiny_chat
    assert sft.optim.lr == 3e-3 and sft.module.optim.lr == 3e-3 and sft.trainer.val_check_interval is None
    assert sft.callbacks.sample_generation is None and sft.callbacks.lr_monitor is not None
    dpo, _ = stage_config(cfg, cfg.stages.dpo)
    assert dpo.module._target_ == "zephyr_lightning.DPOModule" and dpo.module.policy.name_or_path == f"{dirs['sft']}/hf"
    assert dpo.data.path == f"{dirs['aif']}/binarized" and dpo.data.tokenizer.name_or_path == f"{dirs['sft']}/hf"
    assert dpo.optim.schedule == "linear" and dpo.optim.lr == 1e-4 and dpo.module.beta == 0.1
    aif, _ = stage_config(cfg, cfg.stages.aif)
    assert aif.run_dir == dirs["aif"] and aif.generate.models.local.model.name_or_path == f"{dirs['sft']}/hf"
    assert aif.judge.fn == "recipes.mini_zephyr.judge.judge_score" and aif.binarize.seed == 5
    greedy, _ = stage_config(cfg, cfg.evaluations.greedy)
    assert greedy.evaluation.baseline == "dsft" and greedy.safety is None and list(greedy.judges) == ["function"]
    assert greedy.models.ddpo.model.name_or_path == f"{dirs['dpo']}/hf" and greedy.models.ddpo.do_sample is False
    # Both training stages instantiate (every object their command would build).
    for config in (sft, dpo):
        assert instantiate(config.module, _convert_="all") is not None
        assert all(instantiate(c) for c in config.callbacks.values() if c)


@pytest.mark.parametrize("value", ["plain", "/a/b.c", "with space", "it's", "back\\slash", "a\\'b", "end\\", "0.7", "true", "null", "x,y",
                                   "${oops}", "a=b", 3, 0.5, 1e-05, True, None, [1, "two"], {"k": "v w"}])
def test_values_reach_the_config_exactly(value, tmp_path):
    cfg = compose("train", ["+experiment=sft", f"paths.output_dir={tmp_path}", f"++task_name={hydra_value(value)}"])
    assert cfg.get("task_name") == value if not isinstance(value, (list, dict)) else \
        (list(cfg.task_name) if isinstance(value, list) else dict(cfg.task_name)) == value


def test_the_command_line_a_stage_logs_composes_the_same_config(tmp_path):
    import shlex

    cfg = for_seed(compose("mini_zephyr", [f"run_dir={tmp_path}"], config_dir=CONF), 0)
    config, line = stage_config(cfg, cfg.stages.dpo)
    typed = shlex.split(line)[2:]
    assert typed == stage_overrides(cfg, cfg.stages.dpo)
    assert compose("train", typed) == config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mini")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "recipes.mini_zephyr", *TINY, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return run_dir


def test_every_stage_writes_its_files(tiny_run):
    run_dir = tiny_run
    seed = run_dir / "seed3"
    for path in ("teacher/train_sft.jsonl", "teacher/eval_prompts.jsonl", "sft/hf/model.safetensors",
                 "aif/generations.jsonl", "aif/judged.jsonl", "aif/binarized/train_prefs.jsonl",
                 "aif/binarized/test_prefs.jsonl", "dpo/hf/model.safetensors",
                 *[f"eval/{e}/{f}" for e in EVALS for f in ("answers/dsft.jsonl", "answers/ddpo.jsonl", "summary.json",
                                                             "report.md", "judgments/function/pairwise.jsonl")]):
        assert (seed / path).exists(), path
    for name in ("report.md", "results.json", "dpo_rewards.png", "score_distributions.png", "mini_zephyr.log"):
        assert (run_dir / name).stat().st_size > 0, name
    # AIF sampled from the dSFT export and the programmatic judge scored every completion.
    rows = list(iter_jsonl(seed / "aif" / "judged.jsonl"))
    assert len(rows) == 24 and all(len(r["completions"]) == 4 for r in rows)
    assert all(c["model"] == "dsft" and c["judge_error"] is None for r in rows for c in r["completions"])
    pair = next(iter_jsonl(seed / "aif" / "binarized" / "train_prefs.jsonl"))
    assert pair["score_chosen"] > pair["score_rejected"]
    parse_prompt(pair["prompt"])
    # The log names each stage's command line.
    log = (run_dir / "mini_zephyr.log").read_text()
    assert "seed 3 · sft: python train.py +experiment=sft" in log and "seed 3 · eval greedy: python -m zephyr_lightning.evaluate" in log


def test_the_report_agrees_with_the_evaluation_stage(tiny_run):
    run_dir = tiny_run
    table = parse_main_table((run_dir / "report.md").read_text())
    assert set(table) == {"dSFT", "dDPO"}
    results = json.loads((run_dir / "results.json").read_text())
    assert results["seeds"] == [3]
    greedy = results["per_seed"]["greedy"][0]
    assert greedy["prompts"] == 8 and greedy["wins"] + greedy["ties"] + greedy["losses"] == 8
    assert greedy["win_rate"] == pytest.approx((greedy["wins"] + 0.5 * greedy["ties"]) / 8)
    evaluation = json.loads((run_dir / "seed3" / "eval" / "greedy" / "results.json").read_text())
    assert evaluation["pairwise"]["function"]["ddpo"]["win_rate"] == pytest.approx(greedy["win_rate"])
    assert evaluation["single"]["function"]["dsft"]["score"] == pytest.approx(greedy["dsft_score"])
    # A programmatic judge scores each answer alone: the verdict never depends on the order.
    assert evaluation["pairwise"]["function"]["ddpo"]["position_bias_rate"] == 0.0
    cell = table["dDPO"]["win rate vs dSFT, greedy"]
    assert float(cell.split(" ± ")[0]) == pytest.approx(greedy["win_rate"], abs=1e-3)
    assert all(math.isfinite(v["mean"]) for v in results["aggregate"]["sample"].values())


def test_a_rerun_keeps_the_finished_stages(tiny_run, caplog):
    from recipes.mini_zephyr.run import run_recipe

    run_dir = tiny_run
    before = (run_dir / "seed3" / "dpo" / "hf" / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="recipes.mini_zephyr"):
        metrics = run_recipe(recipe(run_dir))
    assert (run_dir / "seed3" / "dpo" / "hf" / "model.safetensors").stat().st_mtime_ns == before
    kept = [r.getMessage() for r in caplog.records if "already done" in r.getMessage()]
    assert len(kept) == 3, kept  # teacher, sft, dpo
    results = json.loads((run_dir / "results.json").read_text())
    assert metrics["mini/greedy/win_rate"] == pytest.approx(results["per_seed"]["greedy"][0]["win_rate"])
