"""DPO runs: synthetic token pairs, this project's DPO step (DPOModule + PreferenceCollator under a real
Lightning Trainer) and TRL's DPOTrainer on the same model weights, pairs, batch size and lengths."""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from common import MemoryMeter, Result, StepTimer, free, sync

ModelSource = Any  # what DPOModule takes (ModelSpec, name, ready model), or a function returning a ready model


@dataclass
class PairWorkload:
    pairs: int = 320
    batch_size: int = 8
    prompt_range: tuple[int, int] = (64, 384)
    completion_range: tuple[int, int] = (32, 640)
    max_length: int = 2048
    steps: int = 30
    warmup: int = 5
    seed: int = 0
    vocab_size: int = 32000


def make_pairs(w: PairWorkload) -> list[dict[str, Any]]:
    """Random token pairs: a prompt and two completions per pair, each completion ending with EOS (2)."""
    rng = random.Random(w.seed)

    def tokens(lo, hi):
        return [rng.randrange(3, w.vocab_size) for _ in range(rng.randint(lo, hi))]

    return [
        {
            "prompt_id": f"pair-{i}",
            "prompt_input_ids": tokens(*w.prompt_range),
            "chosen_input_ids": tokens(*w.completion_range)[:-1] + [2],
            "rejected_input_ids": tokens(*w.completion_range)[:-1] + [2],
        }
        for i in range(w.pairs)
    ]


class ListData(L.LightningDataModule):
    """The smallest DataModule DPOModule's precompute path accepts: `datasets` + `collator`."""

    def __init__(self, pairs, collator, batch_size) -> None:
        super().__init__()
        import datasets

        self.datasets = {"train": datasets.Dataset.from_list(pairs)}
        self.collator = collator
        self.batch_size = self.eval_batch_size = batch_size

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.datasets["train"], batch_size=self.batch_size, shuffle=True,
                                           collate_fn=self.collator, drop_last=True)


def _ready(source: ModelSource) -> Any:
    return source() if callable(source) and not isinstance(source, torch.nn.Module) else source


def profiler_for(device: torch.device) -> torch.profiler.profile:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities)


class LightningTiming(L.Callback):
    """Times every training step after a device sync; then profiles ``profile_steps`` further steps."""

    def __init__(self, timer: StepTimer, steps: int, profile_steps: int, unit_of: Callable[[dict], int]) -> None:
        self.timer, self.steps, self.profile_steps, self.unit_of = timer, steps, profile_steps, unit_of
        self.profiler: torch.profiler.profile | None = None
        self.profile: dict | None = None
        self.seen = 0
        self.profile_t0 = 0.0
        self.params = 0
        self.reference_params = 0
        self.trainable_params = 0
        # Set to the run's meter to count peak memory from the first training step (see run_ours_dpo).
        self.restart_meter: MemoryMeter | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.params = pl_module.parameter_count(pl_module.model)
        self.reference_params = pl_module.parameter_count(getattr(pl_module, "reference", None))
        self.trainable_params = sum(p.numel() for p in pl_module.model.parameters() if p.requires_grad)
        if self.restart_meter is not None:
            self.restart_meter.restart()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.profile_steps and self.seen == self.steps:
            sync(self.timer.device)
            self.profiler = profiler_for(self.timer.device)
            self.profiler.start()
            self.profile_t0 = time.perf_counter()
        self.timer.begin()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.timer.end(batch["num_tokens"], self.unit_of(batch))
        self.seen += 1
        if self.profiler is not None and self.seen == self.steps + self.profile_steps:
            from profile_summary import summarize

            sync(self.timer.device)
            wall = time.perf_counter() - self.profile_t0
            self.profiler.stop()
            self.profile = summarize(self.profiler, self.profile_steps, wall)
            self.profiler = None


def lightning_trainer(device: torch.device, precision: str, max_steps: int, root: str, callbacks: list,
                      **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        accelerator=device.type, devices=1, precision=precision, max_steps=max_steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks, limit_val_batches=0, default_root_dir=root, **kwargs,
    )


