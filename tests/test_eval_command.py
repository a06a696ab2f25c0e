"""``python -m zephyr_lightning.evaluate``: the offline default shows every part of the report, the summary
is what a model card reads, a run killed with SIGKILL resumes without asking anything twice, and a
configured logger gets the tables."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fake_openai import FakeOpenAIServer, Reply, chat_reply
from tests.helpers import write_jsonl
from zephyr_lightning.aif.io import iter_jsonl
from zephyr_lightning.cli.configs import compose, conf_dir
from zephyr_lightning.modelcard import RunRecords, read_eval_summary, render_card

ROOT = Path(__file__).resolve().parent.parent
# The offline default, smaller: 4 questions (2 turns each), 2 + 2 safety prompts, shorter answers (still of
# three different lengths).
SMALL = ["questions.limit=4", "safety.limit=2", "evaluation.show_progress=false", "evaluation.bootstrap_resamples=500",
         "models.tiny_long.max_new_tokens=12", "models.tiny_short.max_new_tokens=4", "models.tiny_base.max_new_tokens=8"]


def eval_config(run_dir: Path, *overrides: str):
    return compose("eval", [*SMALL, f"run_dir={run_dir}", *overrides], config_dir=conf_dir() / "eval")


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    from zephyr_lightning.cli.evaluate import run

    run_dir = tmp_path_factory.mktemp("eval")
    return run_dir, run(eval_config(run_dir))


def test_the_offline_default_shows_every_part(offline):
    run_dir, results = offline
    assert results.models == ["tiny_long", "tiny_short", "tiny_base"] and results.baseline == "tiny_base"
    assert results.judges == ["reference", "length"]
    report = (run_dir / "report.md").read_text()
    for section in ("## Single-answer grading", "## Pairwise against `tiny_base`", "## Judge panel agreement",
                    "## Safety probe", "## Judge calls", "## Plots"):
        assert section in report, section
    for plot in ("scores_by_category.png", "win_rates.png", "judge_agreement.png", "safety.png"):
        assert (run_dir / plot).stat().st_size > 10_000, plot
    for judge in results.judges:
        single = results.single[judge]
        assert set(single) == set(results.models)
        assert all(s["graded"] == 8 and s["failed"] == 0 and set(s["turns"]) == {1, 2} for s in single.values())
        for model in ("tiny_long", "tiny_short"):
            pair = results.pairwise[judge][model]
            assert pair["compared"] == 8 and pair["ci_low"] <= pair["win_rate"] <= pair["ci_high"]
            assert pair["position_bias_rate"] == 0.0  # programmatic judges score each answer alone
        assert all(s["harmful"] == 2 and s["benign"] == 2 for s in results.safety[judge].values())
    row = results.agreement[0]
    assert row["judges"] == ["reference", "length"] and row["scores"] == 24 and row["verdicts"] == 16
    # The panel's statistics are those of the judgment files, recomputed.
    from zephyr_lightning.evaluate.stats import spearman

    def grades(judge):
        rows = list(iter_jsonl(run_dir / "judgments" / judge / "single.jsonl"))
        return {(r["model"], r["question_id"], r["turn"]): r["score"] for r in rows}

    a, b = grades("reference"), grades("length")
    assert row["score_spearman"] == pytest.approx(spearman([a[k] for k in a], [b[k] for k in a]))
    # Every model answered both turns of every question, turn 2 after its own turn 1.
    answers = list(iter_jsonl(run_dir / "answers" / "tiny_long.jsonl"))
    assert len(answers) == 4 and all(len(r["answers"]) == 2 for r in answers)


def test_the_summary_is_what_a_model_card_shows(offline):
    run_dir, results = offline
    summary = read_eval_summary(run_dir / "summary.json")
    assert summary["baseline"] == "tiny_base" and summary["judges"] == "reference, length"
    group = summary["tiny_long [reference]"]
    assert group["win_rate"] == pytest.approx(results.pairwise["reference"]["tiny_long"]["win_rate"])
    assert group["score"] == pytest.approx(results.single["reference"]["tiny_long"]["score"])
    assert all(isinstance(v, float) for v in summary["judge_agreement"].values())
    card = render_card(RunRecords(eval_summary=summary))
    assert "## Evaluation" in card and "`tiny_long [reference]/lc_win_rate`" in card
    results_json = json.loads((run_dir / "results.json").read_text())
    assert results_json["pairwise"]["length"]["tiny_short"]["wins"] == results.pairwise["length"]["tiny_short"]["wins"]


def test_a_rerun_in_the_same_folder_asks_nothing_again(offline, tmp_path):
    from zephyr_lightning.cli.evaluate import run

    run_dir, first = offline
    again = run(eval_config(run_dir))
    for judge in again.judges:
        assert all(c["from_cache"] == c["items"] and c["judged"] == 0 for c in again.counts[judge].values())
    assert again.single == first.single and again.pairwise == first.pairwise


def test_a_logger_gets_the_summary_and_the_tables(offline):
    from zephyr_lightning.evaluate import log_results

    class Recorder:
        def __init__(self):
            self.metrics, self.tables = {}, {}

        def log_metrics(self, metrics):
            self.metrics.update(metrics)

        def log_table(self, key, columns, data):
            self.tables[key] = (columns, data)

    _, results = offline
    logger = Recorder()
    log_results(logger, results)
    assert logger.metrics["eval/tiny_long [length]/win_rate"] == pytest.approx(results.pairwise["length"]["tiny_long"]["win_rate"])
    columns, rows = logger.tables["eval/single"]
    assert columns[:3] == ["judge", "model", "question_id"] and len(rows) == 2 * 3 * 8
    assert len(logger.tables["eval/pairwise"][1]) == 2 * 2 * 8 and len(logger.tables["eval/safety"][1]) == 2 * 3 * 4
    assert [row[0] for row in logger.tables["eval/summary"][1]][:1] == ["tiny_long [reference]"]


def test_the_wandb_logger_config_composes_and_runs(tmp_path, monkeypatch):
    from zephyr_lightning.cli.evaluate import run

    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = eval_config(tmp_path, "logger=wandb", "questions.limit=1", "safety=null", "judges=offline", "~judges.length",
                      "report.plots=false")
    assert cfg.logger._target_ == "zephyr_lightning.loggers.wandb_logger"
    results = run(cfg)
    assert (tmp_path / "summary.json").exists() and results.judges == ["reference"]


def test_bad_settings_are_named_by_their_key_before_anything_loads(tmp_path):
    from zephyr_lightning.cli.evaluate import run

    with pytest.raises(ValueError) as caught:
        run(eval_config(tmp_path, "evaluation.confidence=1.5", "models.tiny_long.batch_size=0", "+judges.length.tie_margin=-1"))
    message = str(caught.value)
    for problem in ("evaluation.confidence=1.5: must be < 1", "models.tiny_long.batch_size=0: must be >= 1",
                    "judges.length.tie_margin=-1: must be >= 0"):
        assert problem in message
    assert not (tmp_path / "answers").exists()

    with pytest.raises(ValueError, match=r"evaluation.baseline='nobody' is not one of the models"):
        run(eval_config(tmp_path, "evaluation.baseline=nobody"))


# --- kill -9 through the real command --------------------------------------------------------------


def _judge_server(body, seen):
    # Slow enough that the run can be killed half way; grades by answer length.
    user = body["messages"][1]["content"]
    if "[CONVERSATION WITH ASSISTANT A]" in user:
        return Reply(200, chat_reply(json.dumps({"explanation": "-", "verdict": "A" if len(user) % 2 else "B"})), delay=0.05)
    return Reply(200, chat_reply(json.dumps({"explanation": "-", "score": 1 + len(user) % 10})), delay=0.05)


def _command(config_dir: Path, run_dir: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "zephyr_lightning.evaluate", f"hydra.searchpath=[file://{config_dir}]",
            "models=from_files", "judges=server", f"judges.server.base_url={url}", "safety=null",
            "evaluation.show_progress=false", "report.plots=false", f"hydra.run.dir={run_dir}"]


def test_a_run_killed_with_sigkill_resumes_without_asking_again(tmp_path):
    from zephyr_lightning.data.questions import load_questions

    qs = load_questions("builtin:eval_questions")
    assert len(qs) == 16 and all(len(q.turns) == 2 for q in qs)
    for name in ("a", "b"):
        write_jsonl(tmp_path / f"{name}.jsonl", [{"question_id": q.question_id, "answers": [f"{name} {t}" * (i % 5 + 1) for t in q.turns]}
                                                 for i, q in enumerate(qs)])
    config_dir = tmp_path / "conf"
    (config_dir / "models").mkdir(parents=True)
    (config_dir / "judges").mkdir()
    (config_dir / "models" / "from_files.yaml").write_text(
        "# @package _global_\nmodels:\n"
        f"  a: {{_target_: zephyr_lightning.evaluate.AnswerFile, path: {tmp_path / 'a.jsonl'}}}\n"
        f"  b: {{_target_: zephyr_lightning.evaluate.AnswerFile, path: {tmp_path / 'b.jsonl'}}}\n"
        "evaluation:\n  baseline: b\n")
    (config_dir / "judges" / "server.yaml").write_text(
        "server:\n  _target_: zephyr_lightning.aif.OpenAIJudge\n  model: judge\n  base_url: ???\n  api_key_env: null\n"
        "  concurrency: 2\n  max_retries: 0\n")
    run_dir = tmp_path / "run"
    cache = run_dir / "judgments" / "server" / "cache.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    total = 2 * 32 + 2 * 32  # single: 2 models x 32 turns; pairwise: 32 turns x 2 orders
    with FakeOpenAIServer(_judge_server) as server:
        process = subprocess.Popen(_command(config_dir, run_dir, server.url), cwd=tmp_path, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if cache.exists() and cache.read_bytes().count(b"\n") >= 20:
                break
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        process.send_signal(signal.SIGKILL)
        process.wait()
        cached = {row["key"] for row in iter_jsonl(cache)}
        assert 20 <= len(cached) < total
        asked_before = [r.body for r in server.requests]

        done = subprocess.run(_command(config_dir, run_dir, server.url), cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        asked_after = [r.body for r in server.requests[len(asked_before):]]
    # The restart asked exactly what the cache lacked: every item came either from the cache (as many as it
    # held) or from one request (as many as it lacked, none twice), so no cached item was asked again. An
    # answer received but not yet written at the kill is not in the cache and is rightly asked again.
    assert len(asked_after) == total - len(cached)
    assert len({json.dumps(body, sort_keys=True) for body in asked_after}) == len(asked_after)
    counts = json.loads((run_dir / "results.json").read_text())["judge_calls"]["server"]
    assert counts["single"]["from_cache"] + counts["pairwise"]["from_cache"] == len(cached)
    assert counts["single"]["failed"] == counts["pairwise"]["failed"] == 0
    assert json.loads((run_dir / "summary.json").read_text())["a"]["win_rate"] >= 0
