"""Per-token and per-sequence log-probabilities of a causal LM, shared by SFT and DPO.

The vocabulary projection is the memory hog of LM training: a batch of 16k tokens over a 32k
vocabulary is 2 GiB of float32 logits, and autograd keeps several copies. Here logits are only
formed for the tokens that are scored (completion tokens in DPO, assistant tokens in SFT), a chunk
of tokens at a time, and recomputed in backward instead of being stored. Each chunk is upcast to
float32 before the log-sum-exp, so bf16 models still get float32 log-probs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from zephyr_lightning.adapters import unwrap

# About 128 MiB of float32 logits per chunk whatever the vocabulary size.
DEFAULT_CHUNK_ELEMENTS = 2**25


def _chunk_rows(vocab_size: int, chunk_elements: int) -> int:
    return max(16, chunk_elements // max(vocab_size, 1))


class _LinearLogProbs(torch.autograd.Function):
    """log softmax(hidden @ weight.T)[label] for each row, without keeping the logits.

    Forward keeps only the per-row log-sum-exp; backward recomputes each chunk's logits and turns them
    into the gradient ``(onehot(label) - softmax) * grad``.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, labels: Tensor, chunk_rows: int) -> Tensor:
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        for start in range(0, hidden.shape[0], chunk_rows):
            sl = slice(start, start + chunk_rows)
            logits = (hidden[sl] @ weight.t()).float()
            lse[sl] = torch.logsumexp(logits, dim=-1)
            out[sl] = logits.gather(-1, labels[sl, None]).squeeze(-1) - lse[sl]
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.chunk_rows = chunk_rows
        # Backward runs outside autocast; recompute the logits as forward formed them (bf16 GEMMs over fp32
        # master weights under bf16-mixed), not in fp32, which would triple the head's backward time.
        device = hidden.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return _LinearLogProbs._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out: Tensor):
        hidden, weight, labels, lse = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        for start in range(0, hidden.shape[0], ctx.chunk_rows):
            sl = slice(start, start + ctx.chunk_rows)
            g = grad_out[sl].float()
            grad_logits = torch.exp((hidden[sl] @ weight.t()).float() - lse[sl, None])
            grad_logits.mul_(-g[:, None])
            grad_logits.scatter_add_(-1, labels[sl, None], g[:, None])
            grad_logits = grad_logits.to(hidden.dtype)
            if need_hidden:
                grad_hidden[sl] = grad_logits @ weight
            if need_weight:
                # In the model's dtype, so bf16 runs on tensor cores (a float32 GEMM here was 7% of a
                # 1B-parameter DPO step on an H100); chunk results are summed in float32.
                grad_weight.add_(grad_logits.t() @ hidden[sl])
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def linear_logprobs(
    hidden: Tensor, weight: Tensor, labels: Tensor, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> Tensor:
    """float32 ``log_softmax(hidden @ weight.T)`` at ``labels`` for rows of ``hidden`` ([N, H])."""
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32) + 0 * weight.sum()
    return _LinearLogProbs.apply(hidden, weight, labels, _chunk_rows(weight.shape[0], chunk_elements))


