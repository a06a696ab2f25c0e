"""A small client for OpenAI-compatible HTTP servers (OpenAI, vLLM, TGI, llama.cpp, ...).

Shared by the chat-completions judge and the server generator: bounded concurrency, retries with
exponential backoff and jitter on 429 / 5xx / timeouts / dropped connections (a server's
``Retry-After`` is respected), and an API key read from an environment variable whose *name* is
configured. The key lives only in the request headers: it is never stored on the object, logged, or
put into an error message (texts that come back from the server are scrubbed of it too).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

T = TypeVar("T")


class RequestError(RuntimeError):
    """One request failed for good (retries exhausted, or an error that retrying cannot fix, like a
    400 for a too-long prompt). The caller marks that item failed and goes on."""


class FatalRequestError(RuntimeError):
    """An error that every request would hit (bad key, wrong URL or model): the run stops."""


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter: attempt ``k`` (from 0) waits ``base * 2**k`` capped at
    ``max_delay``, scaled by a random factor in [0.5, 1] so that clients rate-limited together do not
    retry together. A ``Retry-After`` from the server replaces the computed wait (capped at
    ``max_retry_after``)."""

    max_retries: int = 6
    backoff_base: float = 1.0
    max_delay: float = 60.0
    max_retry_after: float = 600.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        cap = min(self.max_delay, self.backoff_base * (2**attempt))
        return cap * random.uniform(0.5, 1.0)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` is seconds or an HTTP date; anything unparseable is ignored."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, also inside a running event loop
    (a notebook), where `asyncio.run` is not allowed: then it runs on a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


class OpenAICompatibleClient:
    """POST JSON to ``{base_url}/{path}`` for many payloads at once, at most ``concurrency`` in flight.

    Args:
        base_url: the API root, e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1``.
        api_key_env: name of the environment variable holding the key. Unset or empty: requests go
            without an ``Authorization`` header (a local vLLM server needs none).
        concurrency: requests in flight at once.
        timeout: seconds for one request (connect, read and write each).
        retry: backoff policy for 429, 5xx, timeouts and connection errors.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/") + "/"
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._warned_no_key = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    def _key(self) -> str | None:
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None

    def _scrub(self, text: str) -> str:
        key = self._key()
        return text.replace(key, "***") if key else text

    def _headers(self) -> dict[str, str]:
        key = self._key()
        if key is None:
            if not self._warned_no_key:
                log.info("%s: no API key in $%s; sending requests without one", self.base_url, self.api_key_env)
                self._warned_no_key = True
            return {}
        return {"Authorization": f"Bearer {key}"}

    async def _post(self, client: httpx.AsyncClient, gate: asyncio.Semaphore, path: str, payload: dict) -> dict:
        import httpx

        url = self.base_url + path
        reason = ""
        for attempt in range(self.retry.max_retries + 1):
            retry_after = None
            try:
                async with gate:
                    response = await client.post(path, json=payload)
            except httpx.TimeoutException:
                reason = f"timed out after {self.timeout:g}s"
            except httpx.TransportError as err:
                reason = f"connection error ({type(err).__name__})"
            else:
                status = response.status_code
                if status == 200:
                    try:
                        body = response.json()
                    except ValueError:
                        raise RequestError(f"{url}: the reply is not JSON: {self._scrub(response.text[:200])!r}") from None
                    if not isinstance(body, dict):
                        raise RequestError(f"{url}: expected a JSON object, got {type(body).__name__}")
                    return body
                detail = self._scrub(response.text[:300])
                if status == 429 or status >= 500:
                    reason = f"HTTP {status}"
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                elif status in (401, 403):
                    raise FatalRequestError(
                        f"{url}: HTTP {status} ({detail}); check the API key in the environment variable "
                        f"${self.api_key_env} (api_key_env)"
                    )
                elif status == 404:
                    raise FatalRequestError(f"{url}: HTTP 404 ({detail}); check base_url and the model name")
                else:
                    raise RequestError(f"{url}: HTTP {status}: {detail}")
            if attempt == self.retry.max_retries:
                break
            wait = self.retry.delay(attempt, retry_after)
            log.debug("%s: %s; retry %d/%d in %.2fs", url, reason, attempt + 1, self.retry.max_retries, wait)
            await asyncio.sleep(wait)
        raise RequestError(f"{url}: gave up after {self.retry.max_retries + 1} attempts (last: {reason})")

    async def _post_all(
        self,
        requests: Sequence[tuple[str, dict]],
        on_done: Callable[[int, dict | RequestError], None] | None,
    ) -> list[dict | RequestError]:
        import httpx

        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers(), timeout=self.timeout, limits=limits
        ) as client:
            gate = asyncio.Semaphore(self.concurrency)

            async def one(index: int, path: str, payload: dict) -> dict | RequestError:
                try:
                    result: dict | RequestError = await self._post(client, gate, path, payload)
                except RequestError as err:
                    result = err
                if on_done is not None:
                    on_done(index, result)
                return result

            tasks = [asyncio.ensure_future(one(i, path, payload)) for i, (path, payload) in enumerate(requests)]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                # A fatal error (or Ctrl-C): stop the requests still in flight before the client closes.
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    def post_all(
        self,
        requests: Sequence[tuple[str, dict]],
        on_done: Callable[[int, dict | RequestError], None] | None = None,
    ) -> list[dict | RequestError]:
        """Send ``(path, payload)`` requests concurrently; return each reply's JSON, or the
        `RequestError` of the ones that failed, in order. ``on_done(index, result)`` is called as each
        finishes (on the calling thread's event loop), so results can be saved as they arrive.
        A `FatalRequestError` stops everything and is raised."""
        if not requests:
            return []
        return run_coroutine(self._post_all(requests, on_done))


def chat_content(reply: dict, index: int = 0) -> str:
    """The text of choice ``index`` of a chat-completions reply; a malformed reply is a RequestError."""
    try:
        content = reply["choices"][index]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise RequestError(f"malformed chat-completions reply (no choices[{index}].message.content)") from None
    if not isinstance(content, str):
        raise RequestError(f"chat-completions reply: content is {type(content).__name__}, not text")
    return content
