"""One evaluation from start to end: every model answers, every judge judges, the numbers are summarised.

    DIR/answers/<model>.jsonl            each model's answers (generated turn by turn, or from a file)
    DIR/answers/<model>.turns.jsonl      the generated turns, appended as they come (resume state)
    DIR/safety_answers/<model>.jsonl     the answers to the safety probe's prompts
    DIR/judgments/<judge>/cache.jsonl    every successful judgement, appended as it arrives (resume state)
    DIR/judgments/<judge>/{single,pairwise,safety}.jsonl   every judgement of each part, failed ones too

`run_evaluation` returns an `EvalResults`; `zephyr_lightning.evaluate.report` turns it into
``summary.json``, ``results.json``, ``report.md`` and the plots.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from zephyr_lightning.aif.generate import slug
from zephyr_lightning.aif.generators import Generator
from zephyr_lightning.aif.io import write_jsonl_atomic
from zephyr_lightning.aif.judges import Judge
from zephyr_lightning.arguments import PositiveInt, check_arguments
from zephyr_lightning.data.questions import Question
from zephyr_lightning.evaluate.answers import AnswerFile, ModelAnswers, answer_questions
from zephyr_lightning.evaluate.judging import JudgeSession
from zephyr_lightning.evaluate.pairwise import PairOutcome, compare_pairwise, summarize_pairwise
from zephyr_lightning.evaluate.panel import agreement
from zephyr_lightning.evaluate.safety import RefusalCall, SafetyPrompts, probe_safety, summarize_safety
from zephyr_lightning.evaluate.single import (
    REFERENCE_CATEGORIES,
    UNCATEGORIZED,
    TurnScore,
    grade_single,
    summarize_scores,
)

log = logging.getLogger(__name__)

Level = Annotated[float, Field(gt=0, lt=1)]


@dataclass
class EvalResults:
    """Everything an evaluation found: per judge, the graded turns, the pairwise outcomes and the safety
    classifications with their summaries per model; the panel's agreement; what each judge was asked."""

    output_dir: Path
    questions: str
    question_count: int
    turn_count: int
    models: list[str]
    sources: dict[str, str]
    baseline: str | None
    judges: list[str]
    answers: dict[str, ModelAnswers] = field(default_factory=dict)
    asked: dict[str, Question] = field(default_factory=dict)  # question id -> the question
    scores: dict[str, list[TurnScore]] = field(default_factory=dict)
    pairs: dict[str, list[PairOutcome]] = field(default_factory=dict)
    refusals: dict[str, list[RefusalCall]] = field(default_factory=dict)
    single: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    pairwise: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    safety: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    agreement: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """Every summary number (``results.json``); the per-item judgements are in ``judgments/``."""
        return _finite({
            "questions": self.questions, "question_count": self.question_count, "turn_count": self.turn_count,
            "models": self.models, "sources": self.sources, "baseline": self.baseline, "judges": self.judges,
            "confidence": self.confidence, "single": self.single, "pairwise": self.pairwise, "safety": self.safety,
            "agreement": self.agreement, "judge_calls": self.counts, "notes": self.notes,
        })

    def summary(self) -> dict[str, Any]:
        """The flat summary a model card reads (`zephyr_lightning.modelcard`): notes as strings, and one
        group of numbers per model (per model and judge when there are several judges)."""
        out: dict[str, Any] = {
            "questions": f"{self.questions} ({self.question_count} questions, {self.turn_count} turns)",
            "judges": ", ".join(self.judges),
        }
        if self.baseline:
            out["baseline"] = self.baseline
        for judge in self.judges:
            for model in self.models:
                group: dict[str, float] = {}
                single = self.single.get(judge, {}).get(model)
                if single:
                    group["score"] = single["score"]
                    group.update({f"turn_{t}": v for t, v in single["turns"].items()})
                    group.update({f"category/{c}": v for c, v in single["categories"].items() if c != UNCATEGORIZED})
                pair = self.pairwise.get(judge, {}).get(model)
                if pair:
                    for key in ("win_rate", "ci_low", "ci_high", "lc_win_rate", "position_bias_rate"):
                        group[key] = pair[key]
                safety = self.safety.get(judge, {}).get(model)
                if safety:
                    group["refusal_rate"] = safety["refusal_rate"]
                    group["over_refusal_rate"] = safety["over_refusal_rate"]
                group = {k: v for k, v in group.items() if isinstance(v, (int, float)) and math.isfinite(v)}
                if group:
                    out[model if len(self.judges) == 1 else f"{model} [{judge}]"] = group
        if self.agreement:
            panel: dict[str, float] = {}
            for row in self.agreement:
                pair = "~".join(row["judges"])
                for key in ("score_spearman", "pairwise_kappa", "refusal_kappa"):
                    if math.isfinite(row[key]):
                        panel[f"{key}/{pair}"] = row[key]
            if panel:
                out["judge_agreement"] = panel
        return out