def _plain_linear_head(model: PreTrainedModel) -> nn.Linear | None:
    """The output projection when logits are exactly ``hidden @ W.T``, else None.

    Heads with a bias, a logit scale or soft-capping (Gemma 2, Cohere, ...) take the generic path.
    """
    head = model.get_output_embeddings()
    config = model.config
    if not isinstance(head, nn.Linear) or head.bias is not None:
        return None
    if hasattr(head.weight, "ds_id"):
        # DeepSpeed ZeRO-3: the weight is only gathered inside the head's own forward.
        return None
    if any(getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    return head


def _shifted_targets(input_ids: Tensor, loss_mask: Tensor, sequence_index: Tensor | None):
    """Positions that predict a scored token: (row, position) of the predictor, label, output slot."""
    scored = loss_mask[:, 1:].bool()
    rows, cols = scored.nonzero(as_tuple=True)
    labels = input_ids[:, 1:][rows, cols]
    if sequence_index is None:
        slots = rows
    else:
        slots = sequence_index[:, 1:][rows, cols]
    return rows, cols, labels, slots


BATCH_KEYS = ("attention_mask", "position_ids", "sequence_index", "cu_seq_lens", "max_length")


def batch_inputs(batch: dict) -> dict:
    """The optional model-input fields of a collated batch, as keyword arguments for the functions below."""
    return {key: batch[key] for key in BATCH_KEYS if batch.get(key) is not None}


def token_logprobs(
    model: PreTrainedModel,
    input_ids: Tensor,
    loss_mask: Tensor,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    sequence_index: Tensor | None = None,
    cu_seq_lens: Tensor | None = None,
    max_length: int | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """Log-probs (float32) of the scored tokens, and the output slot each belongs to.

    ``loss_mask[b, t] = 1`` scores token ``input_ids[b, t]`` given the tokens before it. The first
    token of a row (or of each packed sequence) has no predictor and must not be scored.
    ``sequence_index[b, t]`` names the sequence a token belongs to (packed rows); by default the row.
    Packed rows pass ``position_ids`` (restarting per sequence) and no attention mask;
    ``cu_seq_lens``/``max_length`` (sequence boundaries over all tokens of the batch) spare varlen
    attention kernels from deriving them on the device.
    """
    rows, cols, labels, slots = _shifted_targets(input_ids, loss_mask, sequence_index)
    model = unwrap(model)  # a PeftModel's inner model carries its adapters in its layers
    head = _plain_linear_head(model)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    if cu_seq_lens is not None:
        # The names transformers' flash/varlen attention paths read; other attention paths ignore them.
        kwargs.update(cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens, max_length_q=max_length, max_length_k=max_length)
    if head is not None:
        hidden = model.base_model(**kwargs).last_hidden_state
        selected = hidden[rows, cols]
        return linear_logprobs(selected, head.weight, labels, chunk_elements), slots
    # Generic heads: the model's own logits, scored without a float32 copy of the whole tensor.
    logits = model(**kwargs).logits[rows, cols]
    rows_per_chunk = _chunk_rows(logits.shape[-1], chunk_elements)
    parts = []
    for start in range(0, logits.shape[0], rows_per_chunk):
        chunk = logits[start : start + rows_per_chunk].float()
        lab = labels[start : start + rows_per_chunk, None]
        parts.append(chunk.gather(-1, lab).squeeze(-1) - torch.logsumexp(chunk, dim=-1))
    token_lp = torch.cat(parts) if parts else logits.new_zeros(0, dtype=torch.float32)
    return token_lp, slots


def sequence_logprobs(
    model: PreTrainedModel,
    input_ids: Tensor,
    loss_mask: Tensor,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    sequence_index: Tensor | None = None,
    num_sequences: int | None = None,
    cu_seq_lens: Tensor | None = None,
    max_length: int | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """Summed log-probs of the scored tokens of each sequence, and their token counts (both float32).

    Padded batches: one sequence per row. Packed batches: pass ``sequence_index`` and ``num_sequences``.
    """
    token_lp, slots = token_logprobs(
        model, input_ids, loss_mask, attention_mask, position_ids, sequence_index, cu_seq_lens, max_length, chunk_elements
    )
    n = input_ids.shape[0] if num_sequences is None else num_sequences
    sums = torch.zeros(n, dtype=torch.float32, device=input_ids.device).index_add(0, slots, token_lp)
    counts = torch.zeros(n, dtype=torch.float32, device=input_ids.device).index_add(
        0, slots, torch.ones_like(token_lp)
    )
    return sums, counts


class PairLogps(NamedTuple):
    """Summed completion log-probs of a batch of pairs and the completions' token counts, [pairs] each."""

    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor


def pair_logprobs(model: PreTrainedModel, batch: dict) -> PairLogps:
    """Summed completion log-probs (float32) of a preference batch (`PreferenceCollator`, padded or
    packed, which lays out every pair's chosen sequence, then the rejected ones)."""
    pairs = len(batch["prompt_id"])
    logps, counts = sequence_logprobs(
        model, batch["input_ids"], batch["loss_mask"], num_sequences=2 * pairs, **batch_inputs(batch)
    )
    return PairLogps(logps[:pairs], logps[pairs:], counts[:pairs], counts[pairs:])