def run_ours_dpo(
    name: str,
    w: PairWorkload,
    pairs: list[dict[str, Any]],
    policy: ModelSource,
    reference: ModelSource,
    device: torch.device,
    *,
    packing: bool,
    precompute: bool,
    precision: str = "32-true",
    peak_flops: float | None = None,
    profile_steps: int = 0,
    peak_from_training: bool = False,
    flops_per_token: float | None = None,
) -> Result:
    """This project's DPO training step: DPOModule + PreferenceCollator under a Lightning Trainer.

    ``policy`` / ``reference``: what DPOModule takes (a `ModelSpec` is loaded inside the Trainer, on the
    device, as a user's run does), or a function returning a ready model. ``profile_steps``: after the
    timed steps, run that many more under torch.profiler and put its summary in ``extra["profile"]``.
    ``peak_from_training``: peak memory from the first training step, as TRL's side counts it (its model is
    built before the meter starts), leaving out the load's transient copies (a built-in model is built in
    float32, then cast). ``flops_per_token``: the model FLOPs per token when counting parameters cannot give
    them (LoRA: the frozen base gets no weight gradients; 4-bit weights count half their elements).
    """
    from zephyr_lightning import DPOModule, OptimizerConfig
    from zephyr_lightning.data.collators import PreferenceCollator

    timer = StepTimer(device, limit=w.steps)
    timing = LightningTiming(timer, w.steps, profile_steps, unit_of=lambda batch: len(batch["prompt_id"]))
    with tempfile.TemporaryDirectory() as tmp:
        module = DPOModule(_ready(policy), reference=_ready(reference), beta=0.1, precompute_reference=precompute,
                           reference_cache_dir=os.path.join(tmp, "ref"), optim=OptimizerConfig(lr=5e-7, warmup_ratio=0.1))
        data = ListData(pairs, PreferenceCollator(0, packing=packing), w.batch_size)
        trainer = lightning_trainer(device, precision, w.steps + profile_steps, tmp, [timing])
        with MemoryMeter(device) as mem:
            timing.restart_meter = mem if peak_from_training else None
            trainer.fit(module, datamodule=data)
        if flops_per_token is None:
            flops_per_token = 6 * timing.params + (0 if precompute else 2 * timing.reference_params)
        result = timer.summary(name, "pairs", w.warmup, flops_per_token, mem, peak_flops, params=timing.params,
                               trainable_params=timing.trainable_params,
                               precision=precision, packing=packing, precompute=precompute,
                               peak_memory_from="first training step" if peak_from_training else "start of fit")
        if timing.profile is not None:
            result.extra["profile"] = timing.profile
    del module, trainer, data
    free(device)
    return result


def run_trl_dpo(
    name: str,
    w: PairWorkload,
    pairs: list[dict[str, Any]],
    make_policy: Callable[[], Any],
    make_reference: Callable[[], Any] | None,
    tokenizer,
    device: torch.device,
    *,
    precompute: bool,
    gradient_checkpointing: bool,
    bf16: bool,
    peak_flops: float | None = None,
    peft_config: Any = None,
    flops_per_token: float | None = None,
) -> Result:
    """TRL's DPOTrainer on the same weights and pairs. Its tokenisation step is bypassed (the pairs are
    already token ids); everything it does per step is kept. ``make_reference=None``: TRL's own choice
    (with ``precompute``: the policy's starting weights, computed once before training; with ``peft_config``:
    the policy with its adapter disabled). ``flops_per_token``: as in `run_ours_dpo`."""
    import datasets
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    rows = [{"prompt_ids": p["prompt_input_ids"], "chosen_ids": p["chosen_input_ids"],
             "rejected_ids": p["rejected_input_ids"]} for p in pairs]
    dataset = datasets.Dataset.from_list(rows)
    policy = make_policy()
    reference = None if precompute or make_reference is None else make_reference()
    params = sum(p.numel() for p in policy.parameters())
    timer = StepTimer(device)
    # TRL does not report tokens per step; batches are collated in step order, so take them from the collator.
    step_tokens: list[int] = []

    class Timing(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            timer.begin()

        def on_step_end(self, args, state, control, **kwargs):
            timer.end(step_tokens.pop(0) if step_tokens else 0, w.batch_size)

    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(
            output_dir=tmp, per_device_train_batch_size=w.batch_size, max_length=w.max_length, learning_rate=5e-7,
            beta=0.1, max_steps=w.steps, logging_steps=10_000, save_strategy="no", report_to="none",
            gradient_checkpointing=gradient_checkpointing, precompute_ref_log_probs=precompute, bf16=bf16,
            use_cpu=device.type == "cpu", dataloader_num_workers=0, seed=w.seed, warmup_steps=0.1,
        )
        with _identity_prepare(DPOTrainer):
            trainer = DPOTrainer(policy, ref_model=reference, args=config, train_dataset=dataset,
                                 processing_class=tokenizer, peft_config=peft_config)
        collate = trainer.data_collator

        def counting_collate(examples):
            batch = collate(examples)
            step_tokens.append(int(batch["attention_mask"].sum()))
            return batch

        trainer.data_collator = counting_collate
        trainer.add_callback(Timing())
        del policy, reference
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        with MemoryMeter(device) as mem:
            if precompute:
                # Precomputing happens while building the train dataloader; it is not part of a step.
                trainer.get_train_dataloader()
                step_tokens.clear()
            trainer.train()
        if flops_per_token is None:
            flops_per_token = (6 if precompute else 8) * params
        result = timer.summary(name, "pairs", w.warmup, flops_per_token, mem, peak_flops,
                               params=params, trainable_params=trainable, bf16_autocast=bf16,
                               gradient_checkpointing=gradient_checkpointing,
                               precompute=precompute)
    del trainer
    free(device)
    return result


@contextlib.contextmanager
def _identity_prepare(trainer_class):
    original = trainer_class._prepare_dataset
    trainer_class._prepare_dataset = lambda self, dataset, *args, **kwargs: dataset
    try:
        yield
    finally:
        trainer_class._prepare_dataset = original
