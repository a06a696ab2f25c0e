"""Generate the embedded dialogue data set `zephyr_lightning/assets/tiny_chat/`.

Rows follow the HuggingFaceH4/ultrachat_200k schema (`prompt`, `prompt_id`, `messages`). Each dialogue
has one to three user questions with programmatically known answers (the same task families as
tiny_prefs), each answered politely and correctly by a scripted "teacher". A tiny model learns the
format and part of the content in a minute, enough to see `val/loss` fall on the embedded default.

    python scripts/make_tiny_chat.py            # rewrites the two files deterministically
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from tiny_tasks import SYSTEMS, chosen_text, task, write_unique_rows

OUT = Path(__file__).resolve().parent.parent / "zephyr_lightning" / "assets" / "tiny_chat"


def make_row(rng: random.Random) -> dict:
    messages = []
    if rng.random() < 0.25:
        messages.append({"role": "system", "content": rng.choice(SYSTEMS)})
    for _ in range(rng.choice([1, 1, 2, 3])):
        question, answer = task(rng)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": chosen_text(answer, rng)}]
    prompt = next(m["content"] for m in messages if m["role"] == "user")
    return {"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(), "messages": messages}


def main() -> None:
    write_unique_rows(OUT, make_row, lambda row: json.dumps(row["messages"]), total=460, splits={"train_sft": 400, "test_sft": 60})

if __name__ == "__main__":
    main()
