"""Push a finished export folder to the Hugging Face Hub, through ``huggingface_hub``.

The token comes from the environment only (``HF_TOKEN``): it is handed to ``huggingface_hub``, which sends
it as the ``Authorization`` header, and is never written to a file, a log line or a config
(`zephyr_lightning.secrets` blanks its value wherever it might appear). ``HF_ENDPOINT`` points the push
at another Hub (a private deployment, or a test server).

A push is refused before any work starts when it cannot succeed (no token, ``HF_HUB_OFFLINE=1``); a push
that fails half-way leaves the local folder as it was and names the command that retries it.
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path
from typing import Annotated

from zephyr_lightning.arguments import Field
from zephyr_lightning.secrets import redact_text

log = logging.getLogger(__name__)

TOKEN_ENV = "HF_TOKEN"

# A Hub model repository: namespace (user or organisation) and name. The Hub's finer rules (no "--" or
# "..", 96 characters at most) are checked by huggingface_hub itself when the push starts.
HubRepoId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", max_length=96)]


class HubPushError(RuntimeError):
    """A push that cannot start, or that failed; the message says what to do next."""


def push_refusal() -> str | None:
    """Why a push would fail before it starts (no token, offline mode), or None when it can go ahead."""
    if not os.environ.get(TOKEN_ENV):
        return (
            f"pushing to the Hugging Face Hub needs a token in the {TOKEN_ENV} environment variable "
            f"(a write token from https://huggingface.co/settings/tokens: `export {TOKEN_ENV}=hf_...`); "
            "it is read from the environment only, never from a config or the command line"
        )
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "pushing to the Hugging Face Hub is impossible with HF_HUB_OFFLINE=1 set; unset it for the push"
    return None


def retry_command(folder: str | Path, repo_id: str, *, private: bool | None = None, revision: str | None = None) -> str:
    """The command that pushes ``folder`` again, as it is (nothing is re-exported)."""
    parts = ["python", "-m", "zephyr_lightning.export", str(folder), "--push-to-hub", repo_id]
    if private:
        parts.append("--private")
    if revision:
        parts += ["--revision", revision]
    return " ".join(shlex.quote(p) for p in parts)


def push_folder(
    folder: str | Path,
    repo_id: HubRepoId,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Create ``repo_id`` if needed (``private`` applies to a new repo only), create the branch ``revision``
    if needed, upload every file of ``folder`` in one commit; return the commit's URL.

    Raises `HubPushError` naming the retry command when anything fails; the local folder is never touched.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    refusal = push_refusal()
    if refusal:
        raise HubPushError(refusal)
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None  # read now, not at import
    api = HfApi(endpoint=endpoint, token=os.environ[TOKEN_ENV], library_name="zephyr-lightning")
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            commit_message=commit_message or f"Upload {folder.name} with zephyr-lightning",
        )
    except Exception as error:  # network, HTTP and server errors of every kind end the same way
        raise HubPushError(
            f"push of {folder} to {repo_id} failed: {redact_text(f'{type(error).__name__}: {error}')}\n"
            f"The export is complete and kept at {folder}. Retry with {TOKEN_ENV} set:\n"
            f"  {retry_command(folder, repo_id, private=private, revision=revision)}"
        ) from None
    url = str(getattr(info, "commit_url", info))
    log.info("pushed %s to the Hub: %s", folder, url)
    return url
