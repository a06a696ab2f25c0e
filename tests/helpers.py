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


def capture_fitted(monkeypatch) -> dict:
    """Make `Trainer.fit` record the LightningModule it fits: ``captured["module"]`` (the last one), for the
    rest of the test."""
    import lightning as L

    captured: dict = {}
    original = L.Trainer.fit

    def spy(self, model, *args, **kwargs):
        captured["module"] = model
        return original(self, model, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "fit", spy)
    return captured


def compose(overrides: list[str], output_dir: Path):
    """The real configs, composed as `python train.py <overrides>` would, writing under output_dir."""
    from zephyr_lightning.cli.configs import compose as compose_config

    return compose_config("train", [*overrides, f"paths.output_dir={output_dir}"], config_dir=CONF_DIR)
