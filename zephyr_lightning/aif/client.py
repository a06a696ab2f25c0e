"""Many chat-completions requests at once through the official ``openai`` client, against OpenAI or
any OpenAI-compatible server (vLLM, TGI, llama.cpp, ...) by ``base_url``.

The SDK does each request's retries: 408 / 409 / 429 / 5xx, timeouts and dropped connections are
retried ``max_retries`` times with jittered exponential backoff, or after the server's ``Retry-After``;
``timeout`` bounds each attempt. This module adds what a judge or generator of thousands of items
needs around it:

- at most ``concurrency`` requests in flight (a request waiting to retry keeps its slot, so a server
  that rate-limits sees fewer requests, not more);
- each reply handed to ``on_done`` as it arrives, so that it can be saved at once (caches, shards);
- one item's failure as a `RequestError` (that item is counted as failed and the run goes on), and an
  error that every request would hit (401, 403, 404) as a `FatalRequestError` that stops the run;
- the API key read from the environment variable whose *name* is configured. The key lives only in
  the SDK client of one call and its request headers: it is never stored on our objects, logged, or put
  into an error message (texts that come back from the server are scrubbed of it too).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import AfterValidator

from zephyr_lightning.arguments import NonNegativeInt, Positive, PositiveInt, check_arguments

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletion

log = logging.getLogger(__name__)

T = TypeVar("T")


def _http_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return url


# The declared type of a ``base_url`` argument: an http(s) API root.
HttpUrl = Annotated[str, AfterValidator(_http_url)]


class RequestError(RuntimeError):
    """One request failed for good (retries exhausted, or an error that retrying cannot fix, like a
    400 for a too-long prompt). The caller marks that item failed and goes on."""


class FatalRequestError(RuntimeError):
    """An error that every request would hit (bad key, wrong URL or model): the run stops."""


def quiet_http_logs() -> None:
    """Keep the HTTP libraries under the client at WARNING: one line per request (and per retry) at INFO
    would drown a command's log. The openai client logs through httpx (or httpx2, in its newer releases)."""
    for noisy in ("httpx", "httpx2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
    """Send many chat-completions requests with the ``openai`` SDK, at most ``concurrency`` in flight.

    Args:
        base_url: the API root, e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1``.
        api_key_env: name of the environment variable holding the key. Unset or empty: requests go
            without an ``Authorization`` header (a local vLLM server needs none).
        concurrency: requests in flight at once.
        timeout: seconds for one attempt of one request (connect, read and write each).
        max_retries: retries of one request after its first attempt (the SDK's backoff between them).
    """

    def __init__(
        self,
        base_url: HttpUrl,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        concurrency: PositiveInt = 8,
        timeout: Positive = 60.0,
        max_retries: NonNegativeInt = 6,
    ) -> None:
        check_arguments(OpenAICompatibleClient, locals())
        self.base_url = base_url.rstrip("/") + "/"
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self._warned_no_key = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    @property
    def url(self) -> str:
        """The endpoint every request goes to, as errors name it."""
        return self.base_url + "chat/completions"

    def _key(self) -> str | None:
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None

    def _scrub(self, text: str) -> str:
        key = self._key()
        return text.replace(key, "***") if key else text

    def _sdk_client(self) -> tuple[openai.AsyncOpenAI, dict[str, Any]]:
        """A fresh SDK client (bound to the running event loop) and the headers each request adds."""
        import openai

        key = self._key()
        if key is None and not self._warned_no_key:
            log.info("%s: no API key in $%s; sending requests without one", self.base_url, self.api_key_env)
            self._warned_no_key = True
        client = openai.AsyncOpenAI(
            # Given explicitly, so that the SDK reads neither OPENAI_API_KEY nor OPENAI_BASE_URL on its own.
            # Without a key the SDK still wants a non-empty one; the header it would make is omitted below.
            api_key=key or "no-key",
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
        )
        headers = {} if key else {"Authorization": openai.Omit()}
        return client, headers

    def _failure(self, err: Exception) -> RequestError:
        """Our error for an SDK error, in words that name the URL and never the key; raises
        `FatalRequestError` for the errors every request would hit."""
        import openai

        url = self.url
        if isinstance(err, openai.APIStatusError):
            status = err.status_code
            detail = self._scrub(err.response.text[:300])
            if status in (401, 403):
                raise FatalRequestError(
                    f"{url}: HTTP {status} ({detail}); check the API key in the environment variable "
                    f"${self.api_key_env} (api_key_env)"
                ) from None
            if status == 404:
                raise FatalRequestError(f"{url}: HTTP 404 ({detail}); check base_url and the model name") from None
            reason = f"HTTP {status}"
        elif isinstance(err, openai.APITimeoutError):
            reason = f"timed out after {self.timeout:g}s"
        elif isinstance(err, openai.APIConnectionError):
            reason = f"connection error ({type(err.__cause__ or err).__name__})"
        elif isinstance(err, ValueError):  # the SDK parses the body: a 200 whose body is not JSON
            return RequestError(f"{url}: the reply is not JSON ({self._scrub(str(err))[:200]})")
        else:
            return RequestError(f"{url}: {type(err).__name__}: {self._scrub(str(err))[:300]}")
        attempts = _attempts(err)
        if isinstance(err, openai.APIStatusError) and attempts in (1, None):
            # Not retried: the SDK judged it an error that retrying cannot fix (400, 422, ...).
            return RequestError(f"{url}: {reason}: {detail}")
        tries = f" after {attempts} attempts" if attempts else ""
        return RequestError(f"{url}: gave up{tries} (last: {reason})")

    async def _complete_all(
        self,
        requests: Sequence[dict[str, Any]],
        on_done: Callable[[int, ChatCompletion | RequestError], None] | None,
    ) -> list[ChatCompletion | RequestError]:
        import openai

        client, headers = self._sdk_client()
        async with client:
            gate = asyncio.Semaphore(self.concurrency)

            async def one(index: int, request: dict[str, Any]) -> ChatCompletion | RequestError:
                result: ChatCompletion | RequestError
                try:
                    async with gate:
                        result = await client.chat.completions.create(**request, extra_headers=headers)
                except (openai.OpenAIError, ValueError) as err:
                    result = self._failure(err)
                if on_done is not None:
                    on_done(index, result)
                return result

            tasks = [asyncio.ensure_future(one(i, request)) for i, request in enumerate(requests)]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                # A fatal error (or Ctrl-C): stop the requests still in flight before the client closes.
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    def complete_all(
        self,
        requests: Sequence[dict[str, Any]],
        on_done: Callable[[int, ChatCompletion | RequestError], None] | None = None,
    ) -> list[ChatCompletion | RequestError]:
        """Send chat-completions requests concurrently (each a dict of keyword arguments of the SDK's
        ``chat.completions.create``: ``model``, ``messages``, ..., ``extra_body``); return each reply, or
        the `RequestError` of the ones that failed, in order. ``on_done(index, result)`` is called as each
        finishes (on the calling thread's event loop), so results can be saved as they arrive.
        A `FatalRequestError` stops everything and is raised."""
        if not requests:
            return []
        return run_coroutine(self._complete_all(requests, on_done))


def _attempts(err: Exception) -> int | None:
    """How many attempts the SDK made, from the retry count it sends with each request."""
    request = getattr(err, "request", None)
    try:
        return int(request.headers["x-stainless-retry-count"]) + 1
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def with_extra_body(request: dict[str, Any], extra_body: dict[str, Any]) -> dict[str, Any]:
    """``request`` with the configured extra fields as the SDK's ``extra_body``, less those the request
    sets itself: our fields win (the SDK would let extra_body override them)."""
    extra = {key: value for key, value in extra_body.items() if key not in request}
    return {**request, "extra_body": extra} if extra else request


def chat_content(reply: ChatCompletion, index: int = 0) -> str:
    """The text of choice ``index`` of a chat-completions reply; a malformed reply is a RequestError."""
    try:
        content = reply.choices[index].message.content
    except (AttributeError, IndexError, TypeError):
        raise RequestError(f"malformed chat-completions reply (no choices[{index}].message.content)") from None
    if not isinstance(content, str):
        raise RequestError(f"chat-completions reply: content is {type(content).__name__}, not text")
    return content


def choice_count(reply: ChatCompletion) -> int:
    """How many choices a reply holds (0 for a malformed one)."""
    choices = getattr(reply, "choices", None)
    return len(choices) if isinstance(choices, list) else 0
