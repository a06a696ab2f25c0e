"""The Mini-Zephyr teacher: writes the dSFT dialogues and the prompt sets of one run.

In the paper a stronger model (GPT-3.5) writes UltraChat's dialogues and the student imitates them,
mistakes included. This teacher always computes the right answer, but like a chatty assistant it
sometimes ignores the requested format (``format_slip``: "Sure! The answer is 85." when asked for
JSON). Imitation copies that habit into the dSFT model; only a judge that checks the
format can tell the student it is unwanted.

Files (all with ``prompt`` and ``prompt_id`` = sha256 of the prompt):

    DIR/train_sft.jsonl, DIR/test_sft.jsonl   dialogues, HuggingFaceH4/ultrachat_200k schema (+ messages)
    DIR/aif_prompts.jsonl                     prompts the AIF stage generates completions for
    DIR/eval_prompts.jsonl                    held-out prompts both models are judged on

The four sets have no prompt in common. The evaluation prompts depend only on ``eval_seed``, so runs
with different seeds are judged on the same prompts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from recipes.mini_zephyr.tasks import STYLES, Task, TaskFamily, sample_tasks
from zephyr_lightning.aif.io import write_jsonl_atomic
from zephyr_lightning.data.chat import validate_messages
from zephyr_lightning.data.sources import prompt_id_of

# One habitual preamble, as chat models have: when the teacher slips, it always slips the same way.
CHATTY = "Sure! The answer is {answer}."


def slip_rates(format_slip: float | Mapping[str, float]) -> dict[str, float]:
    """Per answer style, how often the teacher ignores the requested format (one rate for all, or per style)."""
    rates = {s: float(format_slip) for s in STYLES} if isinstance(format_slip, (int, float)) else {
        s: float(format_slip.get(s, 0.0)) for s in STYLES
    }
    unknown = set(format_slip) - set(STYLES) if isinstance(format_slip, Mapping) else set()
    if unknown or not all(0.0 <= r <= 1.0 for r in rates.values()):
        raise ValueError(f"teacher.format_slip must be in [0, 1], alone or per style of {list(STYLES)}; got {format_slip}")
    return rates


def teacher_reply(task: Task, rng: random.Random, format_slip: float) -> str:
    """The teacher's answer: always correct; in the requested format unless it slips into chat."""
    if rng.random() < format_slip:
        return CHATTY.format(answer=task.answer)
    return task.formatted()


def dialogue_row(task: Task, reply: str) -> dict:
    prompt = task.prompt
    messages = validate_messages(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
        where=f"teacher prompt {prompt[:60]!r}",
        final_assistant=True,
    )
    return {"prompt": prompt, "prompt_id": prompt_id_of(prompt), "messages": messages}


def prompt_row(task: Task) -> dict:
    return {"prompt": task.prompt, "prompt_id": prompt_id_of(task.prompt)}


@dataclass
class TeacherSummary:
    train_sft: int
    test_sft: int
    aif_prompts: int
    eval_prompts: int
    format_slips: int

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def write_teacher_data(
    output_dir: str | Path,
    family: TaskFamily,
    *,
    seed: int,
    num_train: int = 2000,
    num_test: int = 100,
    num_aif_prompts: int = 500,
    num_eval_prompts: int = 200,
    eval_seed: int = 1234,
    format_slip: float | Mapping[str, float] = 0.2,
) -> TeacherSummary:
    """Write one run's dialogues and prompt sets (see the module docstring) into ``output_dir``.

    ``format_slip``: how often the teacher ignores the requested format, one rate or per style
    (``{"json": 0.6, "plain": 0.1}``; styles not named never slip).
    """
    rates = slip_rates(format_slip)
    for name, n in (("num_train", num_train), ("num_aif_prompts", num_aif_prompts), ("num_eval_prompts", num_eval_prompts)):
        if n < 1:
            raise ValueError(f"teacher.{name} must be >= 1, got {n}")
    out = Path(output_dir)
    eval_tasks = sample_tasks(family, num_eval_prompts, eval_seed)
    taken = {t.prompt for t in eval_tasks}
    rest = sample_tasks(family, num_train + num_test + num_aif_prompts, seed, exclude=taken)
    train, test, aif = rest[:num_train], rest[num_train : num_train + num_test], rest[num_train + num_test :]
    # A stream of its own: the slips do not shift which tasks are drawn.
    slips = random.Random(json.dumps(["teacher", seed]))
    rows = {"train_sft": [], "test_sft": []}
    slipped = 0
    for split, tasks in (("train_sft", train), ("test_sft", test)):
        for task in tasks:
            reply = teacher_reply(task, slips, rates[task.style])
            slipped += reply != task.formatted()
            rows[split].append(dialogue_row(task, reply))
    write_jsonl_atomic(out / "train_sft.jsonl", rows["train_sft"])
    write_jsonl_atomic(out / "test_sft.jsonl", rows["test_sft"])
    write_jsonl_atomic(out / "aif_prompts.jsonl", [prompt_row(t) for t in aif])
    write_jsonl_atomic(out / "eval_prompts.jsonl", [prompt_row(t) for t in eval_tasks])
    return TeacherSummary(len(train), len(test), len(aif), len(eval_tasks), slipped)
