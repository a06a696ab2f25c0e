"""Generate K completions per prompt from one or more models, written in the ``openbmb/UltraFeedback``
schema (``instruction``, ``completions`` with ``model`` and ``response``).

Generators:
- `LocalGenerator`: a ``transformers`` causal LM (a `ModelSpec`), batched with left padding;
- `OpenAIChatGenerator`: an OpenAI-compatible chat-completions server by URL (vLLM, TGI, OpenAI...).

`generate_completions` runs the models one after another (only one is in memory at a time). Each
model writes its own resumable shard ``<output stem>/<model>.jsonl``, one row per prompt, appended
and fsynced as it is produced; a restarted run skips the prompts a shard already has. When every
model is done, the shards are merged into the output file (written atomically).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tqdm.auto import tqdm

from zephyr_lightning.aif.client import OpenAICompatibleClient, RequestError, RetryPolicy, chat_content
from zephyr_lightning.aif.io import JsonlWriter, iter_jsonl, read_done, write_jsonl_atomic
from zephyr_lightning.aif.prompts import Prompt
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

        from zephyr_lightning.data.chat import render

        if n > 1 and not self.do_sample:
            raise ValueError(f"{self.name}: do_sample=false would give {n} identical completions; sample, or use n=1")
        self.setup()
        model, tokenizer = self._model, self._tokenizer
        texts = [render(tokenizer, _messages(p, self.system_prompt), add_generation_prompt=True) for p in prompts]
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


@dataclass
class GenerateSummary:
    prompts: int = 0
    rows_written: int = 0
    incomplete: int = 0
    per_model: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "rows_written": self.rows_written,
            "incomplete": self.incomplete,
            "per_model": self.per_model,
        }


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def shard_dir(output: str | Path) -> Path:
    """Where the per-model shards of ``output`` live: ``generations.jsonl`` -> ``generations/``."""
    output = Path(output)
    return output.with_name(output.stem)


def _check_settings(shard: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume a shard made with other settings: the output would mix two distributions."""
    path = shard.with_suffix(".settings.json")
    if path.exists():
        old = json.loads(path.read_text())
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(
                f"{shard} was generated with different settings (changed: {changed}); use a new run folder "
                f"(hydra.run.dir) or delete {shard} and {path} to start this model over"
            )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2, sort_keys=True))


def _generate_one(
    generator: Generator, prompts: Sequence[Prompt], shard: Path, n: int, show_progress: bool
) -> dict[str, int]:
    done = read_done(shard, key=lambda row: row["prompt_id"])
    todo = [p for p in prompts if p.prompt_id not in done]
    counts = {"already_done": len(prompts) - len(todo), "generated": 0, "failed": 0}
    log.info("%s: %d of %d prompts already generated, %d to go", generator.name, counts["already_done"], len(prompts), len(todo))
    if not todo:
        return counts
    system_prompt = getattr(generator, "system_prompt", None) or ""
    generator.setup()
    try:
        with JsonlWriter(shard) as writer, tqdm(
            total=len(todo), desc=f"generate {generator.name}", unit="prompt", disable=not show_progress
        ) as bar:
            for start in range(0, len(todo), generator.batch_size):
                batch = todo[start : start + generator.batch_size]
                results = generator.generate([p.instruction for p in batch], n)
                if len(results) != len(batch):
                    raise RuntimeError(f"{generator.name}: returned {len(results)} results for {len(batch)} prompts")
                for prompt, result in zip(batch, results):
                    if isinstance(result, Exception):
                        counts["failed"] += 1
                        log.warning("%s: prompt_id=%s failed (retried on the next run): %s", generator.name, prompt.prompt_id, result)
                        continue
                    if len(result) != n:
                        raise RuntimeError(f"{generator.name}: returned {len(result)} completions, expected {n}")
                    writer.write(
                        {
                            "prompt_id": prompt.prompt_id,
                            "instruction": prompt.instruction,
                            "model": generator.name,
                            "custom_system_prompt": system_prompt,
                            "responses": result,
                        }
                    )
                    counts["generated"] += 1
                bar.update(len(batch))
    finally:
        generator.close()
    return counts


def generate_completions(
    prompts: Sequence[Prompt],
    generators: Sequence[Generator],
    output: str | Path,
    *,
    num_completions: int = 1,
    source: str = "",
    show_progress: bool = True,
) -> GenerateSummary:
    """Generate ``num_completions`` completions per prompt from each generator; write UltraFeedback rows.

    Output rows: ``source``, ``prompt_id`` (sha256 of the instruction), ``instruction``, ``models`` and
    ``completions`` (``model``, ``response``, ``custom_system_prompt``), ``num_completions`` per model,
    in the order of ``generators``. A prompt one of the models failed on is left out of the output
    (and counted as incomplete) until a later run fills it in.
    """
    if num_completions < 1:
        raise ValueError(f"generate.num_completions must be >= 1, got {num_completions}")
    if not generators:
        raise ValueError("no generators: configure at least one model under generate.models")
    names = [g.name for g in generators]
    slugs = [_slug(n) for n in names]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"generator names must be distinct (set `name` on each): {names}")
    output = Path(output)
    shards = shard_dir(output)
    summary = GenerateSummary(prompts=len(prompts))
    for generator, slug in zip(generators, slugs):
        shard = shards / f"{slug}.jsonl"
        _check_settings(shard, {**generator.settings(), "num_completions": num_completions})
        summary.per_model[generator.name] = _generate_one(generator, prompts, shard, num_completions, show_progress)

    by_model: list[dict[str, dict]] = []
    for slug in slugs:
        by_model.append({row["prompt_id"]: row for row in iter_jsonl(shards / f"{slug}.jsonl")})

    def rows():
        for prompt in prompts:
            parts = [rows_of.get(prompt.prompt_id) for rows_of in by_model]
            if any(part is None for part in parts):
                summary.incomplete += 1
                continue
            completions = [
                {"model": part["model"], "response": response, "custom_system_prompt": part["custom_system_prompt"]}
                for part in parts
                for response in part["responses"]
            ]
            yield {
                "source": source,
                "prompt_id": prompt.prompt_id,
                "instruction": prompt.instruction,
                "models": names,
                "completions": completions,
            }

    summary.rows_written = write_jsonl_atomic(output, rows())
    log.info(
        "generate: %d prompts x %d models x %d completions -> %s (%d rows%s)",
        len(prompts),
        len(generators),
        num_completions,
        output,
        summary.rows_written,
        f"; {summary.incomplete} incomplete, rerun to fill them in" if summary.incomplete else "",
    )
    return summary