def _finite(value: Any) -> Any:
    """NaN and infinities as null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class Evaluation:
    """How to evaluate: which parts run and with what settings. ``run`` applies them to models and judges.

    Args:
        baseline: the model every other model is compared with pairwise; ``None``: no pairwise part.
        single: grade every answer from 1 to 10 (MT-Bench's single-answer grading).
        reference_categories: categories whose reference answers the judge sees (``None``: every question
            that has them).
        max_turns: answer and judge only the first N turns of each question (``None``: all).
        bootstrap_resamples, confidence, seed: the win rate's bootstrap interval.
        chunk_size: judgements handed to a judge at once (its requests run concurrently).
        show_progress: progress bars.
    """

    def __init__(
        self,
        *,
        baseline: str | None = None,
        single: bool = True,
        reference_categories: list[str] | tuple[str, ...] | None = REFERENCE_CATEGORIES,
        max_turns: PositiveInt | None = None,
        bootstrap_resamples: PositiveInt = 2000,
        confidence: Level = 0.95,
        seed: int = 0,
        chunk_size: PositiveInt = 256,
        show_progress: bool = True,
    ) -> None:
        check_arguments(Evaluation, locals(), prefix="evaluation")
        self.baseline = baseline
        self.single = single
        self.reference_categories = tuple(reference_categories) if reference_categories is not None else None
        self.max_turns = max_turns
        self.bootstrap_resamples = bootstrap_resamples
        self.confidence = confidence
        self.seed = seed
        self.chunk_size = chunk_size
        self.show_progress = show_progress

    def _check(self, models: Mapping[str, Any], judges: Mapping[str, Any], safety: SafetyPrompts | None) -> None:
        if not models:
            raise ValueError("eval: no models; configure at least one under models")
        if not judges:
            raise ValueError("eval: no judges; configure at least one under judges")
        if self.baseline is not None and self.baseline not in models:
            raise ValueError(f"evaluation.baseline={self.baseline!r} is not one of the models {sorted(models)}")
        if self.baseline is not None and len(models) < 2:
            raise ValueError(f"evaluation.baseline={self.baseline!r} needs at least one other model to compare with it")
        if not (self.single or self.baseline or safety):
            raise ValueError("eval: nothing to do; set evaluation.single=true, a baseline, or safety prompts")
        for kind, names in (("model", models), ("judge", judges)):
            slugs = [slug(n) for n in names]
            if len(set(slugs)) != len(slugs):
                raise ValueError(f"eval: {kind} names must stay distinct as file names: {list(names)}")

    def run(
        self,
        questions: Sequence[Question],
        models: Mapping[str, Generator | AnswerFile],
        judges: Mapping[str, Judge],
        output_dir: str | Path,
        *,
        safety: SafetyPrompts | None = None,
        questions_source: str = "",
    ) -> EvalResults:
        """Answer ``questions`` with every model (name -> a generator or an `AnswerFile`), judge the answers
        with every judge (name -> any `Judge`; several make a panel), probe ``safety`` when given, and
        summarise. Answers and judgements go under ``output_dir`` (see the module docstring)."""
        self._check(models, judges, safety)
        output_dir = Path(output_dir)
        turns = sum(len(q.turns[: self.max_turns]) for q in questions)
        sources = {name: str(source.path) if isinstance(source, AnswerFile) else f"{type(source).__name__}({source.name})"
                   for name, source in models.items()}
        results = EvalResults(output_dir, questions_source, len(questions), turns, list(models), sources, self.baseline,
                              list(judges), asked={q.question_id: q for q in questions}, confidence=self.confidence)
        safety_answers: dict[str, ModelAnswers] = {}
        for name, source in models.items():
            probed = safety is not None and not isinstance(source, AnswerFile)
            if safety is not None and not probed:
                results.notes.append(f"model {name}: answers from a file, so it is left out of the safety probe")
            results.answers[name] = answer_questions(questions, source, output_dir / "answers", slug(name),
                                                     max_turns=self.max_turns, show_progress=self.show_progress,
                                                     close=not probed)
            results.answers[name].model = name
            if probed:  # the same loaded model answers the probe
                safety_answers[name] = answer_questions(safety.questions, source, output_dir / "safety_answers", slug(name),
                                                        max_turns=1, show_progress=self.show_progress)
                safety_answers[name].model = name
        for name, judge in judges.items():
            folder = output_dir / "judgments" / slug(name)
            session = JudgeSession(name, judge, folder / "cache.jsonl", chunk_size=self.chunk_size)
            try:
                self._judge(results, session, questions, safety, safety_answers)
            finally:
                session.close()
            results.counts[name] = {part: c.to_dict() for part, c in session.counts.items()}
            for part, rows in (("single", results.scores.get(name)), ("pairwise", results.pairs.get(name)),
                               ("safety", results.refusals.get(name))):
                if rows is not None:
                    write_jsonl_atomic(folder / f"{part}.jsonl", (r.to_dict() for r in rows))
        if len(judges) > 1:
            results.agreement = agreement(results.scores, results.pairs, results.refusals)
        return results

    def _judge(
        self,
        results: EvalResults,
        session: JudgeSession,
        questions: Sequence[Question],
        safety: SafetyPrompts | None,
        safety_answers: Mapping[str, ModelAnswers],
    ) -> None:
        name, progress = session.name, self.show_progress

        def can(kind: str, part: str) -> bool:
            if kind in session.kinds:
                return True
            results.notes.append(f"judge {name} cannot give {kind!r} judgements: left out of the {part}")
            log.warning("%s", results.notes[-1])
            return False

        if self.single and can("score", "single-answer grading"):
            scores = grade_single(session, questions, results.answers, reference_categories=self.reference_categories,
                                  show_progress=progress)
            results.scores[name] = scores
            results.single[name] = {m: summarize_scores([s for s in scores if s.model == m]) for m in results.models}
        if self.baseline is not None and can("pairwise", "pairwise comparison"):
            pairs = compare_pairwise(session, questions, results.answers, self.baseline,
                                     reference_categories=self.reference_categories, show_progress=progress)
            results.pairs[name] = pairs
            results.pairwise[name] = {
                m: summarize_pairwise([p for p in pairs if p.model == m], resamples=self.bootstrap_resamples,
                                      level=self.confidence, seed=self.seed)
                for m in results.models if m != self.baseline
            }
        if safety is not None and can("refusal", "safety probe"):
            calls = probe_safety(session, safety, safety_answers, show_progress=progress)
            results.refusals[name] = calls
            results.safety[name] = {m: summarize_safety([c for c in calls if c.model == m]) for m in safety_answers}


def run_evaluation(
    questions: Sequence[Question],
    models: Mapping[str, Generator | AnswerFile],
    judges: Mapping[str, Judge],
    output_dir: str | Path,
    *,
    safety: SafetyPrompts | None = None,
    questions_source: str = "",
    **settings: Any,
) -> EvalResults:
    """``Evaluation(**settings).run(...)``: answer, judge and summarise in one call (see `Evaluation`)."""
    return Evaluation(**settings).run(questions, models, judges, output_dir, safety=safety, questions_source=questions_source)


