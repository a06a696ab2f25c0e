"""Generators: where completions come from. Two kinds share one `Generator` protocol:

- `LocalGenerator`: a ``transformers`` causal LM (a `ModelSpec`), batched with left padding;
- `OpenAIChatGenerator`: an OpenAI-compatible chat-completions server by URL (vLLM, TGI, OpenAI...).

The generate step that runs them (`zephyr_lightning.aif.generate`) knows only the protocol.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import Field

from zephyr_lightning.aif.client import (
    HttpUrl,
    OpenAICompatibleClient,
    RequestError,
    chat_content,
    choice_count,
    with_extra_body,
)
from zephyr_lightning.arguments import (
    NonNegative,
    NonNegativeInt,
    Positive,
    PositiveInt,
    check_arguments,
    cross_check,
)
from zephyr_lightning.chat_format import AddBos, ChatFormat
from zephyr_lightning.models import ModelSpec, as_spec

log = logging.getLogger(__name__)

# Nucleus sampling's probability mass: 0 would keep no token.
TopP = Annotated[float, Field(gt=0, le=1)]


# A conversation to continue: ``{"role", "content"}`` messages ending in a user turn.
Conversation = Sequence[Mapping[str, str]]


@runtime_checkable
class Generator(Protocol):
    """What `generate_completions` (and the evaluation's answering step) needs from a completion source.

    ``generate(prompts, n)`` returns, per prompt, a list of ``n`` completions, or an exception
    describing why that prompt failed (it is left out, counted, and retried on the next run). A prompt is
    a user message, or a whole `Conversation` ending in a user turn (a follow-up question asked after the
    model's own earlier answers). ``settings()`` is everything that shapes the completions; a resumed run
    refuses to mix completions made with different settings.
    """

    name: str
    batch_size: int

    def settings(self) -> dict[str, Any]: ...

    def setup(self) -> None: ...

    def generate(self, prompts: Sequence[str | Conversation], n: int) -> list[list[str] | Exception]: ...

    def close(self) -> None: ...


def _messages(prompt: str | Conversation, system_prompt: str | None) -> list[dict[str, str]]:
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system_prompt and not (turns and turns[0]["role"] == "system"):
        turns = [{"role": "system", "content": system_prompt}, *turns]
    return turns


def _excerpt(prompt: str | Conversation) -> str:
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    return repr(text[:60])


def _sampling_needs_a_temperature(arguments: Mapping[str, Any]) -> tuple[str, str] | None:
    if arguments["do_sample"] and not arguments["temperature"] > 0:
        return "temperature", "must be > 0 when sampling (do_sample=true)"
    return None


@cross_check(_sampling_needs_a_temperature)
class LocalGenerator:
    """Sample completions from a local ``transformers`` causal LM.

    Prompts are rendered with the tokenizer's chat template (a user turn, plus an optional system
    turn) and generated in batches of ``batch_size`` prompts, left-padded so that every row's new
    tokens start at the same position; ``n`` completions per prompt come from one ``generate`` call
    (``num_return_sequences``).

    Args:
        model: a `ModelSpec`, a hub name or local folder, or ``builtin:tiny-mistral``.
        name: the ``model`` field of the completions; default: the model's name or path.
        batch_size: prompts per ``generate`` call.
        max_new_tokens: longest completion.
        do_sample, temperature, top_p, top_k, repetition_penalty: sampling settings.
        system_prompt: a system turn before each prompt (UltraFeedback's ``custom_system_prompt``).
        add_bos, empty_system_turn: the `ChatFormat` the prompts are rendered with; use the same values the
            model was (or will be) trained with (``data.add_bos``, ``data.empty_system_turn``).
        max_prompt_length: prompts rendered longer than this many tokens fail (counted, not
            truncated: a cut prompt is a different task); ``None``: no limit.
        seed: sampling seed; each batch's seed is derived from it and the batch's prompts.
        device: ``cuda``, ``cpu``...; default: CUDA when available.
    """

    def __init__(
        self,
        model: ModelSpec | str | dict[str, Any],
        *,
        name: str | None = None,
        batch_size: PositiveInt = 8,
        max_new_tokens: PositiveInt = 512,
        do_sample: bool = True,
        temperature: NonNegative = 0.8,
        top_p: TopP = 0.95,
        top_k: NonNegativeInt | None = None,
        repetition_penalty: Positive | None = None,
        system_prompt: str | None = None,
        max_prompt_length: PositiveInt | None = None,
        seed: int = 0,
        device: str | None = None,
        add_bos: AddBos = "auto",
        empty_system_turn: bool = False,
    ) -> None:
        # The Hydra key is generate.models.<entry>, which the generator does not know; config validation
        # names it, and the constructor says "generator".
        check_arguments(LocalGenerator, locals(), prefix="generator")
        self.spec = as_spec(model)
        self.name = name or self.spec.name_or_path
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.repetition_penalty = repetition_penalty
        self.system_prompt = system_prompt
        self.max_prompt_length = max_prompt_length
        self.seed = seed
        self.device = device
        self.chat_format = ChatFormat(add_bos, empty_system_turn)
        self._model = None
        self._tokenizer = None

    def settings(self) -> dict[str, Any]:
        return {
            "kind": "local",
            "model": self.spec.to_dict(),
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "temperature": self.temperature if self.do_sample else None,
            "top_p": self.top_p if self.do_sample else None,
            "top_k": self.top_k if self.do_sample else None,
            "repetition_penalty": self.repetition_penalty,
            "system_prompt": self.system_prompt,
            "max_prompt_length": self.max_prompt_length,
            "seed": self.seed,
            "chat_format": dataclasses.asdict(self.chat_format),
        }

    def setup(self) -> None:
        if self._model is not None:
            return
        import torch

        from zephyr_lightning.models import load_causal_lm, load_tokenizer

        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        log.info("%s: loading %s on %s", self.name, self.spec.name_or_path, device)
        tokenizer = load_tokenizer(self.spec)
        # Left padding: the new tokens of every row then start at the same column.
        tokenizer.padding_side = "left"
        model = load_causal_lm(self.spec).to(device).eval()
        model.config.use_cache = True
        self._model, self._tokenizer = model, tokenizer

    def close(self) -> None:
        # Free the weights before the next model loads.
        self._model = self._tokenizer = None

    def _batch_seed(self, prompts: Sequence[str | Conversation]) -> int:
        # The name is in the seed so that two models given the same seed do not share a random stream.
        plain = [p if isinstance(p, str) else [dict(m) for m in p] for p in prompts]
        digest = hashlib.sha256(json.dumps([self.seed, self.name, plain]).encode()).hexdigest()
        return int(digest[:15], 16)

    def generate(self, prompts: Sequence[str | Conversation], n: int) -> list[list[str] | Exception]:
        import torch

        if n > 1 and not self.do_sample:
            raise ValueError(f"{self.name}: do_sample=false would give {n} identical completions; sample, or use n=1")
        self.setup()
        model, tokenizer = self._model, self._tokenizer
        ids = [self.chat_format.encode_prompt(tokenizer, _messages(p, self.system_prompt)) for p in prompts]
        results: list[list[str] | Exception] = [[] for _ in prompts]
        keep = []
        for i, row in enumerate(ids):
            if self.max_prompt_length is not None and len(row) > self.max_prompt_length:
                results[i] = ValueError(f"prompt has {len(row)} tokens > max_prompt_length={self.max_prompt_length}")
            else:
                keep.append(i)
        if not keep:
            return results
        batch = tokenizer.pad({"input_ids": [ids[i] for i in keep]}, return_tensors="pt").to(model.device)
        sampling: dict[str, Any] = {"do_sample": self.do_sample}
        if self.do_sample:
            sampling.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or 0)
        if self.repetition_penalty is not None:
            sampling["repetition_penalty"] = self.repetition_penalty
        devices = [model.device] if model.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(self._batch_seed(prompts))
            output = model.generate(
                **batch,
                max_new_tokens=self.max_new_tokens,
                num_return_sequences=n,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
        completions = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for j, i in enumerate(keep):
            results[i] = [c.strip() for c in completions[j * n : (j + 1) * n]]
        return results


class OpenAIChatGenerator:
    """Sample completions from an OpenAI-compatible chat-completions server (e.g. ``vllm serve``).

    The server applies its model's chat template. ``n`` completions per prompt are asked in one request
    (the ``n`` field); servers without ``n`` support take ``n_per_request=1``.

    Args:
        base_url: API root, e.g. ``http://localhost:8000/v1``.
        model: the model's name on the server; also the ``model`` field of the completions unless
            ``name`` is given.
        api_key_env: NAME of the environment variable holding the key (none needed for a local server).
        max_tokens, temperature, top_p, seed: sampling settings (``seed`` only if the server supports it).
        system_prompt: a system turn before each prompt.
        n_per_request: completions asked per request; ``None``: all ``n`` of a prompt in one request.
        concurrency, timeout, max_retries: requests in flight, seconds per attempt, retries per request
            (the official ``openai`` client's; see `OpenAICompatibleClient`).
        batch_size: prompts handed over per call (the progress bar's step; requests inside run concurrently).
        extra_body: extra request fields, sent as they are (fields the generator sets itself win).
    """

    def __init__(
        self,
        base_url: HttpUrl,
        model: Annotated[str, Field(min_length=1)],
        *,
        name: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_tokens: PositiveInt = 512,
        temperature: NonNegative = 0.8,
        top_p: TopP = 0.95,
        seed: int | None = None,
        system_prompt: str | None = None,
        n_per_request: PositiveInt | None = None,
        concurrency: PositiveInt = 16,
        timeout: Positive = 120.0,
        max_retries: NonNegativeInt = 6,
        batch_size: PositiveInt = 64,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        check_arguments(OpenAIChatGenerator, locals(), prefix="generator")
        self.model = model
        self.name = name or model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.system_prompt = system_prompt
        self.n_per_request = n_per_request
        self.batch_size = batch_size
        self.extra_body = dict(extra_body or {})
        self.client = OpenAICompatibleClient(
            base_url, api_key_env=api_key_env, concurrency=concurrency, timeout=timeout, max_retries=max_retries
        )

    def settings(self) -> dict[str, Any]:
        return {
            "kind": "openai_chat",
            "base_url": self.client.base_url,
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "system_prompt": self.system_prompt,
            "extra_body": self.extra_body,
        }

    def setup(self) -> None:
        pass

    def close(self) -> None:
        pass

    def generate(self, prompts: Sequence[str | Conversation], n: int) -> list[list[str] | Exception]:
        per_request = min(n, self.n_per_request or n)
        requests, owners = [], []
        for index, prompt in enumerate(prompts):
            remaining = n
            while remaining > 0:
                k = min(per_request, remaining)
                request: dict[str, Any] = {
                    "model": self.model,
                    "messages": _messages(prompt, self.system_prompt),
                    "n": k,
                    "max_tokens": self.max_tokens,
                    "temperature": self.temperature,
                    "top_p": self.top_p,
                }
                if self.seed is not None:
                    request["seed"] = self.seed + len(owners)
                requests.append(with_extra_body(request, self.extra_body))
                owners.append((index, k))
                remaining -= k
        replies = self.client.complete_all(requests)
        results: list[list[str] | Exception] = [[] for _ in prompts]
        for (index, k), reply in zip(owners, replies):
            if isinstance(results[index], RequestError):
                continue
            try:
                if isinstance(reply, RequestError):
                    raise reply
                got = choice_count(reply)
                if got != k:
                    raise RequestError(
                        f"asked for n={k} completions, the server returned {got} (set n_per_request=1 if it "
                        "does not support n)"
                    )
                results[index].extend(chat_content(reply, i).strip() for i in range(k))
            except RequestError as err:
                results[index] = RequestError(f"prompt {_excerpt(prompts[index])}: {err}")
        return results
