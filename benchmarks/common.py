"""Shared pieces of the DPO benchmarks: synthetic pairs, one timed run of this project's DPO step
(the real DPOModule, collator and Lightning Trainer) and one of TRL's DPOTrainer on the same model
weights, pairs, batch size and lengths.

Runs happen one after another in one process; each reports pairs/s, tokens/s, model FLOPs and
peak memory (GPU: torch's allocator peak; CPU: peak resident memory above the level before the run,
sampled every 2 ms).
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100/H200 SXM


@dataclass
class Workload:
    pairs: int = 320
    batch_size: int = 8
    prompt_range: tuple[int, int] = (64, 384)
    completion_range: tuple[int, int] = (32, 640)
    max_length: int = 2048
    steps: int = 30
    warmup: int = 5
    seed: int = 0
    vocab_size: int = 32000


@dataclass
class Result:
    name: str
    pairs_per_s: float
    tokens_per_s: float
    step_s: float
    peak_mem_gib: float
    mfu: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def make_pairs(w: Workload) -> list[dict[str, Any]]:
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


def pair_tokens(pair: dict[str, Any]) -> int:
    p = len(pair["prompt_input_ids"])
    return 2 * p + len(pair["chosen_input_ids"]) + len(pair["rejected_input_ids"])


class MemoryMeter:
    """Peak memory of a run: CUDA allocator peak, or CPU resident memory above the starting level."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._stop = threading.Event()
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> MemoryMeter:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.base = self._rss()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self.thread.join()

    @property
    def gib(self) -> float:
        return self.peak / 2**30


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class StepTimer:
    """Per-step wall time after synchronising the device, and the tokens of each step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []
        self.tokens: list[int] = []

    def begin(self) -> None:
        _sync(self.device)
        self.t0 = time.perf_counter()

    def end(self, tokens: int) -> None:
        _sync(self.device)
        self.times.append(time.perf_counter() - self.t0)
        self.tokens.append(tokens)

    def summary(self, name: str, w: Workload, params: int, live_reference: bool, mem: MemoryMeter, peak_flops: float | None):
        times, tokens = self.times[w.warmup :], self.tokens[w.warmup :]
        seconds = sum(times)
        flops = sum((6 * params + (2 * params if live_reference else 0)) * t for t in tokens)
        return Result(
            name=name,
            pairs_per_s=w.batch_size * len(times) / seconds,
            tokens_per_s=sum(tokens) / seconds,
            step_s=seconds / len(times),
            peak_mem_gib=mem.gib,
            mfu=flops / seconds / peak_flops if peak_flops else None,
            extra={"timed_steps": len(times)},
        )


class _ListData(L.LightningDataModule):
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


def run_ours(
    name: str,
    w: Workload,
    pairs: list[dict[str, Any]],
    make_model,
    device: torch.device,
    *,
    packing: bool,
    precompute: bool,
    gradient_checkpointing: bool = False,
    compile: bool = False,
    precision: str = "32-true",
    peak_flops: float | None = None,
    profile_to: str | None = None,
) -> Result:
    """This project's DPO training step: DPOModule + PreferenceCollator under a Lightning Trainer.

    ``profile_to``: also write a table of the CUDA kernels of steps warmup+1..warmup+3 to that file.
    """
    from zephyr_lightning import DPOModule, OptimizerConfig
    from zephyr_lightning.data.collators import PreferenceCollator
    from zephyr_lightning.models import compile_decoder_layers

    policy, reference = make_model(), make_model()
    if gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if compile:
        compile_decoder_layers(policy)
        compile_decoder_layers(reference)
    params = sum(p.numel() for p in policy.parameters())
    timer = StepTimer(device)

    profiler = None
    if profile_to:
        profiler = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA],
            schedule=torch.profiler.schedule(wait=w.warmup, warmup=1, active=3, repeat=1),
        )

    class Timing(L.Callback):
        def on_train_start(self, trainer, pl_module):
            if profiler:
                profiler.start()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            timer.begin()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            timer.end(batch["num_tokens"])
            if profiler:
                profiler.step()

        def on_train_end(self, trainer, pl_module):
            if profiler:
                profiler.stop()
                with open(profile_to, "w") as f:
                    f.write(profiler.key_averages().table(sort_by="self_cuda_time_total", row_limit=40))

    with tempfile.TemporaryDirectory() as tmp:
        module = DPOModule(policy, reference=reference, beta=0.1, precompute_reference=precompute,
                           reference_cache_dir=os.path.join(tmp, "ref"), optim=OptimizerConfig(lr=5e-7, warmup_ratio=0.1))
        data = _ListData(pairs, PreferenceCollator(0, packing=packing), w.batch_size)
        trainer = L.Trainer(
            accelerator=device.type, devices=1, precision=precision, max_steps=w.steps, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[Timing()], limit_val_batches=0, default_root_dir=tmp,
        )
        del policy, reference
        with MemoryMeter(device) as mem:
            trainer.fit(module, datamodule=data)
        result = timer.summary(name, w, params, live_reference=not precompute, mem=mem, peak_flops=peak_flops)
    del module, trainer, data
    _free(device)
    return result


def run_trl(
    name: str,
    w: Workload,
    pairs: list[dict[str, Any]],
    make_model,
    tokenizer,
    device: torch.device,
    *,
    precompute: bool,
    gradient_checkpointing: bool,
    bf16: bool,
    peak_flops: float | None = None,
) -> Result:
    """TRL's DPOTrainer on the same weights and pairs. Its tokenisation step is bypassed (the pairs are
    already token ids); everything it does per step is kept."""
    import datasets
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    rows = [{"prompt_ids": p["prompt_input_ids"], "chosen_ids": p["chosen_input_ids"],
             "rejected_ids": p["rejected_input_ids"]} for p in pairs]
    dataset = datasets.Dataset.from_list(rows)
    policy, reference = make_model(), (None if precompute else make_model())
    params = sum(p.numel() for p in policy.parameters())
    timer = StepTimer(device)

    class Timing(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            timer.begin()

        def on_step_end(self, args, state, control, **kwargs):
            timer.end(step_tokens.pop(0) if step_tokens else 0)

    # TRL does not report tokens per step; its sampler is seeded, so take the tokens of each batch from
    # the collator as it is called.
    step_tokens: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(
            output_dir=tmp, per_device_train_batch_size=w.batch_size, max_length=w.max_length, learning_rate=5e-7,
            beta=0.1, max_steps=w.steps, logging_steps=10_000, save_strategy="no", report_to="none",
            gradient_checkpointing=gradient_checkpointing, precompute_ref_log_probs=precompute, bf16=bf16,
            use_cpu=device.type == "cpu", dataloader_num_workers=0, seed=w.seed, warmup_steps=0.1,
        )
        with _identity_prepare(DPOTrainer):
            trainer = DPOTrainer(policy, ref_model=reference, args=config, train_dataset=dataset, processing_class=tokenizer)
        collate = trainer.data_collator

        def counting_collate(examples):
            batch = collate(examples)
            step_tokens.append(int(batch["attention_mask"].sum()))  # batches are collated in step order
            return batch

        trainer.data_collator = counting_collate
        trainer.add_callback(Timing())
        del policy, reference
        with MemoryMeter(device) as mem:
            if precompute:
                # Precomputing happens while building the train dataloader; it is not part of a step.
                trainer.get_train_dataloader()
                step_tokens.clear()
            trainer.train()
        result = timer.summary(name, w, params, live_reference=not precompute, mem=mem, peak_flops=peak_flops)
    del trainer
    _free(device)
    return result


@contextlib.contextmanager
def _identity_prepare(trainer_class):
    original = trainer_class._prepare_dataset
    trainer_class._prepare_dataset = lambda self, dataset, *args, **kwargs: dataset
    try:
        yield
    finally:
        trainer_class._prepare_dataset = original


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def print_table(results: list[Result], baseline: dict[str, str]) -> None:
    """Print results and, for each run named in ``baseline``, the ratio to its baseline run."""
    by_name = {r.name: r for r in results}
    header = f"{'run':<34} {'pairs/s':>9} {'tokens/s':>10} {'s/step':>8} {'peak GiB':>9} {'MFU':>6} {'vs':>22}"
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = ""
        if r.name in baseline and baseline[r.name] in by_name:
            base = by_name[baseline[r.name]]
            ratio = f"{r.pairs_per_s / base.pairs_per_s:.2f}x / {r.peak_mem_gib / max(base.peak_mem_gib, 1e-9):.2f}x mem"
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "-"
        print(f"{r.name:<34} {r.pairs_per_s:>9.2f} {r.tokens_per_s:>10.0f} {r.step_s:>8.3f} {r.peak_mem_gib:>9.2f} {mfu:>6} {ratio:>22}")
