"""dSFT runs: this project's SFT step (SFTModule + SFTDataModule with packing, under a real Lightning
Trainer) and TRL's SFTTrainer (packing with padding_free, its fastest documented set-up) on the same
dialogues, model weights, maximum length and rows per optimizer step.

Both sides start from the same tokenization: our SFTDataModule renders each dialogue with the chat template
and marks the assistant tokens; TRL receives those token ids with the other tokens' labels set to -100, and
packs them itself (best-fit decreasing, as ours).
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import MemoryMeter, Result, StepTimer, free
from dpo_runs import LightningTiming, _ready, lightning_trainer


@dataclass
class DialogueWorkload:
    """Synthetic dialogues in the ultrachat_200k schema; lengths in words, about one token each."""

    dialogues: int = 600
    turns: tuple[int, int] = (1, 3)
    user_words: tuple[int, int] = (16, 160)
    assistant_words: tuple[int, int] = (64, 512)
    max_length: int = 2048
    batch_size: int = 8  # packed rows of up to max_length tokens per optimizer step (both sides)
    steps: int = 20
    warmup: int = 4
    seed: int = 0


def _words(tokenizer) -> list[str]:
    """Whole-word pieces of the vocabulary (``▁word``, lowercase letters): random text of about one token
    per word, whatever the tokenizer."""
    words = sorted({p[1:] for p in tokenizer.get_vocab() if p.startswith("▁") and p[1:].isascii()
                    and p[1:].isalpha() and p[1:].islower() and len(p) >= 4})
    if len(words) < 100:
        raise ValueError("the tokenizer has too few whole-word pieces for synthetic dialogues")
    return words


def synthetic_dialogues(w: DialogueWorkload, tokenizer) -> list[dict[str, Any]]:
    rng = random.Random(w.seed)
    words = _words(tokenizer)

    def text(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    rows = []
    for _ in range(w.dialogues):
        messages = []
        for _ in range(rng.randint(*w.turns)):
            messages += [{"role": "user", "content": text(*w.user_words)},
                         {"role": "assistant", "content": text(*w.assistant_words)}]
        prompt = messages[0]["content"]
        rows.append({"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(), "messages": messages})
    return rows


def write_split(rows: list[dict[str, Any]], folder: Path, split: str = "train_sft") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{split}.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return folder


def sft_datamodule(path: str, tokenizer, w: DialogueWorkload):
    """Our SFTDataModule over ``path`` (train split only), packed into rows of ``w.max_length``, set up."""
    from zephyr_lightning import SFTDataModule

    dm = SFTDataModule(path, tokenizer, val_split=None, max_length=w.max_length, packing=True,
                       batch_size=w.batch_size, seed=w.seed)
    dm.setup("fit")
    return dm


def trl_dataset(dm):
    """The same tokenized dialogues for TRL: input ids, and labels with -100 where our loss mask is 0."""
    import datasets

    rows = dm.datasets["train"].rows  # the PackedDataset's unpacked rows
    ids, masks = rows["input_ids"], rows["loss_mask"]
    labels = [[t if m else -100 for t, m in zip(i, k)] for i, k in zip(ids, masks)]
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": labels})


def data_facts(dm) -> dict[str, Any]:
    lengths = dm.datasets["train"].rows["length"]
    scored = sum(sum(m) for m in dm.datasets["train"].rows["loss_mask"])
    return {"dialogues": len(lengths), "tokens": sum(lengths), "mean_tokens": sum(lengths) / len(lengths),
            "max_tokens": max(lengths), "assistant_token_share": scored / sum(lengths),
            "packed_rows": len(dm.datasets["train"]), "padding": dm.padding.get("train")}


def run_ours_sft(name: str, w: DialogueWorkload, dm, model: Any, device: torch.device, *, precision: str = "32-true",
                 peak_flops: float | None = None, profile_steps: int = 0) -> Result:
    """This project's dSFT step: SFTModule on the packed SFTDataModule under a Lightning Trainer.
    ``model``: a `ModelSpec` (loaded inside the Trainer) or a function returning a ready model."""
    from zephyr_lightning import OptimizerConfig, SFTModule

    timer = StepTimer(device, limit=w.steps)
    timing = LightningTiming(timer, w.steps, profile_steps, unit_of=lambda batch: len(batch["prompt_id"]))
    with tempfile.TemporaryDirectory() as tmp:
        module = SFTModule(_ready(model), optim=OptimizerConfig(lr=2e-5, schedule="cosine", warmup_ratio=0.1))
        trainer = lightning_trainer(device, precision, w.steps + profile_steps, tmp, [timing])
        with MemoryMeter(device) as mem:
            trainer.fit(module, datamodule=dm)
        result = timer.summary(name, "dialogues", w.warmup, 6 * timing.params, mem, peak_flops,
                               params=timing.params, precision=precision)
        if timing.profile is not None:
            result.extra["profile"] = timing.profile
    del module, trainer
    free(device)
    return result


def _sft_config(tmp: str, w: DialogueWorkload, device: torch.device, *, gradient_checkpointing: bool, bf16: bool,
                steps: int):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=tmp, per_device_train_batch_size=w.batch_size, max_length=w.max_length,
        packing=True, packing_strategy="bfd", padding_free=True,
        learning_rate=2e-5, lr_scheduler_type="cosine", warmup_steps=0.1, max_steps=steps,
        logging_steps=10_000, save_strategy="no", report_to="none", gradient_checkpointing=gradient_checkpointing,
        bf16=bf16, use_cpu=device.type == "cpu", dataloader_num_workers=0, seed=w.seed,
    )


def run_trl_sft(name: str, w: DialogueWorkload, rows, make_model: Callable[[], Any], tokenizer, device: torch.device, *,
                gradient_checkpointing: bool, bf16: bool, peak_flops: float | None = None,
                peft_config: Any = None) -> Result:
    """TRL's SFTTrainer with packing + padding_free on the same tokenized dialogues."""
    from transformers import TrainerCallback
    from trl import SFTTrainer

    model = make_model()
    params = sum(p.numel() for p in model.parameters())
    timer = StepTimer(device)
    # Batches are collated in step order: take each step's tokens and dialogues from the collator.
    step_counts: list[tuple[int, int]] = []

    class Timing(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            timer.begin()

        def on_step_end(self, args, state, control, **kwargs):
            timer.end(*(step_counts.pop(0) if step_counts else (0, 0)))

    with tempfile.TemporaryDirectory() as tmp:
        config = _sft_config(tmp, w, device, gradient_checkpointing=gradient_checkpointing, bf16=bf16, steps=w.steps)
        trainer = SFTTrainer(model, args=config, train_dataset=rows, processing_class=tokenizer, peft_config=peft_config)
        collate = trainer.data_collator

        def counting_collate(examples):
            batch = collate(examples)
            step_counts.append((int(batch["input_ids"].numel()), int((batch["position_ids"] == 0).sum())))
            return batch

        trainer.data_collator = counting_collate
        trainer.add_callback(Timing())
        del model
        with MemoryMeter(device) as mem:
            trainer.train()
        result = timer.summary(name, "dialogues", w.warmup, 6 * params, mem, peak_flops, params=params,
                               bf16_autocast=bf16, gradient_checkpointing=gradient_checkpointing,
                               packed_rows=len(trainer.train_dataset))
    del trainer
    free(device)
    return result


def loss_crosscheck(dm, rows, make_model: Callable[[], Any], tokenizer, device: torch.device, *, bf16: bool,
                    batch_rows: int = 2) -> dict[str, Any]:
    """Both implementations on the same packed rows of our data module, from the same weights: the loss, the
    number of scored tokens, and the gradients of every parameter after one backward pass.

    Ours: `SFTModule`'s loss on our collator's batch. TRL: `SFTTrainer.compute_loss` on its own collator's
    batch of the same rows (its padding-free layout: all rows flattened into one). ``bf16``: both under
    bf16 autocast, as in the timed runs.
    """
    from zephyr_lightning import SFTModule

    packed = dm.datasets["train"]
    # The rows holding the most dialogues: the cross-check is about sequence boundaries inside a row.
    fullest = sorted(range(len(packed)), key=lambda i: -len(packed.bins[i]))[:batch_rows]
    bins = [packed[i] for i in fullest]
    ours_batch = dm.collator(bins)
    examples = []
    for dialogues in bins:
        ids = [t for d in dialogues for t in d["input_ids"]]
        labels = [t if m else -100 for d in dialogues for t, m in zip(d["input_ids"], d["loss_mask"])]
        examples.append({"input_ids": ids, "labels": labels, "seq_lengths": [len(d["input_ids"]) for d in dialogues]})
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    module = SFTModule(make_model()).to(device)
    module.model.train()
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in ours_batch.items()}
    with autocast:
        logps = module.scored_logprobs(batch)
        ours_loss = module.mean_nll(logps)
    ours_loss.backward()
    ours_grads = {n: p.grad.detach().float().cpu() for n, p in module.model.named_parameters() if p.grad is not None}
    ours_scored = logps.numel()
    del module, batch
    free(device)

    from trl import SFTTrainer

    with tempfile.TemporaryDirectory() as tmp:
        config = _sft_config(tmp, DialogueWorkload(max_length=dm.max_length, batch_size=batch_rows), device,
                             gradient_checkpointing=False, bf16=bf16, steps=1)
        trainer = SFTTrainer(make_model(), args=config, train_dataset=rows, processing_class=tokenizer)
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in trainer.data_collator(examples).items()}
        trainer.model.train()
        with autocast:
            trl_loss = trainer.compute_loss(trainer.model, dict(inputs))
        trl_loss.backward()
        trl_grads = {n: p.grad.detach().float().cpu() for n, p in trainer.model.named_parameters() if p.grad is not None}
        trl_scored = int((inputs["labels"] != -100).sum())
        del trainer
    free(device)

    names = sorted(set(ours_grads) & set(trl_grads))
    ours_flat = torch.cat([ours_grads[n].flatten() for n in names]).double()
    trl_flat = torch.cat([trl_grads[n].flatten() for n in names]).double()
    loss_rel = abs(ours_loss.item() - trl_loss.item()) / abs(trl_loss.item())
    grad_rel = ((ours_flat - trl_flat).norm() / trl_flat.norm()).item()
    cosine = torch.nn.functional.cosine_similarity(ours_flat, trl_flat, dim=0).item()
    # float32: both compute the same sums in a different order (1e-5); bf16 autocast rounds differently on
    # each side (different kernels and fusion), so the loss agrees to about 1e-2 and the gradients in direction.
    loss_tol, grad_tol = (2e-2, 0.1) if bf16 else (1e-5, 1e-4)
    return {
        "rows": batch_rows, "dialogues": sum(len(b) for b in bins), "tokens": int(ours_batch["num_tokens"]),
        "ours_loss": ours_loss.item(), "trl_loss": trl_loss.item(), "loss_rel_diff": loss_rel,
        "ours_scored_tokens": ours_scored, "trl_scored_tokens": trl_scored,
        "grad_params_compared": len(names), "grad_params_ours": len(ours_grads), "grad_params_trl": len(trl_grads),
        "grad_rel_l2_diff": grad_rel, "grad_cosine": cosine, "tolerance": {"loss_rel": loss_tol, "grad_rel_l2": grad_tol},
        "ok": loss_rel <= loss_tol and grad_rel <= grad_tol and ours_scored == trl_scored and len(names) == len(trl_grads),
    }
