"""JudgedEvaluation during a real (short) dDPO run: graded answers, the win rate against the start."""

from __future__ import annotations

import csv

import pytest

from tests.helpers import compose
from zephyr_lightning.aif.io import iter_jsonl
from zephyr_lightning.data.questions import load_questions
from zephyr_lightning.evaluate.offline import reference_score
from zephyr_lightning.evaluate.single import REFERENCE_CATEGORIES, references_for

RUN = ["+experiment=dpo", "logger=csv", "+callbacks/judged_eval=offline", "callbacks.judged_eval.num_prompts=3",
       "callbacks.judged_eval.max_new_tokens=6", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
       "trainer.limit_val_batches=1", "~callbacks.sample_generation", "~callbacks.model_checkpoint",
       "optim.lr=1e-2"]


def test_judged_evaluation_logs_the_judge_score_and_the_win_rate_against_the_start(tmp_path):
    from train import train

    metrics = train(compose(RUN, tmp_path))
    assert {"eval/judge_score", "eval/judge_score_start", "eval/win_rate"} <= set(metrics)
    rows = list(iter_jsonl(next(tmp_path.glob("csv/**/judged_eval/answers.jsonl"))))
    start = {r["question_id"]: r for r in rows if r["model"] == "start"}
    last_step = max(r["step"] for r in rows if r["model"] == "policy")
    policy = [r for r in rows if r["model"] == "policy" and r["step"] == last_step]
    assert len(start) == len(policy) == 3 and all(r["step"] == 0 for r in start.values())
    questions = {q.question_id: q for q in load_questions("builtin:eval_questions", limit=3)}
    # The grades and outcomes are the judge function's, recomputed from the recorded answers.
    outcomes = []
    for row in policy:
        reference = dict(enumerate(references_for(questions[row["question_id"]], 1, REFERENCE_CATEGORIES))).get(0)
        mine = reference_score(row["prompt"], row["answer"], reference)
        theirs = reference_score(row["prompt"], start[row["question_id"]]["answer"], reference)
        assert row["score"] == pytest.approx(mine)
        outcomes.append("win" if mine > theirs else "loss" if mine < theirs else "tie")
        assert row["vs_start"] == outcomes[-1]
    assert metrics["eval/judge_score"] == pytest.approx(sum(r["score"] for r in policy) / 3)
    assert metrics["eval/win_rate"] == pytest.approx(sum({"win": 1, "tie": 0.5, "loss": 0}[o] for o in outcomes) / 3)
    # Logged once per validation (two epochs, one validation each) through the CSV logger.
    with open(next(tmp_path.glob("csv/**/metrics.csv")), newline="") as f:
        logged = [r["eval/judge_score"] for r in csv.DictReader(f) if r.get("eval/judge_score")]
    assert len(logged) == 2


def test_the_start_answers_survive_a_checkpoint():
    from zephyr_lightning.aif import CallableJudge
    from zephyr_lightning.callbacks import JudgedEvaluation

    callback = JudgedEvaluation(CallableJudge(reference_score), num_prompts=2)
    callback.start_answers, callback.validations = ["a", "b"], 3
    restored = JudgedEvaluation(CallableJudge(reference_score), num_prompts=2)
    restored.load_state_dict(callback.state_dict())
    assert restored.start_answers == ["a", "b"] and restored.validations == 3
    with pytest.raises(ValueError, match="callbacks.judged_eval.num_prompts=0: must be >= 1"):
        JudgedEvaluation(CallableJudge(reference_score), num_prompts=0)


def test_every_n_validations_answers_at_every_nth_validation_only(monkeypatch):
    """Sanity checks do not count; with every_n_validations=2 the policy answers at validations 2 and 4."""
    from types import SimpleNamespace

    from zephyr_lightning.aif import CallableJudge
    from zephyr_lightning.callbacks import JudgedEvaluation

    callback = JudgedEvaluation(CallableJudge(reference_score), num_prompts=2, every_n_validations=2)
    answered = []
    monkeypatch.setattr(callback, "answer", lambda trainer, module: answered.append(callback.validations))
    trainer = SimpleNamespace(sanity_checking=True, fast_dev_run=False)
    callback.on_validation_epoch_end(trainer, None)
    trainer.sanity_checking = False
    for _ in range(5):
        callback.on_validation_epoch_end(trainer, None)
    assert answered == [2, 4] and callback.validations == 5
