"""Variable-length ("varlen") attention for packed rows, without the flash-attn package.

Packed rows hold several sequences back to back, with position ids restarting at 0 for each. sdpa
can only honour that through a dense [tokens, tokens] mask, which costs as much as padding. PyTorch
(2.10+) ships FlashAttention's varlen kernel as ``torch.nn.attention.varlen.varlen_attn``; this module
registers it with transformers as the attention implementation ``"varlen"``:

- packed or unpadded input (no attention mask): one varlen call over all tokens of the batch, with
  cumulative sequence lengths from ``cu_seq_lens_q`` / ``max_length_q`` (our collators pass them, so
  there is no device-to-host sync) or, failing that, from the position ids;
- padded input (an attention mask): transformers' own sdpa path, unchanged;
- CPU tensors: the same sequence boundaries, computed by causal sdpa one sequence at a time (slow,
  but it lets the CPU test suite check the packing logic of this path).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

NAME = "varlen"


try:  # torch >= 2.10
    from torch.nn.attention.varlen import varlen_attn
except ImportError:
    varlen_attn = None


def torch_varlen_available() -> bool:
    return varlen_attn is not None


# Whether this torch's varlen_attn takes enable_gqa (2.13 does, 2.11 does not); set by `register`, so
# the attention function itself does no introspection (torch.compile would break the graph there).
_VARLEN_GQA = False


def _varlen_accepts_gqa() -> bool:
    return "enable_gqa" in inspect.signature(varlen_attn).parameters


def sequence_boundaries(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative sequence lengths (int32, starting at 0) and the longest sequence, from position ids
    that restart at 0 for every sequence (rows are laid end to end)."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0, as_tuple=True)[0]
    total = torch.tensor([flat.numel()], device=flat.device)
    cu = torch.cat([starts, total]).to(torch.int32)
    return cu, int(cu.diff().max())


def _repeat_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    # [tokens, kv_heads, dim] -> [tokens, kv_heads * groups, dim], kv head i serving query heads i*groups...
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


@torch.compiler.disable  # a data-dependent Python loop: keep it out of compiled graphs
def _cpu_varlen(q, k, v, cu: torch.Tensor, scale: float) -> torch.Tensor:
    out = torch.empty_like(q)
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        # sdpa wants [heads, tokens, dim]
        o = F.scaled_dot_product_attention(
            q[start:end].transpose(0, 1), k[start:end].transpose(0, 1), v[start:end].transpose(0, 1),
            is_causal=True, scale=scale,
        )
        out[start:end] = o.transpose(0, 1)
    return out


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function. ``query`` is [batch, heads, tokens, dim]; returns
    [batch, tokens, heads, dim] like the other implementations."""
    if attention_mask is not None or query.shape[2] != key.shape[2]:
        # Padded batches (and cached generation) keep the sdpa path.
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
            sliding_window=sliding_window, position_ids=position_ids, **kwargs,
        )
    if dropout:
        raise ValueError("the varlen attention path has no dropout; set attention_dropout=0 or use sdpa")
    batch, heads, tokens, dim = query.shape
    if cu_seq_lens_q is None:
        if position_ids is None:
            position_ids = torch.arange(tokens, device=query.device).expand(batch, tokens)
        cu_seq_lens_q, max_length_q = sequence_boundaries(position_ids.expand(batch, tokens))
    if sliding_window is not None and sliding_window < max_length_q:
        raise ValueError(f"sequences of {max_length_q} tokens exceed the model's sliding window ({sliding_window})")
    scale = scaling if scaling is not None else dim**-0.5
    # Under autocast over fp32 weights (fp32 master weights, bf16 compute) the rotary step hands over fp32
    # queries and keys beside bf16 values; the FlashAttention kernels take one 16-bit dtype, as transformers'
    # own flash path ensures (its get_target_dtype): compute in the autocast dtype.
    query, key, value = _kernel_inputs(query, key, value)
    # [batch, heads, tokens, dim] -> [batch * tokens, heads, dim]
    q = query.transpose(1, 2).reshape(batch * tokens, heads, dim)
    k = key.transpose(1, 2).reshape(batch * tokens, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(batch * tokens, value.shape[1], dim)
    groups = heads // k.shape[1]
    if q.is_cuda:
        extra: dict[str, Any] = {}
        if groups > 1 and _VARLEN_GQA:
            extra["enable_gqa"] = True
        else:
            k, v = _repeat_heads(k, groups), _repeat_heads(v, groups)
        cu = cu_seq_lens_q.to(device=q.device, dtype=torch.int32)
        # max_length_q stays as given: int() would pin a compiled graph to one length.
        out = varlen_attn(q, k, v, cu, cu, max_length_q, max_length_q, scale=scale, window_size=(-1, 0), **extra)
    else:
        out = _cpu_varlen(q, _repeat_heads(k, groups), _repeat_heads(v, groups), cu_seq_lens_q, scale)
    return out.reshape(batch, tokens, heads, dim), None


def _kernel_inputs(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` in one dtype: autocast's where it is on, else the 16-bit one among them, else as they are."""
    device = tensors[0].device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    else:
        half = [t.dtype for t in tensors if t.dtype in (torch.bfloat16, torch.float16)]
        dtype = half[0] if half else tensors[0].dtype
    return tuple(t.to(dtype) for t in tensors)


def _varlen_mask(*args: Any, **kwargs: Any):
    """Mask function: none for packed/unpadded input (sequence boundaries do the job), sdpa's otherwise."""
    if kwargs.get("attention_mask") is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **kwargs)


def register() -> bool:
    """Register ``"varlen"`` with transformers; False when this transformers cannot take it."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:
        return False
    global _VARLEN_GQA
    _VARLEN_GQA = torch_varlen_available() and _varlen_accepts_gqa()
    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionMaskInterface.register(NAME, _varlen_mask)
    return True
