"""Log-prob computation: masking, precision, chunking, against a plain float64 log_softmax."""

from __future__ import annotations

import pytest
import torch

from zephyr_lightning.logprobs import linear_logprobs, sequence_logprobs
from zephyr_lightning.models import build_tiny_mistral


@pytest.fixture(scope="module")
def model():
    return build_tiny_mistral(seed=0).eval()


def _batch(seed=0, rows=3, length=20, pad_tail=(0, 4, 7), prompt_len=(5, 8, 3)):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 32000, (rows, length), generator=g)
    attention = torch.ones(rows, length, dtype=torch.long)
    loss_mask = torch.zeros(rows, length, dtype=torch.long)
    for r in range(rows):
        real = length - pad_tail[r]
        attention[r, real:] = 0
        ids[r, real:] = 0
        loss_mask[r, prompt_len[r] : real] = 1
    return ids, attention, loss_mask


def _reference_sums(model, ids, attention, loss_mask):
    """Definition: sum over scored tokens t of log_softmax(logits[t-1])[ids[t]], in float64."""
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits.double()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (logp * loss_mask[:, 1:]).sum(-1)


def test_linear_logprobs_value_and_gradients_match_float64():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    weight = torch.randn(101, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 101, (37,), generator=g)
    upstream = torch.randn(37, generator=g)
    # chunk_elements small enough to force many chunks
    out = linear_logprobs(hidden, weight, labels, chunk_elements=101 * 5)
    (out * upstream).sum().backward()

    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref = torch.log_softmax(h64 @ w64.t(), -1).gather(-1, labels[:, None]).squeeze(-1)
    (ref * upstream.double()).sum().backward()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden.grad.double(), h64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weight.grad.double(), w64.grad, rtol=1e-4, atol=1e-5)


def test_sequence_logprobs_equal_definition(model):
    ids, attention, loss_mask = _batch()
    sums, counts = sequence_logprobs(model, ids, loss_mask, attention)
    torch.testing.assert_close(sums.double(), _reference_sums(model, ids, attention, loss_mask), rtol=1e-5, atol=1e-4)
    assert counts.tolist() == (loss_mask[:, 1:].sum(-1)).float().tolist()


def test_prompt_and_padding_labels_never_change_completion_logprobs(model):
    ids, attention, loss_mask = _batch()
    base, _ = sequence_logprobs(model, ids, loss_mask, attention)
    # Padding tokens: any id, same result.
    other = ids.clone()
    other[attention == 0] = 12345
    padded, _ = sequence_logprobs(model, other, loss_mask, attention)
    torch.testing.assert_close(padded, base, rtol=0, atol=1e-5)
    # Scoring flags on prompt or padding positions are what decide; a completion-only mask with the
    # prompt positions' flags flipped on would change the sum, so check the mask is honoured exactly.
    prompt_scored = loss_mask.clone()
    prompt_scored[0, 2] = 1
    changed, _ = sequence_logprobs(model, ids, prompt_scored, attention)
    assert changed[0] != base[0] and torch.equal(changed[1:], base[1:])
    # A row alone equals the same row inside a padded batch.
    single, _ = sequence_logprobs(model, ids[1:2, :16], loss_mask[1:2, :16], attention[1:2, :16])
    torch.testing.assert_close(single, base[1:2], rtol=0, atol=1e-4)


def test_bf16_model_gives_float32_logprobs(model):
    ids, attention, loss_mask = _batch()
    bf16 = build_tiny_mistral(seed=0).to(torch.bfloat16).eval()
    sums, _ = sequence_logprobs(bf16, ids, loss_mask, attention)
    assert sums.dtype == torch.float32
    full, _ = sequence_logprobs(model, ids, loss_mask, attention)
    # bf16 weights change the numbers a little, not their scale.
    torch.testing.assert_close(sums, full, rtol=2e-2, atol=0.5)


def test_chunk_size_does_not_change_results_or_gradients(model):
    ids, attention, loss_mask = _batch()
    train_model = build_tiny_mistral(seed=0)
    results = []
    for chunk in (32000 * 2, 32000 * 1000):
        train_model.zero_grad()
        sums, _ = sequence_logprobs(train_model, ids, loss_mask, attention, chunk_elements=chunk)
        sums.sum().backward()
        results.append((sums.detach(), train_model.lm_head.weight.grad.clone(), train_model.model.embed_tokens.weight.grad.clone()))
    for a, b in zip(results[0], results[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_generic_head_path_matches_fused_path(model, monkeypatch):
    import zephyr_lightning.logprobs as lp

    ids, attention, loss_mask = _batch()
    fused, _ = sequence_logprobs(model, ids, loss_mask, attention)
    monkeypatch.setattr(lp, "_plain_linear_head", lambda m: None)
    generic, _ = lp.sequence_logprobs(model, ids, loss_mask, attention)
    torch.testing.assert_close(generic, fused, rtol=1e-5, atol=1e-4)


class _MatmulDtypes(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the input dtype of every matrix product dispatched while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default):
            self.dtypes.append(args[-2].dtype if func is torch.ops.aten.addmm.default else args[0].dtype)
        return func(*args, **(kwargs or {}))


def test_backward_under_bf16_autocast_recomputes_logits_as_forward_did():
    """fp32 master weights under bf16-mixed: the head's backward GEMMs run in bf16 like forward's (autograd
    runs backward outside autocast), and the gradients match plain autograd through the same autocast."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(40, 32, generator=g, requires_grad=True)
    weight = torch.randn(500, 32, generator=g, requires_grad=True)
    labels = torch.randint(0, 500, (40,), generator=g)
    seen = _MatmulDtypes()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_logprobs(hidden, weight, labels, chunk_elements=500 * 16)
    with seen:
        ours.sum().backward()
    assert seen.dtypes and set(seen.dtypes) == {torch.bfloat16}, seen.dtypes
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = (hidden @ weight.t()).float()
    reference = torch.log_softmax(logits, -1).gather(-1, labels[:, None]).squeeze(-1)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-4)
    reference.sum().backward()
    for mine, theirs in zip(grads, (hidden.grad, weight.grad)):
        assert mine.dtype == theirs.dtype == torch.float32
        torch.testing.assert_close(mine, theirs, rtol=2e-2, atol=2e-2)
