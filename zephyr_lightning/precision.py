"""Will an optimizer step survive rounding? The dtype parameters are trained in, and what it can keep.

AdamW moves each weight by about ``lr`` per step (its normalised first steps move every weight by
exactly ``lr``). A weight stored in bfloat16 keeps 8 significant bits: around 0.01 its neighbours are
2**-14 ~ 6e-5 apart, so any update below half of that, 3e-5, rounds back to the old value. DPO's lr
(5e-7) and dSFT's (2e-5) are both below it: bf16 weights updated in place barely train. Keeping fp32
master weights (load float32, compute with ``bf16-mixed``) or an optimizer that rounds stochastically
fixes it. This module answers the question from a config (`trainable_dtype`, `rounded_update_problem`:
used by config validation) and from a live step (`sample_parameters`, `changed_share`: used by the
`UpdateGuard` callback and the tests).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from zephyr_lightning.models import parse_dtype

# The size of a typical weight of a trained LM (initialisations draw from N(0, 0.02)).
TYPICAL_WEIGHT = 1e-2
LOW_PRECISION = (torch.bfloat16, torch.float16)
# Lightning precisions that convert the module's parameters themselves.
_TRUE_PRECISIONS = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64,
                    "32-true": None, "32": None, 32: None, "64": torch.float64, 64: torch.float64}


def half_spacing(dtype: torch.dtype, magnitude: float = TYPICAL_WEIGHT) -> float:
    """Half the distance between neighbouring values of ``dtype`` near ``magnitude``: a smaller update
    to a weight of that size rounds back to the weight (round to nearest)."""
    exponent = math.floor(math.log2(abs(magnitude)))
    return 0.5 * torch.finfo(dtype).eps * 2.0**exponent


def trainable_dtype(model_dtype: str | None, precision: str | int | None, *, adapters: bool = False) -> torch.dtype | None:
    """The dtype the optimizer updates, for a model loaded as ``model_dtype`` and trained with Lightning
    ``precision``. ``*-true`` precisions convert the parameters; ``*-mixed`` ones (autocast, and FSDP's
    mixed precision) keep them as loaded. PEFT adapters are created in float32. None: unknown (``auto``)."""
    if precision in _TRUE_PRECISIONS and _TRUE_PRECISIONS[precision] is not None:
        return _TRUE_PRECISIONS[precision]
    if adapters:
        return torch.float32
    return parse_dtype(model_dtype)


def masters_kept(strategy: str | None, precision: str | int | None) -> bool:
    """Whether the strategy keeps fp32 master weights itself (DeepSpeed's bf16/fp16 mixed precision)."""
    return bool(strategy) and "deepspeed" in str(strategy).lower() and str(precision).endswith("-mixed")


def rounded_update_problem(dtype: torch.dtype | None, lr: float) -> str | None:
    """Why AdamW at ``lr`` loses its updates on ``dtype`` weights, or None when they survive."""
    if dtype not in LOW_PRECISION:
        return None
    limit = half_spacing(dtype)
    if lr >= limit:
        return None
    name = str(dtype).removeprefix("torch.")
    return (f"AdamW would update {name} weights in place with steps of about lr={lr:g}, below half the {name} "
            f"spacing of a typical weight (|w|~{TYPICAL_WEIGHT:g}: {limit:.1e}), so almost every update rounds away")


@dataclass
class ParameterSample:
    """Fixed elements of each trainable parameter, taken before an optimizer step."""

    parameters: list[nn.Parameter]
    indices: list[torch.Tensor]
    before: list[torch.Tensor]
    moving: list[torch.Tensor]  # elements an fp32 update of size lr would move


def sample_parameters(parameters: Iterable[nn.Parameter], lr: float, per_tensor: int = 4096) -> ParameterSample:
    """Up to ``per_tensor`` evenly spaced elements of each trainable parameter that has a gradient,
    with the ones an update of size ``lr`` would move in float32 (a nonzero gradient, and ``lr`` above
    half the float32 spacing of the value), to compare after the step."""
    sample = ParameterSample([], [], [], [])
    fp32_eps = torch.finfo(torch.float32).eps
    for param in parameters:
        if not param.requires_grad or param.grad is None or param.numel() == 0:
            continue
        flat = param.detach().reshape(-1)
        index = torch.linspace(0, flat.numel() - 1, min(per_tensor, flat.numel()), device=flat.device).long()
        values = flat[index].clone()
        grad = param.grad.detach().reshape(-1)[index]
        # fp32 spacing of each value: 2**floor(log2|w|) * eps; an update below half of it is lost even in fp32.
        magnitude = values.float().abs().clamp_min(torch.finfo(torch.float32).tiny)
        spacing = torch.exp2(torch.floor(torch.log2(magnitude))) * fp32_eps
        moving = (grad != 0) & (lr > 0.5 * spacing)
        sample.parameters.append(param)
        sample.indices.append(index)
        sample.before.append(values)
        sample.moving.append(moving)
    return sample


def changed_share(sample: ParameterSample) -> tuple[int, int]:
    """(elements that changed, elements expected to change) among the sampled ones, after the step."""
    changed = expected = 0
    for param, index, before, moving in zip(sample.parameters, sample.indices, sample.before, sample.moving):
        after = param.detach().reshape(-1)[index]
        expected += int(moving.sum())
        changed += int(((after != before) & moving).sum())
    return changed, expected
