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

OUT = Path(__file__).resolve().parent.parent / "zephyr_lightning" / "assets" / "tiny_prefs"

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
    "Poland": "Warsaw", "Greece": "Athens", "Chile": "Santiago", "Cuba": "Havana", "Ireland": "Dublin",
    "Portugal": "Lisbon", "Austria": "Vienna", "Sweden": "Stockholm", "Finland": "Helsinki", "India": "New Delhi",
}
COLOURS = {"grass": "green", "the sky on a clear day": "blue", "snow": "white", "a ripe banana": "yellow",
           "coal": "black", "a ripe tomato": "red", "an orange": "orange", "a lemon": "yellow"}
OPPOSITES = {"hot": "cold", "up": "down", "early": "late", "happy": "sad", "fast": "slow", "light": "dark",
             "open": "closed", "full": "empty", "big": "small", "old": "new"}
SYSTEMS = ["You are a helpful assistant.", "You are a friendly tutor.", "Answer briefly and kindly."]


def task(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(5)
    if kind == 0:
        country = rng.choice(list(CAPITALS))
        return f"What is the capital of {country}?", f"The capital of {country} is {CAPITALS[country]}."
    if kind == 1:
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        return f"What is {a} plus {b}?", f"{a} plus {b} equals {a + b}."
    if kind == 2:
        thing = rng.choice(list(COLOURS))
        return f"What colour is {thing}?", f"{thing[0].upper() + thing[1:]} is {COLOURS[thing]}."
    if kind == 3:
        word = rng.choice(list(OPPOSITES))
        return f"What is the opposite of '{word}'?", f"The opposite of '{word}' is '{OPPOSITES[word]}'."
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return f"How much is {a} times {b}?", f"{a} times {b} is {a * b}."


def chosen_text(answer: str, rng: random.Random) -> str:
    opener = rng.choice(["Sure!", "Of course!", "Happy to help!", "Great question!"])
    closer = rng.choice(["I hope this helps.", "Let me know if you have more questions.", "Glad to help."])
    return f"{opener} {answer} {closer}"


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
    rng = random.Random(20231025)  # the Zephyr paper's arXiv date
    rows, seen = [], set()
    while len(rows) < 480:
        row = make_row(rng)
        key = json.dumps(row["chosen"][:-1])
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, part in (("train_prefs", rows[:400]), ("test_prefs", rows[400:])):
        with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in part:
                f.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
