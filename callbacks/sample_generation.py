"""Generate from a few fixed prompts at each validation, to see what the model says as it trains."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from transformers import PreTrainedTokenizerBase

from zephyr_lightning.arguments import Positive, PositiveInt, check_arguments
from zephyr_lightning.callbacks._tokenizer import find_tokenizer
from zephyr_lightning.chat_format import ChatFormat

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in one sentence why the sky is blue.",
)


def _unsharded_root(trainer: L.Trainer):
    """Under FSDP, gather the root unit's weights (embeddings, head) for generation: `generate` runs
    outside the root's own forward, while the wrapped decoder layers gather theirs as they run."""
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel.summon_full_params(trainer.strategy.model, recurse=False, writeback=False)


@torch.no_grad()
def generate_replies(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    chat_format: ChatFormat,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float | None = None,
) -> list[str]:
    """The model's reply to each prompt as a one-turn user message, rendered as the training data is
    (``chat_format``), greedy unless ``do_sample``; special tokens and surrounding space stripped."""
    outputs = []
    for prompt in prompts:
        tokens = chat_format.encode_prompt(tokenizer, [{"role": "user", "content": prompt}])
        ids = torch.tensor([tokens], device=model.device)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        outputs.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return outputs


class SampleGeneration(L.Callback):
    """Greedy (or sampled) completions of fixed prompts after every ``every_n_epochs`` validation.

    Logged as a W&B table (``samples``) under the W&B logger, as text under TensorBoard, and always
    appended to ``samples.jsonl`` in the trainer's log folder, with the step.
    """

    def __init__(
        self,
        prompts: list[str] | tuple[str, ...] = DEFAULT_PROMPTS,
        max_new_tokens: PositiveInt = 48,
        do_sample: bool = False,
        temperature: Positive = 0.7,
        every_n_epochs: PositiveInt = 1,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        check_arguments(SampleGeneration, locals(), prefix="callbacks.sample_generation")
        self.prompts = list(prompts)
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample
        self.temperature = temperature
        self.every_n_epochs = every_n_epochs
        self.tokenizer = tokenizer

    def generate(self, model, tokenizer: PreTrainedTokenizerBase, chat_format: ChatFormat | None = None) -> list[str]:
        """Completions of the prompts, each rendered as the training data is (``chat_format``: BOS, system turn)."""
        return generate_replies(model, tokenizer, self.prompts, chat_format or ChatFormat(),
                                max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                                temperature=self.temperature)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.prompts:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs and not trainer.fast_dev_run:
            return
        tokenizer = find_tokenizer(trainer, self.tokenizer)
        if tokenizer is None:
            log.warning("SampleGeneration: no tokenizer (give one, or use a DataModule with .tokenizer); skipped")
            return
        # Every rank generates (sharded models need all ranks in each forward); rank 0 logs.
        with _unsharded_root(trainer):
            chat_format = getattr(trainer.datamodule, "chat_format", None)
            completions = self.generate(pl_module.model, tokenizer, chat_format)
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        rows = [[step, p, c] for p, c in zip(self.prompts, completions)]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key="samples", columns=["step", "prompt", "completion"], data=rows, step=step)
            elif isinstance(logger, TensorBoardLogger):
                text = "\n\n".join(f"**{p}**\n\n{c}" for _, p, c in rows)
                logger.experiment.add_text("samples", text, global_step=step)
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "samples.jsonl", "a", encoding="utf-8") as f:
            for _, prompt, completion in rows:
                f.write(json.dumps({"step": step, "prompt": prompt, "completion": completion}) + "\n")
        for _, prompt, completion in rows:
            log.info("sample @%d | %s -> %s", step, prompt, completion)
