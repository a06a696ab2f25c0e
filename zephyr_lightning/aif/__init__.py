"""AI feedback (AIF), the middle stage of the Zephyr recipe: generate completions, judge them,
binarize them into preference pairs.

    python -m zephyr_lightning.aif                    # all three steps on the embedded default
    python -m zephyr_lightning.aif step=judge judge=openai judge.model=gpt-4o hydra.run.dir=DIR

The command composes `conf/aif/` with Hydra; everything here takes plain Python arguments and works
without Hydra.

Each step sits beside its backends: `generate` (the step) | `generators` (local model, OpenAI-compatible
server), `judge` (the step, its cache) | `judges` (OpenAI-compatible rubric judge, reward model, Python
function), then `binarize`. `client` drives the official ``openai`` client; `rubric` holds the rubric and
the declared rating model; `grading` the evaluation stage's judgement kinds (a 1-10 score, a pairwise
verdict, refusal) with their prompts and declared replies; `io` the resumable JSONL files. Rows come through `zephyr_lightning.data.sources`.
"""

from zephyr_lightning.aif.binarize import (
    REJECTED_STRATEGIES,
    BinarizeSummary,
    binarize,
    binarize_row,
    binarize_rows,
)
from zephyr_lightning.aif.client import FatalRequestError, OpenAICompatibleClient, RequestError
from zephyr_lightning.aif.generate import GenerateSummary, generate_completions
from zephyr_lightning.aif.generators import Conversation, Generator, LocalGenerator, OpenAIChatGenerator
from zephyr_lightning.aif.grading import GRADING_KINDS, PAIRWISE_VERDICTS, SCORE_RANGE
from zephyr_lightning.aif.io import CorruptJsonlError, JsonlWriter, read_done
from zephyr_lightning.aif.judge import JudgementCache, JudgeSummary, ask_judge, item_key, judge_completions
from zephyr_lightning.aif.judges import (
    JUDGEMENT_KINDS,
    CallableJudge,
    Judge,
    JudgeItem,
    Judgement,
    JudgementKind,
    OpenAIJudge,
    RewardModelJudge,
    heuristic_refusal,
    heuristic_score,
)
from zephyr_lightning.aif.prompts import Prompt, PromptSet, load_prompt_set, load_prompts
from zephyr_lightning.aif.rubric import ASPECTS, DEFAULT_RUBRIC, ScoreParseError, parse_ratings, ratings_model

__all__ = [
    "ASPECTS",
    "GRADING_KINDS",
    "JUDGEMENT_KINDS",
    "PAIRWISE_VERDICTS",
    "SCORE_RANGE",
    "Conversation",
    "JudgementKind",
    "ask_judge",
    "heuristic_refusal",
    "item_key",
    "DEFAULT_RUBRIC",
    "REJECTED_STRATEGIES",
    "BinarizeSummary",
    "CallableJudge",
    "CorruptJsonlError",
    "FatalRequestError",
    "GenerateSummary",
    "Generator",
    "Judge",
    "JudgeItem",
    "JudgeSummary",
    "Judgement",
    "JudgementCache",
    "JsonlWriter",
    "LocalGenerator",
    "OpenAIChatGenerator",
    "OpenAICompatibleClient",
    "OpenAIJudge",
    "Prompt",
    "PromptSet",
    "RequestError",
    "RewardModelJudge",
    "ScoreParseError",
    "binarize",
    "binarize_row",
    "binarize_rows",
    "generate_completions",
    "heuristic_score",
    "judge_completions",
    "load_prompt_set",
    "load_prompts",
    "parse_ratings",
    "ratings_model",
    "read_done",
]
