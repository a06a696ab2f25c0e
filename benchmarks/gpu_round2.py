"""Performance, round two (issues 13, 14, 18): every GPU measurement in one script, one JSON.

    python benchmarks/gpu_round2.py --out $OUT/gpu_round2.json            # on the lent GPU (via run_gpu.sh)
    python benchmarks/gpu_round2.py --smoke --out /tmp/smoke.json          # same code paths, tiny shapes, CPU
    python benchmarks/gpu_round2.py --list                                 # the entries, their tiers and limits

What it measures, each against TRL 1.16 in the same run, on random-init Mistral-architecture models:
  (a) dSFT, 1.10B (hidden 2048, 22 layers, 32 heads, 4 KV heads, FFN 5632, vocab 32000), max length 2048,
      8 packed rows per step: ours (SFTModule + SFTDataModule packing, varlen attention, chunked log-probs,
      compiled decoder layers) vs SFTTrainer (packing + padding_free; its default gradient checkpointing and
      without); tokens/s, MFU, peak memory; and a loss + gradient cross-check on the same rows.
  (b) dDPO, 1.10B, 8 pairs per step (prompts 64-384 tokens, completions 32-640): ours with a live reference
      and with precomputed reference log-probs vs DPOTrainer; pairs/s, MFU, peak memory.
  (c) a torch.profiler summary of ours' DPO steps (top kernels, share of matmul / attention / compiled /
      elementwise / optimizer), in the JSON under the live-reference run.
  (d) dDPO of a Mistral-7B-shaped model (hidden 4096, 32 layers, 32 heads, 8 KV heads, FFN 14336, vocab
      32000), max length 1024, 4 pairs per step, full parameters with activation checkpointing; each run in its
      own process, so running out of memory is a result.
  (e) checks: varlen attention vs sdpa, packed vs padded DPO losses, and the share of trainable elements one
      AdamW step at lr 5e-7 changes (update survival) in ours' precision set-up and in the old one.
  (f) dDPO of the 7B shape with LoRA and QLoRA (issue 14.8), the adapters of the alignment handbook's QLoRA dDPO
      recipe (r 128, alpha 128, dropout 0.05, the 7 projections; read from conf/experiment/zephyr_7b_dpo_qlora.yaml
      and conf/model/peft/lora.yaml), grad ckpt, each run in its own process: ours (ModelSpec(peft=...,
      quantization=None | "4bit", dtype="bfloat16"), bf16-mixed, compile, no reference model: the policy with its
      adapters disabled) vs DPOTrainer (the base loaded the same way, the same LoraConfig as peft_config,
      ref_model=None, bf16=True); pairs/s, peak memory (ours from the first training step, as TRL's is: the
      model is built before its meter starts). QLoRA needs CUDA; its two runs load one bf16 base saved once
      (~14 GB, inside the first run's time limit, outside its clock). MFU here counts 6 x the base parameters per
      token (forward, activation gradients, the reference pass). A tier-2 entry repeats ours' QLoRA without
      compile, in case compiling through bitsandbytes fails.

Precision, beside every figure (issue 13): ours = fp32 master weights, bf16 compute (model loaded in float32,
Lightning precision="bf16-mixed", i.e. autocast), frozen reference in bf16. TRL = loaded in float32 with
bf16=True (its documented mixed precision); "TRL default" = what DPOTrainer does given a model id (fp32
policy and fp32 reference, bf16=True, gradient checkpointing on). Rows marked "old" are the first round's
pure-bf16 set-up (bf16 weights, plain AdamW), kept only to compare with the earlier figures: that set-up
cannot train at lr 5e-7. LoRA/QLoRA rows (f): frozen bf16 or 4-bit base, fp32 adapters under bf16 autocast on
both sides, except that TRL casts QLoRA adapters to bf16 (its rule for quantized bases).

Attention: ours uses torch's varlen FlashAttention kernel (``attn_implementation=varlen``, registered by this
project); TRL's SFT padding-free path needs a FlashAttention, and flash-attn cannot be installed on the lent
machine, so TRL's SFT runs get the same registered kernel (TRL's collator passes the sequence boundaries
it expects); TRL's DPO path is padded and uses sdpa.

MFU = model FLOPs / time / 989 TFLOP/s (dense bf16, H100/H200): 6 x params per trained token, plus 2 x params
per token for a live reference; attention and recomputation are not counted.

Limits: each entry has a time limit, the whole run a budget (``--budget-s``, default 480 s); tier-1 entries run
first, tier 2 fill the time left; results are written after every entry, so a timeout keeps what finished.
``--entries`` takes entry names, groups (e.g. ``7b_lora``, ``7b_qlora``) and tiers. Adding a run: one more `Entry`
in `entries()`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import H100_BF16_PEAK, Result  # noqa: E402
from entry_runner import Entry, Summary, child_argv, run_child, run_parent  # noqa: E402

# Architectures (MistralConfig values over the embedded default's: vocab 32000, rope theta 1e4, no sliding
# window, untied embeddings).
SHAPES: dict[str, dict[str, int]] = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4),
    "7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8),
    # the cross-check needs the real width, not the depth
    "1b_2layers": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=2, num_attention_heads=32,
                       num_key_value_heads=4),
}
SMOKE_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2)
MIXED = "bf16-mixed"  # Lightning's autocast over fp32 weights: ours' precision set-up
# Runs whose attention is the varlen kernel fed by fp32 weights under bf16 autocast (or bf16 weights): skipped
# when the check of that very path failed, instead of spending device time to fail the same way.
VARLEN_AUTOCAST = ("check_varlen:fp32_weights_bf16_autocast",)
VARLEN_BF16 = ("check_varlen:bf16_weights",)
CONF = Path(__file__).resolve().parent.parent / "conf"


def handbook_lora() -> dict[str, Any]:
    """The LoRA settings of ``+experiment=zephyr_7b_dpo_qlora`` (the alignment handbook's QLoRA dDPO recipe):
    the ``model/peft=lora`` group file with that experiment's overrides (r 128, alpha 128; dropout 0.05, the 7
    projections). Ours and TRL get the same settings."""
    import yaml

    settings = yaml.safe_load((CONF / "model" / "peft" / "lora.yaml").read_text())
    settings.update(yaml.safe_load((CONF / "experiment" / "zephyr_7b_dpo_qlora.yaml").read_text())["model"]["peft"])
    settings.pop("_target_", None)
    return settings


def mistral_params(shape: dict[str, int], vocab_size: int = 32000) -> int:
    """Parameters of an untied Mistral of ``shape``, from its matrices: counting tensor elements undercounts
    4-bit weights (two to a byte) and counts LoRA adapters, whose FLOPs the MFU convention leaves out."""
    hidden, ffn = shape["hidden_size"], shape["intermediate_size"]
    kv = hidden // shape["num_attention_heads"] * shape["num_key_value_heads"]
    layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * ffn + 2 * hidden  # q, o; k, v; MLP; two norms
    return 2 * vocab_size * hidden + shape["num_hidden_layers"] * layer + hidden


class Context:
    """What the entries of one child share: device, shapes and workloads (tiny with ``smoke``), the tokenizer,
    and the SFT data (tokenized once per child)."""

    def __init__(self, smoke: bool) -> None:
        import torch

        from zephyr_lightning import attention
        from zephyr_lightning.models import load_tokenizer

        self.torch = torch
        self.smoke = smoke
        self.device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
        self.peak_flops = H100_BF16_PEAK if self.device.type == "cuda" else None
        # inductor on the GPU; on CPU the compile path is traced by dynamo but not code-generated (fast smoke)
        self.compile = "inductor" if self.device.type == "cuda" else "eager"
        attention.register()
        self.tokenizer = load_tokenizer("builtin:tiny-mistral")
        self._sft: dict[str, Any] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="gpu_round2-")

    def shape(self, size: str) -> dict[str, int]:
        return dict(SMOKE_SHAPE) if self.smoke else dict(SHAPES[size])

    def spec(self, size: str, **fields: Any):
        from zephyr_lightning import ModelSpec

        fields.setdefault("attn_implementation", "varlen")
        return ModelSpec(name_or_path="builtin:tiny-mistral", seed=0, config_overrides=self.shape(size), **fields)

    def factory(self, size: str, dtype: str, attn: str, quantization: str | None = None):
        """A function building the model on the device (random init from the seed: the same weights as ours);
        ``quantization="4bit"``: the bf16 weights of `saved_base`, loaded in 4-bit as ours loads them (no
        adapter: TRL adds its own)."""
        from zephyr_lightning.models import load_causal_lm

        def build():
            with self.torch.device(self.device):
                return load_causal_lm(self.spec(size, dtype=dtype, attn_implementation=attn, quantization=quantization))

        return build

    def saved_base(self, size: str) -> dict[str, Any]:
        """Save the built-in model of ``size`` in bf16 once, to the folder a quantized load reads
        (`models.builtin_folder`, keyed by seed, shape and dtype), before a run starts its clock and its memory
        meter. Ours and TRL's QLoRA runs, each in its own process, load the same folder; whichever runs first
        pays the save (7B shapes: ~14 GB), the other finds it."""
        from common import free

        from zephyr_lightning.models import builtin_folder

        t0 = time.perf_counter()
        with self.torch.device(self.device):  # built (in float32, then cast) on the GPU: seconds, not minutes
            folder = builtin_folder(self.spec(size, dtype="bfloat16"))
        free(self.device)
        return {"base_folder": str(folder), "base_folder_s": round(time.perf_counter() - t0, 1)}

    def pairs(self, size: str):
        from dpo_runs import PairWorkload, make_pairs

        if self.smoke:
            w = PairWorkload(pairs=16, batch_size=2, prompt_range=(8, 32), completion_range=(4, 24), max_length=128,
                             steps=3, warmup=1)
        elif size == "7b":
            w = PairWorkload(pairs=48, batch_size=4, max_length=1024, steps=6, warmup=2)  # <= 384 + 640 tokens
        else:
            w = PairWorkload(pairs=160, batch_size=8, steps=12, warmup=3)
        return w, make_pairs(w)

    def sft(self, size: str):
        """(workload, our data module, TRL's dataset): the same tokenized dialogues for both."""
        if size not in self._sft:
            from sft_runs import (
                DialogueWorkload,
                sft_datamodule,
                synthetic_dialogues,
                trl_dataset,
                write_split,
            )

            if self.smoke:
                w = DialogueWorkload(dialogues=40, turns=(1, 2), user_words=(4, 24), assistant_words=(8, 48),
                                     max_length=256, batch_size=2, steps=3, warmup=1)
            else:
                # ultrachat-like: 1-4 turns, ~1100 tokens on average; some reach max_length and are cut
                w = DialogueWorkload(dialogues=320, turns=(1, 4), user_words=(16, 200), assistant_words=(64, 600),
                                     max_length=2048, batch_size=8, steps=12, warmup=3)
            path = write_split(synthetic_dialogues(w, self.tokenizer), Path(self._tmp.name) / f"sft-{size}")
            dm = sft_datamodule(str(path), self.tokenizer, w)
            self._sft[size] = (w, dm, trl_dataset(dm))
        return self._sft[size]


# ----------------------------------------------------------------------------------------- entry builders

def _result(result: Result, **notes: Any) -> dict[str, Any]:
    out = result.to_dict()
    out["extra"].update(notes)
    return out


def dpo_ours(size: str, *, precompute: bool = False, checkpointing: bool = False, compile: bool = True,
             old_bf16: bool = False, profile_steps: int = 0, lora: bool = False, quantization: str | None = None):
    """Ours: fp32 policy + bf16 reference under bf16-mixed (``old_bf16``: bf16 policy, bf16-true). ``lora``: the
    handbook's adapters on a frozen bf16 base (``quantization="4bit"``: QLoRA) and no reference model: DPOModule
    runs the policy with its adapters disabled, the adapters' starting point."""

    def run(ctx: Context) -> dict[str, Any]:
        from dpo_runs import run_ours_dpo

        w, pairs = ctx.pairs(size)
        backend = ctx.compile if compile else False
        notes: dict[str, Any] = ctx.saved_base(size) if quantization else {}
        policy = ctx.spec(size, dtype="bfloat16" if old_bf16 or lora else "float32",
                          gradient_checkpointing=checkpointing, compile=backend,
                          peft=handbook_lora() if lora else None, quantization=quantization)
        reference = None if lora else ctx.spec(size, dtype="bfloat16", compile=backend)
        precision = "bf16-true" if old_bf16 else MIXED
        # LoRA: 2 x base params per token forward, 2 backward (activation gradients only), 2 for the reference pass.
        flops = 6 * mistral_params(ctx.shape(size)) if lora else None
        result = run_ours_dpo(f"ours {size}", w, pairs, policy, reference, ctx.device, packing=True,
                              precompute=precompute, precision=precision, peak_flops=ctx.peak_flops,
                              profile_steps=profile_steps, peak_from_training=lora, flops_per_token=flops)
        if lora:
            base = "4-bit NF4 base (peft's kbit preparation: norms, embeddings, head in fp32)" if quantization \
                else "bf16 base"
            set_up = f"{base}, frozen; fp32 LoRA adapters; bf16 autocast; reference = base with adapters disabled"
        elif old_bf16:
            set_up = "pure bf16 weights, plain AdamW (old)"
        else:
            set_up = "fp32 master weights, bf16 autocast, bf16 reference"
        if lora:
            notes.update(lora=handbook_lora(), mfu_params=mistral_params(ctx.shape(size)))
        return _result(result, set_up=set_up, attention="varlen", compile=backend, gradient_checkpointing=checkpointing,
                       batch_pairs=w.batch_size, **notes)

    return run


def dpo_trl(size: str, *, precompute: bool = False, checkpointing: bool = True, policy_dtype: str = "float32",
            reference_dtype: str = "float32", lora: bool = False, quantization: str | None = None):
    """TRL's DPOTrainer with bf16=True (autocast) over weights of ``policy_dtype``. ``lora``: the handbook's
    adapters as its ``peft_config`` and ``ref_model=None`` (TRL disables the adapter for the reference pass);
    ``quantization="4bit"``: the base loaded in 4-bit as ours loads it, prepared by TRL itself."""

    def run(ctx: Context) -> dict[str, Any]:
        from dpo_runs import run_trl_dpo

        w, pairs = ctx.pairs(size)
        notes: dict[str, Any] = ctx.saved_base(size) if quantization else {}
        peft_config, make_reference, flops = None, ctx.factory(size, reference_dtype, "sdpa"), None
        set_up = f"{policy_dtype} policy, {reference_dtype} reference, bf16=True (autocast)"
        if lora:
            from peft import LoraConfig

            peft_config = LoraConfig(**handbook_lora())
            make_reference = None
            flops = 6 * mistral_params(ctx.shape(size))  # as ours' LoRA runs count them
            adapters = "LoRA adapters cast to bf16 (TRL's QLoRA rule)" if quantization else "fp32 LoRA adapters"
            base = "4-bit NF4 base (no kbit preparation: TRL does none)" if quantization else f"{policy_dtype} base"
            set_up = f"{base}, frozen; {adapters}; bf16=True (autocast); ref_model=None: adapter disabled"
            notes.update(lora=handbook_lora(), mfu_params=mistral_params(ctx.shape(size)))
        result = run_trl_dpo(f"trl {size}", w, pairs, ctx.factory(size, policy_dtype, "sdpa", quantization),
                             make_reference, ctx.tokenizer, ctx.device, precompute=precompute,
                             gradient_checkpointing=checkpointing, bf16=True, peak_flops=ctx.peak_flops,
                             peft_config=peft_config, flops_per_token=flops)
        return _result(result, set_up=set_up, attention="sdpa (padded)", batch_pairs=w.batch_size, **notes)

    return run


def sft_ours(size: str, *, checkpointing: bool = False, compile: bool = True, profile_steps: int = 0,
             spec: dict | None = None):
    def run(ctx: Context) -> dict[str, Any]:
        from sft_runs import data_facts, run_ours_sft

        w, dm, _ = ctx.sft(size)
        backend = ctx.compile if compile else False
        model = ctx.spec(size, dtype="float32", gradient_checkpointing=checkpointing, compile=backend, **(spec or {}))
        result = run_ours_sft(f"ours {size}", w, dm, model, ctx.device, precision=MIXED, peak_flops=ctx.peak_flops,
                              profile_steps=profile_steps)
        return _result(result, set_up="fp32 master weights, bf16 autocast", attention="varlen", compile=backend,
                       gradient_checkpointing=checkpointing, data=data_facts(dm), rows_per_step=w.batch_size,
                       max_length=w.max_length)

    return run


def sft_trl(size: str, *, checkpointing: bool, peft: dict | None = None):
    def run(ctx: Context) -> dict[str, Any]:
        from sft_runs import run_trl_sft

        w, _, rows = ctx.sft(size)
        peft_config = None
        if peft is not None:
            from peft import LoraConfig

            peft_config = LoraConfig(**peft)
        result = run_trl_sft(f"trl {size}", w, rows, ctx.factory(size, "float32", "varlen"), ctx.tokenizer,
                             ctx.device, gradient_checkpointing=checkpointing, bf16=True, peak_flops=ctx.peak_flops,
                             peft_config=peft_config)
        return _result(result, set_up="fp32 weights, bf16=True (autocast)", packing="bfd + padding_free",
                       attention="varlen (the same registered kernel as ours)", rows_per_step=w.batch_size,
                       max_length=w.max_length)

    return run


def sft_crosscheck(ctx: Context) -> dict[str, Any]:
    from sft_runs import loss_crosscheck

    _, dm, rows = ctx.sft("1b")
    out = loss_crosscheck(dm, rows, ctx.factory("1b_2layers", "float32", "varlen"), ctx.tokenizer, ctx.device,
                          bf16=True)
    out["model"] = "1.1B width, 2 layers" if not ctx.smoke else "smoke shape"
    return out


def check(name: str):
    def run(ctx: Context) -> dict[str, Any]:
        import gpu_checks

        return getattr(gpu_checks, name)(ctx.device)

    return run


def survival(size: str, *, old_bf16: bool):
    def run(ctx: Context) -> dict[str, Any]:
        from gpu_checks import update_survival

        # Padded batches and sdpa: the check is about the optimizer step, whatever the attention kernel.
        policy = ctx.spec(size, dtype="bfloat16" if old_bf16 else "float32", attn_implementation="sdpa")
        reference = ctx.spec(size, dtype="bfloat16", attn_implementation="sdpa")
        out = update_survival(ctx.device, policy, reference, precision="bf16-true" if old_bf16 else MIXED)
        out["set_up"] = "bf16 weights, plain AdamW (old)" if old_bf16 else "fp32 master weights, bf16 autocast"
        if old_bf16:
            out["ok"] = True  # the old set-up is expected to lose updates: recorded, not a failure
        return out

    return run


def entries() -> list[Entry]:
    """Every measurement, in the order tier 1 runs; tier 2 follows if the budget allows."""
    live_vs = "dpo_1b_trl_default"
    return [
        # tier 1: checks; (b) + (c) and (a), main rows; (d); (f); then the other tier-1 variants
        Entry("check_varlen", "varlen attention on a packed row vs sdpa per sequence (bf16 weights; fp32 + autocast)",
              check("varlen_vs_sdpa"), 90, group="1b"),
        Entry("check_packed_dpo", "packed vs padded DPO losses (fp32 policy, bf16 reference, autocast)",
              check("packed_vs_padded_dpo"), 90, group="1b"),
        Entry("check_survival_1b", "1.1B: share of elements one AdamW step at lr 5e-7 changes, ours' set-up",
              survival("1b", old_bf16=False), 150, group="1b"),
        Entry("dpo_1b_ours_live", "1.1B dDPO, ours, live reference, compile; then 2 profiled steps",
              dpo_ours("1b", profile_steps=2), 300, group="1b", baseline=live_vs, requires=VARLEN_AUTOCAST),
        Entry("dpo_1b_trl_default", "1.1B dDPO, TRL default: fp32 policy + fp32 reference, bf16=True, grad ckpt",
              dpo_trl("1b"), 180, group="1b"),
        Entry("sft_1b_ours", "1.1B dSFT, ours: packed, varlen, chunked log-probs, compile",
              sft_ours("1b"), 240, group="1b", baseline="sft_1b_trl", requires=VARLEN_AUTOCAST),
        Entry("sft_1b_trl", "1.1B dSFT, TRL SFTTrainer packing + padding_free, no grad ckpt (fastest)",
              sft_trl("1b", checkpointing=False), 180, group="1b", requires=VARLEN_AUTOCAST),
        Entry("sft_crosscheck", "dSFT loss and gradients, ours vs TRL, same packed rows and weights (bf16 autocast)",
              sft_crosscheck, 150, group="1b", requires=VARLEN_AUTOCAST),
        Entry("dpo_7b_ours_ckpt", "7B-shaped dDPO, ours, live bf16 reference, grad ckpt, compile",
              dpo_ours("7b", checkpointing=True), 420, isolate=True, baseline="dpo_7b_trl_ckpt", requires=VARLEN_AUTOCAST),
        Entry("dpo_7b_trl_ckpt", "7B-shaped dDPO, TRL: fp32 policy + bf16 reference, bf16=True, grad ckpt",
              dpo_trl("7b", reference_dtype="bfloat16"), 360, isolate=True),
        # (f) issue 14.8: LoRA and QLoRA with the handbook's QLoRA dDPO adapters; each side's reference is its own
        # base with the adapters disabled (no second model). The QLoRA limits include saving the bf16 base once
        # (~14 GB), which the two runs share.
        Entry("dpo_7b_ours_lora", "7B-shaped dDPO, ours, LoRA r 128 on a bf16 base, reference = adapters off, grad ckpt, "
              "compile", dpo_ours("7b", lora=True, checkpointing=True), 420, group="7b_lora", isolate=True,
              baseline="dpo_7b_trl_lora", requires=VARLEN_AUTOCAST + VARLEN_BF16),
        Entry("dpo_7b_trl_lora", "7B-shaped dDPO, TRL, the same LoRA as peft_config on a bf16 base, ref_model=None, "
              "bf16=True, grad ckpt", dpo_trl("7b", lora=True, policy_dtype="bfloat16"), 360, group="7b_lora",
              isolate=True),
        Entry("dpo_7b_ours_qlora", "7B-shaped dDPO, ours, QLoRA: LoRA r 128 on a 4-bit NF4 base, reference = adapters "
              "off, grad ckpt, compile", dpo_ours("7b", lora=True, quantization="4bit", checkpointing=True), 540,
              group="7b_qlora", isolate=True, needs_cuda=True, baseline="dpo_7b_trl_qlora",
              requires=VARLEN_AUTOCAST + VARLEN_BF16),
        Entry("dpo_7b_trl_qlora", "7B-shaped dDPO, TRL, the same LoRA as peft_config on the same 4-bit base, "
              "ref_model=None, bf16=True, grad ckpt", dpo_trl("7b", lora=True, quantization="4bit",
              policy_dtype="bfloat16"), 480, group="7b_qlora", isolate=True, needs_cuda=True),
        # tier 1, after the 7B runs: the memory-matched and precomputed variants (with their TRL baseline)
        Entry("dpo_1b_ours_live_ckpt", "1.1B dDPO, ours, live reference, compile + activation checkpointing",
              dpo_ours("1b", checkpointing=True), 200, group="1b_more", baseline=live_vs, requires=VARLEN_AUTOCAST),
        Entry("dpo_1b_ours_precomputed", "1.1B dDPO, ours, precomputed reference log-probs, compile",
              dpo_ours("1b", precompute=True), 200, group="1b_more", baseline="dpo_1b_trl_precomputed", requires=VARLEN_AUTOCAST),
        Entry("dpo_1b_trl_precomputed", "1.1B dDPO, TRL precompute_ref_log_probs, fp32 + bf16=True, grad ckpt",
              dpo_trl("1b", precompute=True), 180, group="1b_more"),
        Entry("sft_1b_trl_default", "1.1B dSFT, TRL SFTTrainer packing + padding_free, grad ckpt (its default)",
              sft_trl("1b", checkpointing=True), 180, group="1b_more", requires=VARLEN_AUTOCAST),
        # tier 2: the old set-up for the earlier figures, more baselines, FSDP, more 7B variants
        Entry("check_survival_1b_old", "1.1B: update survival in the old pure-bf16 set-up (expected to lose most)",
              survival("1b", old_bf16=True), 120, group="1b_extra", tier=2),
        Entry("dpo_1b_ours_bf16_old", "1.1B dDPO, ours, pure bf16 (old set-up), compile",
              dpo_ours("1b", old_bf16=True), 200, group="1b_extra", tier=2, baseline="dpo_1b_trl_bf16_old", requires=VARLEN_BF16),
        Entry("dpo_1b_trl_bf16_old", "1.1B dDPO, TRL, bf16 weights + bf16=True (old set-up), grad ckpt",
              dpo_trl("1b", policy_dtype="bfloat16", reference_dtype="bfloat16"), 180, group="1b_extra", tier=2),
        Entry("dpo_1b_trl_bf16ref", "1.1B dDPO, TRL with ours' set-up: fp32 policy, bf16 reference, grad ckpt",
              dpo_trl("1b", reference_dtype="bfloat16"), 180, group="1b_extra", tier=2),
        Entry("sft_1b_ours_ckpt", "1.1B dSFT, ours with activation checkpointing, compile",
              sft_ours("1b", checkpointing=True), 200, group="1b_extra", tier=2, baseline="sft_1b_trl_default", requires=VARLEN_AUTOCAST),
        Entry("check_fsdp", "FSDP (1 GPU), fp32 shards + bf16-mixed: updates survive, reference untouched, export",
              check("fsdp_round_trip"), 150, group="1b_extra", tier=2, needs_cuda=True),
        Entry("dpo_7b_ours_precomputed_ckpt", "7B-shaped dDPO, ours, precomputed reference, grad ckpt, compile",
              dpo_ours("7b", precompute=True, checkpointing=True), 420, isolate=True, tier=2, requires=VARLEN_AUTOCAST),
        Entry("dpo_7b_trl_default", "7B-shaped dDPO, TRL default: fp32 policy + fp32 reference, grad ckpt",
              dpo_trl("7b"), 360, isolate=True, tier=2),
        Entry("dpo_7b_ours_ckpt_eager", "7B-shaped dDPO, ours, live reference, grad ckpt, no compile",
              dpo_ours("7b", checkpointing=True, compile=False), 360, isolate=True, tier=2,
              baseline="dpo_7b_trl_ckpt", requires=VARLEN_AUTOCAST),
        Entry("dpo_7b_ours_qlora_eager", "7B-shaped dDPO, ours, QLoRA as dpo_7b_ours_qlora without compile (in case "
              "compiling through bitsandbytes fails)", dpo_ours("7b", lora=True, quantization="4bit", checkpointing=True,
              compile=False), 480, group="7b_qlora_more", isolate=True, tier=2, needs_cuda=True, baseline="dpo_7b_trl_qlora",
              requires=VARLEN_AUTOCAST + VARLEN_BF16),
    ]


def select(all_entries: list[Entry], spec: str, cuda: bool) -> list[Entry]:
    """``all``, ``tier1``, ``tier2``, group names and entry names, comma-separated; table order, tier 1 first."""
    tokens = [t.strip() for t in spec.split(",") if t.strip()]
    known = {e.name for e in all_entries} | {e.group for e in all_entries if e.group} | {"all", "tier1", "tier2"}
    unknown = [t for t in tokens if t not in known]
    if unknown:
        raise SystemExit(f"--entries: unknown {unknown}; see --list")
    chosen = [e for e in all_entries if "all" in tokens or f"tier{e.tier}" in tokens or e.name in tokens
              or e.group in tokens]
    if not cuda:
        chosen = [e for e in chosen if not e.needs_cuda]
    return sorted(chosen, key=lambda e: e.tier)  # stable: table order within a tier


def env_info() -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cpu_threads": torch.get_num_threads()}
    for package in ("transformers", "lightning", "trl", "datasets", "peft", "bitsandbytes", "accelerate"):
        try:
            info[package] = md.version(package)
        except md.PackageNotFoundError:
            info[package] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30)
    else:
        info["device"] = "cpu"
    return info


