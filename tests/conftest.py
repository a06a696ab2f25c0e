from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# train.py lives at the repository root; tests import its `train` function.
sys.path.insert(0, str(ROOT))

# Nothing in the suite may reach a hub: fail fast instead of hanging on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    # Tests write nothing to W&B and never reach for a server.
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(autouse=True, scope="session")
def _datasets_cache(tmp_path_factory):
    # A private datasets cache, so tests neither read stale entries nor litter the user's cache.
    path = tmp_path_factory.mktemp("hf_datasets_cache")
    old = os.environ.get("HF_DATASETS_CACHE")
    os.environ["HF_DATASETS_CACHE"] = str(path)
    import datasets.config

    datasets.config.HF_DATASETS_CACHE = path
    yield
    if old is None:
        os.environ.pop("HF_DATASETS_CACHE", None)


@pytest.fixture(scope="session")
def tokenizer():
    from zephyr_lightning.models import load_tokenizer

    return load_tokenizer("builtin:tiny-mistral")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """The embedded tiny Mistral saved with save_pretrained, as a user's local model folder."""
    from zephyr_lightning.models import build_tiny_mistral

    path = tmp_path_factory.mktemp("tiny_model")
    build_tiny_mistral(seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def hub_names_unchecked(monkeypatch):
    """Validate a recipe that names hub models as on a machine with network access: they are not cached
    here, and offline (as the suite runs) validation would rightly refuse them. Nothing is downloaded:
    online, validation leaves hub names to loading."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
