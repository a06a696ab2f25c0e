"""Question/answer tasks with programmatically known answers, shared by the embedded data generators."""

from __future__ import annotations

import random

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


def write_unique_rows(out, make_row, key, total: int, splits: dict[str, int]) -> None:
    """Draw rows (seeded like the Zephyr paper's arXiv date) until ``total`` distinct ``key(row)``s,
    then write the first ``splits[name]`` rows to ``out/<name>.jsonl``, the next ones to the next split."""
    import json

    rng = random.Random(20231025)
    rows, seen = [], set()
    while len(rows) < total:
        row = make_row(rng)
        if key(row) not in seen:
            seen.add(key(row))
            rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    for name, count in splits.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows[start : start + count]:
                f.write(json.dumps(row) + "\n")
        start += count
    print(f"wrote {len(rows)} rows to {out}")