def ratios(records: dict[str, Any]) -> dict[str, Any]:
    """Each entry with a baseline that also finished: speed (tokens/s and items/s) and peak-memory ratios."""
    out = {}
    for name, record in records.items():
        base = records.get(record.get("baseline") or "")
        if not base or record.get("status") != "ok" or base.get("status") != "ok":
            continue
        r, b = record["result"], base["result"]
        out[name] = {"vs": record["baseline"], "tokens_per_s": r["tokens_per_s"] / b["tokens_per_s"],
                     "items_per_s": r["items_per_s"] / b["items_per_s"],
                     "peak_memory": r["peak_mem_gib"] / max(b["peak_mem_gib"], 1e-9)}
    return out


def print_report(summary: dict[str, Any]) -> None:
    print(f"\n{summary.get('env', {}).get('device')}; {'SMOKE (tiny shapes, CPU)' if summary['smoke'] else ''}")
    header = f"{'entry':<30} {'status':<8} {'items/s':>9} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9}  vs baseline"
    print(header + "\n" + "-" * len(header))
    for name, record in summary["entries"].items():
        result = record.get("result") or {}
        if "tokens_per_s" in result:
            mfu = f"{100 * result['mfu']:.1f}%" if result.get("mfu") is not None else "-"
            ratio = summary["ratios"].get(name)
            vs = f"{ratio['tokens_per_s']:.2f}x tok/s, {ratio['peak_memory']:.2f}x mem" if ratio else ""
            print(f"{name:<30} {record['status']:<8} {result['items_per_s']:>9.2f} {result['tokens_per_s']:>10.0f} "
                  f"{mfu:>6} {result['peak_mem_gib']:>9.2f}  {vs}")
        else:
            detail = "ok" if result.get("ok") else (record.get("reason") or result.get("error") or "")
            print(f"{name:<30} {record['status']:<8} {str(detail)[:100]}")
    profile = (summary["entries"].get("dpo_1b_ours_live", {}).get("result") or {}).get("extra", {}).get("profile")
    if profile:
        from profile_summary import format_summary

        print("\nprofile of ours' DPO step (dpo_1b_ours_live):\n" + format_summary(profile))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_round2.json")
    parser.add_argument("--entries", default="all", help="all, tier1, tier2, group or entry names (comma-separated)")
    parser.add_argument("--budget-s", type=float, default=None, help="total seconds (default 480; smoke 420)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: the same code paths, about a minute")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--failed", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    table = entries()
    if args.list:
        for e in table:
            where = f"{e.group} (own process)" if e.group and e.isolate else e.group or "(own process)"
            print(f"tier {e.tier}  {e.name:<30} {e.timeout_s:>4} s  {where:<22} {e.what}")
        return
    if args.child:
        by_name = {e.name: e for e in table}
        run_child(by_name, args.entries.split(","), args.events, lambda: Context(args.smoke), env_info,
                  failed={f for f in args.failed.split(",") if f})
        return

    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    cuda = not args.smoke and _cuda_visible()
    order = select(table, args.entries, cuda)
    budget = args.budget_s or (420 if args.smoke else 480)
    summary = Summary(args.out, {
        "script": "benchmarks/gpu_round2.py", "argv": sys.argv[1:], "smoke": args.smoke, "budget_s": budget,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "precision": {"ours": "fp32 weights + bf16-mixed (autocast), bf16 frozen reference",
                      "trl": "weights as named per run, bf16=True (autocast)",
                      "old": "bf16 weights, plain AdamW (the first round's figures)",
                      "lora": "frozen bf16 or 4-bit base, fp32 adapters (TRL's QLoRA: bf16), bf16 autocast"},
        "mfu_peak_flops": H100_BF16_PEAK, "entries": {}, "ratios": {},
    })
    t0 = time.monotonic()

    def on_result(entry: Entry, record: dict) -> None:
        summary.data["ratios"] = ratios(summary.data["entries"])

    extra = ["--smoke"] if args.smoke else []
    run_parent(order, summary, child_argv(Path(__file__).resolve(), extra), budget, args.out.parent / "logs", on_result)
    summary.data["ratios"] = ratios(summary.data["entries"])
    summary.data["elapsed_s"] = round(time.monotonic() - t0, 1)
    summary.save()
    print_report(summary.data)
    print(f"\n{len(order)} entries in {summary.data['elapsed_s']:.0f} s; JSON: {args.out}")


def _cuda_visible() -> bool:
    # Without initialising CUDA in this process (its context would hold memory the children need).
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


if __name__ == "__main__":
    main()
