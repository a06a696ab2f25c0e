"""`+experiment=zephyr_tiny` end to end at the smallest size: every stage runs, the report parses."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import compose
from zephyr_lightning.aif.io import iter_jsonl
from zephyr_lightning.mini import parse_main_table, parse_prompt

TINY = [
    "+experiment=zephyr_tiny",
    "logger=csv",
    "pipeline.seeds=[3]",
    "pipeline.teacher.num_train=96",
    "pipeline.teacher.num_test=8",
    "pipeline.teacher.num_aif_prompts=24",
    "pipeline.teacher.num_eval_prompts=8",
    "pipeline.sft.trainer.max_epochs=8",
    "pipeline.sft.optim.lr=1e-2",
    "pipeline.aif.generate.models.dsft.max_new_tokens=12",
    "pipeline.aif.binarize.test_size=2",
    "pipeline.dpo.trainer.max_epochs=1",
    "pipeline.dpo.data.batch_size=8",
    "pipeline.eval.num_samples=2",
    "pipeline.eval.max_new_tokens=12",
    "callbacks.progress_bar=null",
    "model.config_overrides.hidden_size=64",
    "model.config_overrides.intermediate_size=192",
]


def test_a_stage_config_is_the_run_config_with_the_stage_section_merged_in(tmp_path):
    from zephyr_lightning.mini.pipeline import stage_config, stage_dirs

    cfg = compose(["+experiment=zephyr_tiny"], tmp_path)
    dirs = stage_dirs(tmp_path, 5)
    sft = stage_config(cfg, cfg.pipeline.sft, seed=5, dirs=dirs, stage="sft")
    assert "pipeline" not in sft and sft.seed == 5 and sft.model.seed == 5
    assert sft.paths.output_dir == dirs["sft"] and sft.callbacks.hf_export.dirpath == f"{dirs['sft']}/hf"
    # module and data are replaced whole (no key of the default preference data is left over)...
    assert sft.module._target_ == "zephyr_lightning.SFTModule" and sft.data._target_ == "zephyr_lightning.SFTDataModule"
    assert "max_prompt_length" not in sft.data and sft.data.path == dirs["teacher"]
    # ...other groups are merged: the stage's learning rate over the run's optimizer settings.
    assert sft.optim.lr == 3e-3 and sft.optim.weight_decay == cfg.optim.weight_decay
    assert sft.module.optim.lr == 3e-3 and sft.module.model.config_overrides.hidden_size == 128

    dpo = stage_config(cfg, cfg.pipeline.dpo, seed=5, dirs=dirs, stage="dpo")
    assert dpo.module.policy.name_or_path == f"{dirs['sft']}/hf" and dpo.module.reference is None
    assert dpo.data.path == f"{dirs['aif']}/binarized" and dpo.data.tokenizer.name_or_path == f"{dirs['sft']}/hf"
    assert dpo.optim.schedule == "linear" and dpo.paths.output_dir == dirs["dpo"]


def test_win_rate_counts_ties_as_half():
    from zephyr_lightning.mini import win_rate
    from zephyr_lightning.mini.report import spread

    result = win_rate({"a": 5.0, "b": 3.0, "c": 4.0, "d": 9.0}, {"a": 4.0, "b": 3.0, "c": 6.0, "e": 1.0})
    assert result == {"win_rate": 0.5, "wins": 1, "ties": 1, "losses": 1, "prompts": 3}
    assert spread([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import train

    run_dir = tmp_path_factory.mktemp("mini")
    cfg = compose(TINY, run_dir)
    return run_dir, cfg, train.run(cfg)


def test_every_stage_writes_its_files(tiny_run):
    run_dir, _, _ = tiny_run
    seed = run_dir / "seed3"
    for path in (
        "teacher/train_sft.jsonl",
        "teacher/eval_prompts.jsonl",
        "sft/hf/model.safetensors",
        "aif/generations.jsonl",
        "aif/judged.jsonl",
        "aif/binarized/train_prefs.jsonl",
        "aif/binarized/test_prefs.jsonl",
        "dpo/hf/model.safetensors",
        "eval/greedy/greedy_judged.jsonl",
        "eval/sample/sample_judged.jsonl",
    ):
        assert (seed / path).exists(), path
    for name in ("report.md", "results.json", "dpo_rewards.png", "score_distributions.png"):
        assert (run_dir / name).stat().st_size > 0, name
    # AIF sampled from the dSFT export and the programmatic judge scored every completion.
    rows = list(iter_jsonl(seed / "aif" / "judged.jsonl"))
    assert len(rows) == 24 and all(len(r["completions"]) == 4 for r in rows)
    assert all(c["model"] == "dsft" and c["judge_error"] is None for r in rows for c in r["completions"])
    pair = next(iter_jsonl(seed / "aif" / "binarized" / "train_prefs.jsonl"))
    assert pair["score_chosen"] > pair["score_rejected"]
    parse_prompt(pair["prompt"])


def test_the_report_table_parses_and_agrees_with_the_results(tiny_run):
    run_dir, _, metrics = tiny_run
    table = parse_main_table((run_dir / "report.md").read_text())
    assert set(table) == {"dSFT", "dDPO"}
    results = json.loads((run_dir / "results.json").read_text())
    assert results["seeds"] == [3]
    greedy = results["per_seed"]["greedy"][0]
    assert greedy["prompts"] == 8 and greedy["wins"] + greedy["ties"] + greedy["losses"] == 8
    assert greedy["win_rate"] == pytest.approx((greedy["wins"] + 0.5 * greedy["ties"]) / 8)
    cell = table["dDPO"]["win rate vs dSFT, greedy"]
    assert float(cell.split(" ± ")[0]) == pytest.approx(greedy["win_rate"], abs=1e-3)
    assert float(table["dSFT"]["judge score, greedy (1-10)"].split(" ± ")[0]) == pytest.approx(greedy["dsft_score"], abs=5e-3)
    # train.py returns the seed means, named as `optimized_metric` expects.
    assert metrics["mini/greedy/win_rate"] == pytest.approx(greedy["win_rate"])
    assert all(math.isfinite(v) for v in metrics.values())
    assert 1.0 <= metrics["mini/sample/ddpo_score"] <= 10.0


def test_a_rerun_keeps_the_finished_stages(tiny_run, caplog):
    import train

    run_dir, cfg, _ = tiny_run
    before = (run_dir / "seed3" / "dpo" / "hf" / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="zephyr_lightning.mini"):
        train.run(cfg)
    assert (run_dir / "seed3" / "dpo" / "hf" / "model.safetensors").stat().st_mtime_ns == before
    kept = [r.getMessage() for r in caplog.records if "already done" in r.getMessage()]
    assert len(kept) == 3, kept  # teacher, sft, dpo
