"""The DPO loss family.

All losses are functions of the same quantity, the difference of implicit rewards

    d = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)),

computed from summed sequence log-probs of the chosen (y_w) and rejected (y_l) completions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    reference_free: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair preference loss and the detached implicit rewards of both completions.

    Loss types (``d`` as in the module docstring):

    - ``sigmoid``: DPO, Rafailov et al. 2023, eq. 7: ``-log sigmoid(beta * d)``. With
      ``label_smoothing = eps > 0`` it is conservative DPO (cDPO), which assumes preference labels
      are flipped with probability eps: ``-(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d)``.
    - ``ipo``: IPO, Azar et al. 2023, eq. 17: ``(d - 1 / (2 beta))^2``. Here ``d`` uses summed
      log-probs, as TRL does; average them upstream for the paper's per-token form.
    - ``hinge``: SLiC-style hinge, Zhao et al. 2023: ``relu(1 - beta * d)``.

    Rewards are ``beta * (policy logp - reference logp)``; with ``reference_free=True`` the reference
    log-probs count as zero (the policy is compared with a uniform reference).

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, one value per pair.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to the sigmoid loss only, not {loss_type!r}")
    if reference_free:
        reference_chosen_logps = torch.zeros_like(policy_chosen_logps)
        reference_rejected_logps = torch.zeros_like(policy_rejected_logps)

    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    d = chosen_logratios - rejected_logratios

    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * d) - label_smoothing * F.logsigmoid(-beta * d)
    elif loss_type == "ipo":
        losses = (d - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * d)

    chosen_rewards = (beta * chosen_logratios).detach()
    rejected_rewards = (beta * rejected_logratios).detach()
    return losses, chosen_rewards, rejected_rewards
