"""Keep API keys out of everything a run writes: logged hyper-parameters, W&B config, config dumps.

Nothing in this project reads a key into its config: W&B reads ``WANDB_API_KEY`` (or ``~/.netrc``)
itself, and a judge reads its key from the environment when it calls the API. These helpers are the
second line: they blank any value whose key looks like a secret (``api_key``, ``token``, ``password``,
...) and any string that contains the value of a secret-looking environment variable, wherever a user
may have put one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REDACTED = "<redacted>"

# A config key is secret when its last part (after the final ".", lower-cased, "-" read as "_") is one
# of these names or ends with "_" + one of them. A bare "_token" suffix is not enough: `pad_token`,
# `eos_token` and `max_new_tokens` are tokenizer settings.
_SECRET_NAMES = (
    "api_key", "apikey", "secret", "secret_key", "client_secret", "password", "passwd", "passphrase",
    "access_token", "auth_token", "refresh_token", "bearer_token", "hf_token", "private_key",
    "secret_access_key", "credentials", "authorization",
)
_SECRET_EXACT = ("token",)
# Environment variables: the usual credential suffixes (WANDB_API_KEY, OPENAI_API_KEY, HF_TOKEN,
# GITHUB_TOKEN, AWS_SECRET_ACCESS_KEY, ...).
_SECRET_ENV = re.compile(r"(^|_)(API_?KEY|TOKEN|SECRET|SECRET_KEY|SECRET_ACCESS_KEY|PASSWORD|PASSWD|PRIVATE_KEY)$")
# `key=value` as in Hydra overrides, alone or joined by commas (Hydra's `override_dirname`).
_ASSIGNMENT = re.compile(r"(?P<key>[\w.\-/@]+)=(?P<value>[^,\s]*)")
_MIN_SECRET_LENGTH = 8  # shorter env values ("1", "true") would blank unrelated text


def is_secret_key(key: str) -> bool:
    """True for config keys that hold credentials (``judge.api_key``, ``hub.token``, ``db.password``)."""
    name = str(key).rsplit(".", 1)[-1].lower().replace("-", "_")
    return name in _SECRET_EXACT or any(name == s or name.endswith("_" + s) for s in _SECRET_NAMES)


def is_secret_env(name: str) -> bool:
    """True for environment variables that hold credentials (``WANDB_API_KEY``, ``HF_TOKEN``, ...)."""
    return bool(_SECRET_ENV.search(name.upper()))


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first."""
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if is_secret_env(k) and len(v) >= _MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with every known secret value blanked, and the value of every ``key=value`` whose key
    looks like a secret (``+judge.api_key=sk-...``, also inside comma-joined override lists)."""
    secrets = secret_env_values() if secrets is None else secrets
    for value in secrets:
        text = text.replace(value, REDACTED)

    def blank(match: re.Match) -> str:
        if is_secret_key(match["key"]) and match["value"] not in ("", "null"):
            return f"{match['key']}={REDACTED}"
        return match[0]

    return _ASSIGNMENT.sub(blank, text)


def redact(value: Any, secrets: list[str] | None = None, *, key: str | None = None) -> Any:
    """A copy of a nested config (dicts, lists, scalars) with secrets blanked (see the module docstring)."""
    secrets = secret_env_values() if secrets is None else secrets
    if key is not None and is_secret_key(key) and value not in (None, "") and not isinstance(value, (Mapping, list, tuple)):
        return REDACTED
    if isinstance(value, Mapping):
        return {k: redact(v, secrets, key=str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, secrets) for v in value)
    if isinstance(value, str):
        return redact_text(value, secrets)
    return value


def contains_secret(value: Any, secrets: list[str] | None = None) -> bool:
    return redact(value, secrets) != value


def redact_yaml_files(folder: str | Path) -> list[Path]:
    """Rewrite each ``*.yaml`` in ``folder`` (e.g. Hydra's ``.hydra/``) with secrets blanked; returns the
    files changed. Interpolations such as ``${oc.env:OPENAI_API_KEY}`` are kept: they name a variable,
    not its value."""
    from omegaconf import OmegaConf

    changed = []
    secrets = secret_env_values()
    for file in sorted(Path(folder).glob("*.yaml")):
        data = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
        clean = redact(data, secrets)
        if clean != data:
            OmegaConf.save(OmegaConf.create(clean), file)
            changed.append(file)
    return changed
