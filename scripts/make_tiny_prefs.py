"""Generate the embedded preference data set `zephyr_lightning/assets/tiny_prefs/`.

Rows follow the HuggingFaceH4/ultrafeedback_binarized schema. Prompts are templated questions with a
programmatically known answer; the chosen completion is a correct, polite answer, the rejected one is
unhelpful (a refusal, an evasive reply or a wrong answer). The preference is therefore learnable by a
tiny model within a minute, which is all the embedded default is for: exercising the real code path.

    python scripts/make_tiny_prefs.py            # rewrites the two files deterministically
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from tiny_tasks import SYSTEMS, chosen_text, task, write_unique_rows

OUT = Path(__file__).resolve().parent.parent / "zephyr_lightning" / "assets" / "tiny_prefs"

def rejected_text(question: str, answer: str, rng: random.Random) -> str:
    style = rng.randrange(3)
    if style == 0:
        return rng.choice(["I don't know.", "No idea, sorry.", "I can't answer that."])
    if style == 1:
        return rng.choice(["Why do you want to know?", "Figure it out yourself.", "That is not my problem."])
    # A wrong answer: the right sentence with its last number or word swapped for a wrong one.
    words = answer.rstrip(".").split()
    words[-1] = rng.choice(["42", "purple", "Sydney", "maybe", "seven"])
    return " ".join(words) + "."


def make_row(rng: random.Random) -> dict:
    question, answer = task(rng)
    messages = []
    if rng.random() < 0.25:
        messages.append({"role": "system", "content": rng.choice(SYSTEMS)})
    if rng.random() < 0.2:  # a multi-turn prompt: an earlier exchange before the question
        q0, a0 = task(rng)
        messages += [{"role": "user", "content": q0}, {"role": "assistant", "content": chosen_text(a0, rng)}]
    messages.append({"role": "user", "content": question})
    chosen = messages + [{"role": "assistant", "content": chosen_text(answer, rng)}]
    rejected = messages + [{"role": "assistant", "content": rejected_text(question, answer, rng)}]
    return {
        "prompt": question,
        "prompt_id": hashlib.sha256(question.encode()).hexdigest(),
        "chosen": chosen,
        "rejected": rejected,
        "messages": chosen,
        "score_chosen": float(rng.choice([8, 9, 10])),
        "score_rejected": float(rng.choice([1, 2, 3])),
    }


def main() -> None:
    write_unique_rows(OUT, make_row, lambda row: json.dumps(row["chosen"][:-1]), total=480, splits={"train_prefs": 400, "test_prefs": 80})

if __name__ == "__main__":
    main()
