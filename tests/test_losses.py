"""The DPO loss family against its formulas, computed by hand in float64."""

from __future__ import annotations

import math

import pytest
import torch

from zephyr_lightning import dpo_loss


def _logps(seed: int, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    return [(-50 * torch.rand(n, generator=g, dtype=torch.float64) - 1).requires_grad_() for _ in range(4)]


# Completion token counts of the chosen and rejected sequences (IPO divides each log-ratio by its own).
LENGTHS = ([3.0, 17.0, 40.0, 1.0, 250.0, 8.0], [5.0, 2.0, 40.0, 90.0, 12.0, 1.0])


def _by_hand(pc, pr, rc, rr, beta, loss_type, eps):
    """Scalar formulas with the math module, pair by pair. IPO (Azar et al. eq. 17 as TRL >= 0.7.11 and the
    IPO authors compute it): each log-ratio averaged over its completion's tokens."""
    out = []
    for i in range(len(pc)):
        d = (pc[i] - rc[i]) - (pr[i] - rr[i])
        if loss_type == "sigmoid":
            log_sig = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
            out.append(-(1 - eps) * log_sig(beta * d) - eps * log_sig(-beta * d))
        elif loss_type == "ipo":
            d_avg = (pc[i] - rc[i]) / LENGTHS[0][i] - (pr[i] - rr[i]) / LENGTHS[1][i]
            out.append((d_avg - 1 / (2 * beta)) ** 2)
        else:
            out.append(max(0.0, 1 - beta * d))
    return out


def _grad_by_hand(pc, pr, rc, rr, beta, loss_type, eps):
    """(d loss_i / d policy_chosen_logp_i, d loss_i / d policy_rejected_logp_i)."""
    chosen, rejected = [], []
    for i in range(len(pc)):
        d = (pc[i] - rc[i]) - (pr[i] - rr[i])
        sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
        if loss_type == "sigmoid":
            g = -(1 - eps) * beta * sig(-beta * d) + eps * beta * sig(beta * d)
            chosen.append(g), rejected.append(-g)
        elif loss_type == "ipo":
            d_avg = (pc[i] - rc[i]) / LENGTHS[0][i] - (pr[i] - rr[i]) / LENGTHS[1][i]
            g = 2 * (d_avg - 1 / (2 * beta))
            chosen.append(g / LENGTHS[0][i]), rejected.append(-g / LENGTHS[1][i])
        else:
            g = -beta if 1 - beta * d > 0 else 0.0
            chosen.append(g), rejected.append(-g)
    return chosen, rejected


def _lengths():
    return [torch.tensor(x, dtype=torch.float64) for x in LENGTHS]


@pytest.mark.parametrize(
    "loss_type,beta,eps",
    [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.0), ("sigmoid", 0.1, 0.2), ("ipo", 0.1, 0.0), ("ipo", 0.5, 0.0),
     ("hinge", 0.1, 0.0), ("hinge", 2.0, 0.0)],
)
def test_loss_and_gradient_match_formula(loss_type, beta, eps):
    pc, pr, rc, rr = _logps(seed=len(loss_type) + int(100 * beta) + int(10 * eps))
    cl, rl = _lengths()
    losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps,
                                                        chosen_lengths=cl, rejected_lengths=rl)
    vals = [x.detach().tolist() for x in (pc, pr, rc, rr)]
    expected = torch.tensor(_by_hand(*vals, beta, loss_type, eps), dtype=torch.float64)
    torch.testing.assert_close(losses, expected, rtol=1e-12, atol=1e-12)

    losses.sum().backward()
    chosen_grad, rejected_grad = (torch.tensor(g, dtype=torch.float64) for g in _grad_by_hand(*vals, beta, loss_type, eps))
    torch.testing.assert_close(pc.grad, chosen_grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pr.grad, rejected_grad, rtol=1e-10, atol=1e-12)
    assert rc.grad is None or torch.all(rc.grad == -pc.grad)  # reference enters with opposite sign
    # Rewards stay beta times the summed log-ratio for every loss type (as TRL logs them).
    torch.testing.assert_close(chosen_rewards, beta * (pc - rc).detach())
    torch.testing.assert_close(rejected_rewards, beta * (pr - rr).detach())


def test_rewards_are_beta_times_log_ratio_and_detached():
    pc, pr, rc, rr = _logps(seed=3)
    _, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta=0.25)
    torch.testing.assert_close(chosen_rewards, 0.25 * (pc - rc).detach())
    torch.testing.assert_close(rejected_rewards, 0.25 * (pr - rr).detach())
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad


def test_policy_equal_to_reference_gives_ln2_and_zero_rewards():
    logps = -torch.rand(5, dtype=torch.float64) * 30
    other = -torch.rand(5, dtype=torch.float64) * 30
    losses, rc, rr = dpo_loss(logps, other, logps.clone(), other.clone(), beta=0.1)
    assert torch.all(losses == math.log(2))
    assert torch.all(rc == 0) and torch.all(rr == 0)
    assert (rc > rr).float().mean() == 0  # accuracy counts strict wins


def test_ipo_target_margin_is_per_token_whatever_the_length():
    """The same per-token log-ratios give the same IPO loss for short and long completions; with summed
    log-ratios (the old behaviour) the 100x longer pair would sit 100x further from the target."""
    beta = 0.1
    per_token = torch.tensor([0.02], dtype=torch.float64)
    losses = []
    for n in (10.0, 1000.0):
        length = torch.tensor([n], dtype=torch.float64)
        zero = torch.zeros(1, dtype=torch.float64)
        loss, _, _ = dpo_loss(per_token * n, zero, zero, zero, beta=beta, loss_type="ipo",
                              chosen_lengths=length, rejected_lengths=length)
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1]) == pytest.approx((0.02 - 1 / (2 * beta)) ** 2)


def test_ipo_needs_completion_lengths():
    pc, pr, rc, rr = _logps(seed=4)
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="ipo")


def test_unknown_loss_type_names_valid_ones():
    pc, pr, rc, rr = _logps(seed=1)
    with pytest.raises(ValueError, match="'sigmoid', 'ipo', 'hinge'"):
        dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="kto")


@pytest.mark.parametrize("kwargs,match", [({"beta": 0.0}, "beta"), ({"beta": 0.1, "label_smoothing": 0.6}, "label_smoothing"),
                                          ({"beta": 0.1, "loss_type": "ipo", "label_smoothing": 0.1}, "sigmoid")])
def test_bad_arguments_are_rejected(kwargs, match):
    pc, pr, rc, rr = _logps(seed=2)
    with pytest.raises(ValueError, match=match):
        dpo_loss(pc, pr, rc, rr, **kwargs)
