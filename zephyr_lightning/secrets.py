"""Keep API keys out of everything a run writes: logged hyper-parameters, W&B config, config dumps.

Nothing in this project reads a key into its config: W&B reads ``WANDB_API_KEY`` (or ``~/.netrc``)
itself, and a judge reads its key from the environment when it calls the API. These helpers are the
second line: they blank any value whose key looks like a secret (``api_key``, ``token``, ``password``,
...), as ``key=value`` or ``key: value`` in text too, and any string that contains a known secret value:
the value of a secret-looking environment variable, or a value the command line put under a secret key
(`register_secret_values`, which the commands call with `override_secret_values` of their overrides, so
that ``'+extra={api_key: sk-..., password: ...}'`` is blanked wherever its values turn up).

The commands (``zephyr_lightning.cli``) apply all of this to every file and stream a run writes;
library code that writes text of its own (model cards, push errors) calls `redact_text` / `redact`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
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
# `key=value` as in Hydra overrides, alone or joined by commas (Hydra's `override_dirname`), and
# `key: value` as in YAML, Python reprs and Hydra's dict literals (`{api_key: sk-1, "password": "x y"}`).
# A value is quoted, or runs to the next separator of those syntaxes.
_ASSIGNMENT = re.compile(
    r"(?P<key>[\w.\-/@]+)(?P<sep>['\"]?\s*[:=]\s*)"
    r"(?P<value>'[^']*'|\"[^\"]*\"|\$\{[^}]*\}|[^,\s{}\[\]()'\"]*)"
)
_MIN_SECRET_LENGTH = 8  # shorter env values ("1", "true") would blank unrelated text
# A value the command line put under a secret key is blanked everywhere (not only beside its key) from
# this length on; shorter ones only beside their key, or they would blank unrelated text.
_MIN_REGISTERED_LENGTH = 4
_registered: set[str] = set()


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


def register_secret_values(values: Iterable[str]) -> None:
    """Blank these values, from now on, wherever this process's redaction runs (every `redact_text` /
    `redact` call that is not given its own list)."""
    _registered.update(v for v in values if len(v) >= _MIN_REGISTERED_LENGTH)


def known_secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values blanked by default: secret-looking environment variables and registered values,
    longest first (so that a secret containing another is blanked whole)."""
    return sorted(set(secret_env_values(environ)) | _registered, key=len, reverse=True)


def _secret_leaves(value: Any, key: str, out: list[str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _secret_leaves(v, f"{key}.{k}", out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _secret_leaves(v, key, out)
    elif is_secret_key(key) and value is not None and not isinstance(value, bool):
        text = str(value)
        if text and not (text.startswith("${") and text.endswith("}")):  # an interpolation names, not holds
            out.append(text)


def override_secret_values(overrides: Iterable[str]) -> list[str]:
    """The values that Hydra command-line overrides put under secret keys, however nested:
    ``+judge.api_key=sk-1`` -> ``sk-1``; ``'+extra={api_key: sk-2, db: {password: "p w"}}'`` -> ``sk-2``,
    ``p w``; the options of a sweep (``judge.api_key=choice(a,b)``) too. Overrides Hydra cannot parse are
    left to the ``key=value`` pattern of `redact_text`. Needs Hydra (the commands call it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    found: list[str] = []
    for text in overrides:
        try:
            override = parser.parse_override(text)
            value = override.value()
        except Exception:  # not an override (a flag such as --multirun), or one Hydra will refuse itself
            continue
        options = getattr(value, "list", None) if override.is_sweep_override() else None
        _secret_leaves(options if options is not None else value, override.key_or_group, found)
    return found


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with every known secret value blanked (see `known_secret_values`), and the value of
    every ``key=value`` or ``key: value`` whose key looks like a secret (``+judge.api_key=sk-...``, also
    inside comma-joined override lists and dict literals)."""
    secrets = known_secret_values() if secrets is None else secrets
    for value in secrets:
        text = text.replace(value, REDACTED)

    def blank(match: re.Match) -> str:
        value = match["value"].strip("'\"")
        if is_secret_key(match["key"]) and value not in ("", "null", "None", REDACTED) and not value.startswith("${"):
            return f"{match['key']}{match['sep']}{REDACTED}"
        return match[0]

    return _ASSIGNMENT.sub(blank, text)


def redact(value: Any, secrets: list[str] | None = None, *, key: str | None = None) -> Any:
    """A copy of a nested config (dicts, lists, scalars) with secrets blanked (see the module docstring)."""
    secrets = known_secret_values() if secrets is None else secrets
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
    secrets = known_secret_values()
    for file in sorted(Path(folder).glob("*.yaml")):
        data = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
        clean = redact(data, secrets)
        if clean != data:
            OmegaConf.save(OmegaConf.create(clean), file)
            changed.append(file)
    return changed
