"""Generators: where completions come from. Two kinds share one `Generator` protocol:

- `LocalGenerator`: a ``transformers`` causal LM (a `ModelSpec`), batched with left padding;
- `OpenAIChatGenerator`: an OpenAI-compatible chat-completions server by URL (vLLM, TGI, OpenAI...).

The generate step that runs them (`zephyr_lightning.aif.generate`) knows only the protocol.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from zephyr_lightning.aif.client import OpenAICompatibleClient, RequestError, RetryPolicy, chat_content
from zephyr_lightning.models import ModelSpec, as_spec

log = logging.getLogger(__name__)


@runtime_checkable
class Generator(Protocol):
    """What `generate_completions` needs from a completion source.

    ``generate(prompts, n)`` returns, per prompt, a list of ``n`` completions, or an exception
    describing why that prompt failed (it is left out, counted, and retried on the next run). ``settings()`` is everything that shapes
    the completions; a resumed run refuses to mix completions made with different settings.
    """

    name: str
    batch_size: int

    def settings(self) -> dict[str, Any]: ...

    def setup(self) -> None: ...

    def generate(self, prompts: Sequence[str], n: int) -> list[list[str] | Exception]: ...

    def close(self) -> None: ...


def _messages(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*head, {"role": "user", "content": prompt}]


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
        batch_size: int = 8,
        max_new_tokens: int = 512,
        do_sample: bool = True,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int | None = None,
        repetition_penalty: float | None = None,
        system_prompt: str | None = None,
        max_prompt_length: int | None = None,
        seed: int = 0,
        device: str | None = None,
    ) -> None:
        self.spec = as_spec(model)
        self.name = name or self.spec.name_or_path
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"{self.name}: batch_size and max_new_tokens must be >= 1")
        if do_sample and not temperature > 0:
            raise ValueError(f"{self.name}: temperature must be > 0 when sampling (got {temperature})")
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

    def _batch_seed(self, prompts: Sequence[str]) -> int:
        # The name is in the seed so that two models given the same seed do not share a random stream.
        digest = hashlib.sha256(json.dumps([self.seed, self.name, list(prompts)]).encode()).hexdigest()
        return int(digest[:15], 16)

    def generate(self, prompts: Sequence[str], n: int) -> list[list[str] | Exception]:
        import torch

        if n > 1 and not self.do_sample:
            raise ValueError(f"{self.name}: do_sample=false would give {n} identical completions; sample, or use n=1")
        self.setup()
        model, tokenizer = self._model, self._tokenizer
        texts = [
            tokenizer.apply_chat_template(_messages(p, self.system_prompt), tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
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
        concurrency, timeout, max_retries, backoff_base, max_delay: see `OpenAICompatibleClient`.
        batch_size: prompts handed over per call (the progress bar's step; requests inside run concurrently).
        extra_body: extra request fields.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        name: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_tokens: int = 512,
        temperature: float = 0.8,
        top_p: float = 0.95,
        seed: int | None = None,
        system_prompt: str | None = None,
        n_per_request: int | None = None,
        concurrency: int = 16,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        max_delay: float = 60.0,
        batch_size: int = 64,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if not model:
            raise ValueError("generator model is required: the model's name on the server")
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
            base_url,
            api_key_env=api_key_env,
            concurrency=concurrency,
            timeout=timeout,
            retry=RetryPolicy(max_retries=max_retries, backoff_base=backoff_base, max_delay=max_delay),
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

    def generate(self, prompts: Sequence[str], n: int) -> list[list[str] | Exception]:
        per_request = min(n, self.n_per_request or n)
        requests, owners = [], []
        for index, prompt in enumerate(prompts):
            remaining = n
            while remaining > 0:
                k = min(per_request, remaining)
                payload = {
                    **self.extra_body,
                    "model": self.model,
                    "messages": _messages(prompt, self.system_prompt),
                    "n": k,
                    "max_tokens": self.max_tokens,
                    "temperature": self.temperature,
                    "top_p": self.top_p,
                }
                if self.seed is not None:
                    payload["seed"] = self.seed + len(owners)
                requests.append(("chat/completions", payload))
                owners.append((index, k))
                remaining -= k
        replies = self.client.post_all(requests)
        results: list[list[str] | Exception] = [[] for _ in prompts]
        for (index, k), reply in zip(owners, replies):
            if isinstance(results[index], RequestError):
                continue
            try:
                if isinstance(reply, RequestError):
                    raise reply
                choices = reply.get("choices")
                if not isinstance(choices, list) or len(choices) != k:
                    got = len(choices) if isinstance(choices, list) else 0
                    raise RequestError(
                        f"asked for n={k} completions, the server returned {got} (set n_per_request=1 if it "
                        "does not support n)"
                    )
                results[index].extend(chat_content(reply, i).strip() for i in range(k))
            except RequestError as err:
                results[index] = RequestError(f"prompt {prompts[index][:60]!r}: {err}")
        return results
