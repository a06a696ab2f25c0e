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

from tiny_tasks import SYSTEMS, chosen_text, task

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
    rng = random.Random(20231025)
    rows, seen = [], set()
    while len(rows) < 460:
        row = make_row(rng)
        key = json.dumps(row["messages"])
        if key not in seen:
            seen.add(key)
            rows.append(row)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, part in (("train_sft", rows[:400]), ("test_sft", rows[400:])):
        with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in part:
                f.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} dialogues to {OUT}")


if __name__ == "__main__":
    main()
