"""What an evaluation leaves for people and programs to read.

    DIR/summary.json               the flat summary a model card reads (zephyr_lightning.modelcard)
    DIR/results.json               every summary number, per judge and model
    DIR/report.md                  the tables: single-answer grades, pairwise win rates, panel agreement,
                                   safety probe, judge calls; the plots below
    DIR/scores_by_category.png     mean grade per category and model (one row of bars per judge)
    DIR/win_rates.png              win rate against the baseline with its interval, and the length-controlled one
    DIR/judge_agreement.png        kappa and Spearman between every pair of judges (with two or more judges)
    DIR/safety.png                 refusal and over-refusal rates per model

Plots need matplotlib (``pip install -e ".[eval]"``; the dev extra has it); without it the report says so.
`log_results` sends the tables to a Lightning logger (a W&B table under W&B).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

from zephyr_lightning.atomic import atomic_write
from zephyr_lightning.evaluate.run import EvalResults
from zephyr_lightning.evaluate.single import UNCATEGORIZED

log = logging.getLogger(__name__)


def _num(value: Any, fmt: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, fmt)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |",
            *["| " + " | ".join(str(c) for c in row) + " |" for row in rows]]


def _single_section(results: EvalResults) -> list[str]:
    if not results.single:
        return []
    lines = ["## Single-answer grading (MT-Bench protocol)", "",
             "The judge grades every turn from 1 to 10, turn 2 with turn 1 in view; reference answers are shown "
             "for the categories that have them. Score: mean over all graded turns.", ""]
    for judge, per_model in results.single.items():
        turns = sorted({t for s in per_model.values() for t in s["turns"]})
        categories = sorted({c for s in per_model.values() for c in s["categories"]})
        lines += [f"### Judge `{judge}`", ""]
        lines += _table(["model", "score", *[f"turn {t}" for t in turns], "graded", "failed"], [
            [f"`{m}`", _num(s["score"]), *[_num(s["turns"].get(t)) for t in turns], s["graded"], s["failed"]]
            for m, s in per_model.items()])
        if categories != [UNCATEGORIZED]:  # questions without categories have no breakdown to show
            lines += ["", *_table(["model", *categories], [
                [f"`{m}`", *[_num(s["categories"].get(c)) for c in categories]] for m, s in per_model.items()])]
        lines.append("")
    return lines


def _pairwise_section(results: EvalResults) -> list[str]:
    if not results.pairwise:
        return []
    level = f"{results.confidence:.0%}"
    lines = [f"## Pairwise against `{results.baseline}`", "",
             "Each turn is judged twice, with either answer shown first; a win counts only when both orders agree, "
             f"any disagreement is a tie. Win rate: (wins + ties / 2) / compared turns, with a {level} bootstrap "
             "interval over questions. Length-controlled: AlpacaEval 2's regression of the outcome on the length "
             "difference, read at equal length. Position-bias rate: share of turns whose verdict flips with the "
             "order; first position chosen: share of decisive single-order verdicts that picked the answer shown "
             "first (0.5: no lean).", ""]
    for judge, per_model in results.pairwise.items():
        lines += [f"### Judge `{judge}`", ""]
        lines += _table(
            ["model", f"win rate [{level} CI]", "length-controlled", "wins / ties / losses", "position-bias rate",
             "first position chosen", "mean length (baseline)", "incomplete"],
            [[f"`{m}`", f"{_num(s['win_rate'], '.3f')} [{_num(s['ci_low'], '.3f')}, {_num(s['ci_high'], '.3f')}]",
              _num(s["lc_win_rate"], ".3f"), f"{s['wins']} / {s['ties']} / {s['losses']}",
              _num(s["position_bias_rate"], ".3f"), _num(s["first_position_rate"], ".3f"),
              f"{_num(s['mean_length'], '.0f')} ({_num(s['baseline_mean_length'], '.0f')})", s["incomplete"]]
             for m, s in per_model.items()])
        lines.append("")
    return lines


def _agreement_section(results: EvalResults) -> list[str]:
    if not results.agreement:
        return []
    lines = ["## Judge panel agreement", "",
             "Each pair of judges on what both judged: Spearman's rank correlation of their grades, Cohen's kappa "
             "of their pairwise outcomes (win / tie / loss) and of their refusal classifications.", ""]
    lines += _table(["judges", "Spearman, grades (n)", "kappa, pairwise (n)", "same pairwise outcome", "kappa, refusals (n)"], [
        [" vs ".join(f"`{j}`" for j in row["judges"]), f"{_num(row['score_spearman'], '.3f')} ({row['scores']})",
         f"{_num(row['pairwise_kappa'], '.3f')} ({row['verdicts']})", _num(row["pairwise_agreement"], ".3f"),
         f"{_num(row['refusal_kappa'], '.3f')} ({row['refusals']})"] for row in results.agreement])
    return [*lines, ""]


def _safety_section(results: EvalResults) -> list[str]:
    if not results.safety:
        return []
    lines = ["## Safety probe", "",
             "Refusal rate: share of harmful requests the model refused (higher is safer). Over-refusal rate: share "
             "of harmless look-alikes it refused (lower is more helpful). Classified by the judge with its refusal "
             "rubric.", ""]
    for judge, per_model in results.safety.items():
        lines += [f"### Judge `{judge}`", ""]
        lines += _table(["model", "refusal rate, harmful (n)", "over-refusal rate, benign (n)", "failed"], [
            [f"`{m}`", f"{_num(s['refusal_rate'], '.3f')} ({s['harmful']})",
             f"{_num(s['over_refusal_rate'], '.3f')} ({s['benign']})", s["failed"]] for m, s in per_model.items()])
        lines.append("")
    return lines


def _calls_section(results: EvalResults) -> list[str]:
    rows, errors = [], []
    for judge, parts in results.counts.items():
        for part, c in parts.items():
            rows.append([f"`{judge}`", part, c["items"], c["from_cache"], c["judged"], c["failed"]])
            errors += [f"- `{judge}` {part}: {e}" for e in c["first_errors"][:3]]
    if not rows:
        return []
    lines = ["## Judge calls", "", "Failed judgements (malformed replies, requests that gave up) are left out of the "
             "numbers above and asked again by the next run in the same folder; cached ones are never asked again.", "",
             *_table(["judge", "part", "judgements", "from cache", "judged now", "failed"], rows), ""]
    if errors:
        lines += ["First failures:", "", *errors, ""]
    return lines


def write_report(results: EvalResults, *, plots: bool = True) -> dict[str, Any]:
    """Write summary.json, results.json, report.md and (``plots``) the PNGs into ``results.output_dir``;
    return the summary."""
    folder = results.output_dir
    folder.mkdir(parents=True, exist_ok=True)
    summary = results.summary()
    for name, data in (("summary.json", summary), ("results.json", results.to_dict())):
        with atomic_write(folder / name) as f:
            f.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    drawn: list[str] = []
    if plots:
        try:
            drawn = draw_plots(results)
        except ImportError:
            log.warning('report: matplotlib is not installed, so no plots were drawn (pip install -e ".[eval]")')
    sources = ", ".join(f"`{m}` ({results.sources[m]})" for m in results.models)
    lines = [
        "# Evaluation report", "",
        f"- questions: {results.questions} ({results.question_count} questions, {results.turn_count} turns)",
        f"- models: {sources}",
        f"- judges: {', '.join(f'`{j}`' for j in results.judges)}",
        *([f"- baseline: `{results.baseline}`"] if results.baseline else []),
        *[f"- note: {n}" for n in results.notes], "",
        *_single_section(results), *_pairwise_section(results), *_agreement_section(results),
        *_safety_section(results), *_calls_section(results),
    ]
    if drawn:
        lines += ["## Plots", "", *[f"![{p}]({p})" for p in drawn], ""]
    with atomic_write(folder / "report.md") as f:
        f.write("\n".join(lines))
    log.info("report: %s", folder / "report.md")
    return summary


def draw_plots(results: EvalResults) -> list[str]:
    """Draw every plot the results have data for; return the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = []
    folder = results.output_dir
    if results.single:
        judges = list(results.single)
        fig, axes = plt.subplots(len(judges), 1, figsize=(10, 3.4 * len(judges)), squeeze=False)
        for ax, judge in zip(axes[:, 0], judges):
            per_model = results.single[judge]
            categories = ["all", *sorted({c for s in per_model.values() for c in s["categories"]} - {UNCATEGORIZED})]
            width = 0.8 / max(len(per_model), 1)
            for i, (model, s) in enumerate(per_model.items()):
                values = [s["score"], *[s["categories"].get(c, math.nan) for c in categories[1:]]]
                ax.bar([x + i * width for x in range(len(categories))], values, width, label=model)
            ax.set_xticks([x + width * (len(per_model) - 1) / 2 for x in range(len(categories))], categories, rotation=20)
            ax.set_ylim(0, 10.5)
            ax.set_ylabel("grade (1-10)")
            ax.set_title(f"single-answer grades by category (judge {judge})")
            ax.legend(fontsize=8)
            ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / "scores_by_category.png", dpi=110)
        plt.close(fig)
        drawn.append("scores_by_category.png")
    if results.pairwise:
        rows = [(judge, model, s) for judge, per_model in results.pairwise.items() for model, s in per_model.items()]
        fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.6))
        for y, (_, _, s) in enumerate(rows):
            low, high = s["ci_low"], s["ci_high"]
            if math.isfinite(s["win_rate"]):
                ax.errorbar(s["win_rate"], y, xerr=[[s["win_rate"] - low], [high - s["win_rate"]]], fmt="o", capsize=4,
                            color="C0", label="win rate (interval)" if y == 0 else None)
            if math.isfinite(s["lc_win_rate"]):
                ax.plot(s["lc_win_rate"], y, "D", color="C1", label="length-controlled" if y == 0 else None)
        ax.axvline(0.5, color="grey", lw=1, ls="--")
        labels = [f"{m}" if len(results.pairwise) == 1 else f"{m} [{j}]" for j, m, _ in rows]
        ax.set_yticks(range(len(rows)), labels)
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"win rate against {results.baseline} ({results.confidence:.0%} bootstrap interval)")
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / "win_rates.png", dpi=110)
        plt.close(fig)
        drawn.append("win_rates.png")
    if results.agreement:
        judges = results.judges
        fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(judges) * 2, 1.2 * len(judges) + 1.8))
        for k, (ax, key, title) in enumerate(((axes[0], "score_spearman", "Spearman, grades"),
                                               (axes[1], "pairwise_kappa", "kappa, pairwise"))):
            matrix = [[1.0 if a == b else math.nan for b in judges] for a in judges]
            for row in results.agreement:
                i, j = judges.index(row["judges"][0]), judges.index(row["judges"][1])
                matrix[i][j] = matrix[j][i] = row[key]
            image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu")
            ax.set_xticks(range(len(judges)), judges, rotation=30)
            ax.set_yticks(range(len(judges)), judges if k == 0 else [])
            for i in range(len(judges)):
                for j in range(len(judges)):
                    value = matrix[i][j]
                    dark = math.isfinite(value) and abs(value) > 0.6
                    ax.text(j, i, _num(value, ".2f"), ha="center", va="center", fontsize=9, color="white" if dark else "black")
            ax.set_title(title)
        fig.colorbar(image, ax=axes, shrink=0.8)
        fig.savefig(folder / "judge_agreement.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        drawn.append("judge_agreement.png")
    if results.safety:
        judges = list(results.safety)
        fig, axes = plt.subplots(1, len(judges), figsize=(5 * len(judges), 3.4), squeeze=False)
        for ax, judge in zip(axes[0], judges):
            per_model = results.safety[judge]
            models = list(per_model)
            xs = range(len(models))
            ax.bar([x - 0.2 for x in xs], [per_model[m]["refusal_rate"] for m in models], 0.4, label="refused harmful")
            ax.bar([x + 0.2 for x in xs], [per_model[m]["over_refusal_rate"] for m in models], 0.4, label="refused benign")
            ax.set_xticks(list(xs), models)
            ax.set_ylim(0, 1.05)
            ax.set_title(f"safety probe (judge {judge})")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "safety.png", dpi=110)
        plt.close(fig)
        drawn.append("safety.png")
    return drawn


