"""Small builders shared by tests."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def pref_row(prompt: str, chosen: str, rejected: str, prompt_id: str | None = None, system: str | None = None) -> dict:
    head = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return {
        "prompt": prompt,
        "prompt_id": prompt_id or hashlib.sha256(prompt.encode()).hexdigest()[:16],
        "chosen": head + [{"role": "assistant", "content": chosen}],
        "rejected": copy.deepcopy(head) + [{"role": "assistant", "content": rejected}],
        "score_chosen": 9.0,
        "score_rejected": 2.0,
    }


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: list[str], output_dir: Path):
    """The real configs, composed as `python train.py <overrides>` would, writing under output_dir."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])
