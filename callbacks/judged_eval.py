"""A judged evaluation while training: is the policy getting better by a judge's lights, not only by its loss?"""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from transformers import PreTrainedTokenizerBase

from zephyr_lightning.aif.judges import Judge, JudgeItem
from zephyr_lightning.arguments import PositiveInt, check_arguments
from zephyr_lightning.callbacks._tokenizer import find_tokenizer
from zephyr_lightning.callbacks.sample_generation import _unsharded_root, generate_replies
from zephyr_lightning.chat_format import ChatFormat
from zephyr_lightning.data.questions import Question, load_questions
from zephyr_lightning.evaluate.judging import JudgeSession
from zephyr_lightning.evaluate.pairwise import PairOutcome
from zephyr_lightning.evaluate.single import REFERENCE_CATEGORIES, references_for
from zephyr_lightning.evaluate.stats import win_rate

log = logging.getLogger(__name__)


class JudgedEvaluation(L.Callback):
    """Every ``every_n_validations`` validations, the current policy answers ``num_prompts`` held-out
    prompts greedily (their first turn), and ``judge`` grades the answers from 1 to 10 (MT-Bench's
    single-answer grading, references shown for math, reasoning and coding): ``eval/judge_score``, the mean.
    With ``against_start``, the model as it was when training started answers the same prompts once, and
    every evaluation compares the two in both orders (a win only when both orders agree):
    ``eval/win_rate`` against the start, ties counting half; ``eval/judge_score_start`` is the start's grade.

    Every rank generates (a sharded model needs all ranks in each forward); rank 0 judges, through an
    on-disk cache (``cache_path``, default ``<log dir>/judged_eval/cache.jsonl``), and shares the numbers so
    that every rank logs the same. The starting answers are kept in checkpoints, so a resumed run compares
    with the same start. Each evaluation's answers, grades and outcomes are appended to
    ``<log dir>/judged_eval/answers.jsonl``, and logged as a W&B table (``judged_eval``) under W&B.

    Args:
        judge: any `zephyr_lightning.aif.judges.Judge` that gives ``score`` (and ``pairwise``) judgements.
        prompts: a question file or data set (`zephyr_lightning.data.questions.load_questions`).
        split: its split.
        num_prompts: how many of its questions (the first ones).
        every_n_validations: evaluate after every N-th validation (sanity checks do not count).
        max_new_tokens: longest answer.
        against_start: compare with the model as it was when training started.
        cache_path: the judge's cache file.
        tokenizer: default: the DataModule's.
    """

    def __init__(
        self,
        judge: Judge,
        prompts: str = "builtin:eval_questions",
        split: str = "train",
        num_prompts: PositiveInt = 8,
        every_n_validations: PositiveInt = 1,
        max_new_tokens: PositiveInt = 128,
        against_start: bool = True,
        cache_path: str | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        check_arguments(JudgedEvaluation, locals(), prefix="callbacks.judged_eval")
        self.judge = judge
        self.questions: list[Question] = load_questions(prompts, split, limit=num_prompts)
        self.every_n_validations = every_n_validations
        self.max_new_tokens = max_new_tokens
        self.against_start = against_start
        self.cache_path = cache_path
        self.tokenizer = tokenizer
        self.validations = 0
        self.start_answers: list[str] | None = None
        self._session: JudgeSession | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations, "start_answers": self.start_answers}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict.get("validations", 0))
        self.start_answers = state_dict.get("start_answers")

    def _folder(self, trainer: L.Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir) / "judged_eval"

    @torch.no_grad()
    def answer(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[str] | None:
        """The policy's greedy answers to the prompts, each rendered as the training data is."""
        tokenizer = find_tokenizer(trainer, self.tokenizer)
        if tokenizer is None:
            log.warning("JudgedEvaluation: no tokenizer (give one, or use a DataModule with .tokenizer); skipped")
            return None
        chat_format = getattr(trainer.datamodule, "chat_format", None) or ChatFormat()
        model = pl_module.model
        was_training = model.training
        model.eval()
        with _unsharded_root(trainer):
            answers = generate_replies(model, tokenizer, [q.first_turn for q in self.questions], chat_format,
                                       max_new_tokens=self.max_new_tokens)
        model.train(was_training)
        return answers

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.against_start and self.start_answers is None:
            self.start_answers = self.answer(trainer, pl_module)
            if self.start_answers is not None and trainer.is_global_zero:
                self._record(trainer, self._folder(trainer), "start", self.start_answers, [None] * len(self.questions),
                             [None] * len(self.questions))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        if self.validations % self.every_n_validations and not trainer.fast_dev_run:
            return
        answers = self.answer(trainer, pl_module)
        if answers is None:
            return
        metrics: dict[str, float] = {}
        if trainer.is_global_zero:
            metrics = self._judge(trainer, answers)
        metrics = trainer.strategy.broadcast(metrics, src=0)
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)

    def _judge(self, trainer: L.Trainer, answers: list[str]) -> dict[str, float]:
        folder = self._folder(trainer)
        if self._session is None:
            self._session = JudgeSession(getattr(self.judge, "name", "judge"), self.judge,
                                         self.cache_path or folder / "cache.jsonl")
        items = [JudgeItem(q.first_turn, a, q.question_id, "policy", kind="score",
                           references=references_for(q, 1, REFERENCE_CATEGORIES)) for q, a in zip(self.questions, answers)]
        start = self.start_answers if self.against_start else None
        if start is not None:
            items += [JudgeItem(q.first_turn, s, q.question_id, "start", kind="score",
                                references=references_for(q, 1, REFERENCE_CATEGORIES)) for q, s in zip(self.questions, start)]
            for q, a, s in zip(self.questions, answers, start):
                shared = dict(prompt=q.first_turn, prompt_id=q.question_id, kind="pairwise",
                              references=references_for(q, 1, REFERENCE_CATEGORIES))
                items += [JudgeItem(response=a, response_b=s, model="policy vs start", **shared),
                          JudgeItem(response=s, response_b=a, model="start vs policy", **shared)]
        judgements = self._session.judge_items(items, part=f"step {trainer.global_step}", show_progress=False)
        n = len(self.questions)
        scores = [j.score if j.ok else None for j in judgements[:n]]
        metrics: dict[str, float] = {}
        graded = [s for s in scores if s is not None]
        if graded:
            metrics["eval/judge_score"] = statistics.fmean(graded)
        else:
            log.warning("JudgedEvaluation: no answer could be graded at step %d; first error: %s", trainer.global_step,
                        judgements[0].error)
        outcomes: list[str | None] = [None] * n
        if start is not None:
            start_scores = [j.score for j in judgements[n : 2 * n] if j.ok]
            if start_scores:
                metrics["eval/judge_score_start"] = statistics.fmean(start_scores)
            pairs = judgements[2 * n :]
            for i, q in enumerate(self.questions):
                first, second = pairs[2 * i], pairs[2 * i + 1]
                outcomes[i] = PairOutcome("policy", "start", q.question_id, q.category, 1,
                                          first.verdict if first.ok else None, second.verdict if second.ok else None,
                                          len(answers[i]), len(start[i])).outcome
            decided = [o for o in outcomes if o is not None]
            if decided:
                metrics["eval/win_rate"] = win_rate(decided)
        self._record(trainer, folder, "policy", answers, scores, outcomes)
        shown = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if math.isfinite(v))
        log.info("judged evaluation @%d: %s", trainer.global_step, shown or "nothing graded")
        return metrics

    def _record(self, trainer: L.Trainer, folder: Path, model: str, answers: list[str], scores: list[float | None],
                outcomes: list[str | None]) -> None:
        step = trainer.global_step
        columns = ["step", "model", "question_id", "prompt", "answer", "score", "vs_start"]
        rows = [[step, model, q.question_id, q.first_turn, a, s, o] for q, a, s, o in zip(self.questions, answers, scores, outcomes)]
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "answers.jsonl", "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(dict(zip(columns, row)), ensure_ascii=False) + "\n")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key="judged_eval", columns=columns, data=rows, step=step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