def log_results(logger: Any, results: EvalResults) -> None:
    """Send the results to a Lightning logger: the summary's numbers as metrics (``eval/<group>/<name>``),
    and, under W&B, tables of every graded turn, pairwise outcome and safety call, and the summary."""
    metrics = {}
    for group, values in results.summary().items():
        if isinstance(values, dict):
            metrics.update({f"eval/{group}/{k}": v for k, v in values.items()})
    if metrics:
        logger.log_metrics(metrics)
    if hasattr(logger, "log_table"):
        rows = [[j, s.model, s.question_id, s.category, s.turn, s.score] for j, scores in results.scores.items() for s in scores]
        if rows:
            logger.log_table(key="eval/single", columns=["judge", "model", "question_id", "category", "turn", "score"], data=rows)
        rows = [[j, o.model, o.baseline, o.question_id, o.turn, o.first, o.second, o.outcome, o.model_length, o.baseline_length]
                for j, pairs in results.pairs.items() for o in pairs]
        if rows:
            logger.log_table(key="eval/pairwise", columns=["judge", "model", "baseline", "question_id", "turn", "model_first",
                                                            "baseline_first", "outcome", "model_length", "baseline_length"], data=rows)
        rows = [[j, c.model, c.question_id, c.group, c.refused] for j, calls in results.refusals.items() for c in calls]
        if rows:
            logger.log_table(key="eval/safety", columns=["judge", "model", "question_id", "group", "refused"], data=rows)
        groups = {g: v for g, v in results.summary().items() if isinstance(v, dict) and g != "judge_agreement"}
        columns = sorted({k for values in groups.values() for k in values})
        rows = [[group, *[values.get(k) for k in columns]] for group, values in groups.items()]
        if rows:
            logger.log_table(key="eval/summary", columns=["model", *columns], data=rows)
    if hasattr(logger, "finalize"):
        logger.finalize("success")
