"""The DPO loss family.

Every loss is a function of the difference of the policy's and the reference's log-ratios of the
chosen (y_w) and rejected (y_l) completion,

    d = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)),

computed from sequence log-probs summed over completion tokens (IPO divides each log-ratio by its
completion's token count first; see `dpo_loss`).
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from zephyr_lightning.arguments import check_arguments

LossType = Literal["sigmoid", "ipo", "hinge"]
LOSS_TYPES: tuple[str, ...] = get_args(LossType)
# The KL strength (paper: 0.1; alignment handbook: 0.01) and cDPO's assumed label-noise rate.
Beta = Annotated[float, Field(gt=0)]
LabelSmoothing = Annotated[float, Field(ge=0, lt=0.5)]


def label_smoothing_rule(arguments: dict) -> tuple[str, str] | None:
    """cDPO's label smoothing is defined for the sigmoid loss only."""
    if arguments.get("label_smoothing") and arguments.get("loss_type") != "sigmoid":
        return "label_smoothing", f"applies to the sigmoid loss only, not {arguments.get('loss_type')!r}"
    return None


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: Beta,
    loss_type: LossType = "sigmoid",
    label_smoothing: LabelSmoothing = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair preference loss and the detached implicit rewards of both completions.

    Log-probs are summed over each completion's tokens. Loss types (``d`` as in the module docstring):

    - ``sigmoid``: DPO, Rafailov et al. 2023, eq. 7: ``-log sigmoid(beta * d)``. With
      ``label_smoothing = eps > 0`` it is conservative DPO (cDPO), which assumes preference labels
      are flipped with probability eps: ``-(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d)``.
    - ``ipo``: IPO, Azar et al. 2023, eq. 17: ``(d_avg - 1 / (2 beta))^2``, where each log-ratio is
      divided by its completion's token count (``chosen_lengths``, ``rejected_lengths``; required).
      This per-token form is what the IPO authors' results use (they confirmed it to TRL) and what TRL
      computes since 0.7.11 (1.16 included); with summed log-ratios the target margin ``1 / (2 beta)``
      would mean less the longer the completions.
    - ``hinge``: SLiC-style hinge, Zhao et al. 2023: ``relu(1 - beta * d)``.

    Rewards are ``beta * (policy logp - reference logp)`` of the summed log-probs for every loss type,
    as TRL logs them. A policy compared with a uniform reference (reference-free) passes zeros as the
    reference log-probs.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, one value per pair.
    """
    check_arguments(dpo_loss, {"beta": beta, "loss_type": loss_type, "label_smoothing": label_smoothing})
    smoothing_problem = label_smoothing_rule({"loss_type": loss_type, "label_smoothing": label_smoothing})
    if smoothing_problem:
        raise ValueError(f"{smoothing_problem[0]}={label_smoothing}: {smoothing_problem[1]}")

    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps

    if loss_type == "sigmoid":
        d = chosen_logratios - rejected_logratios
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * d) - label_smoothing * F.logsigmoid(-beta * d)
    elif loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("the ipo loss needs chosen_lengths and rejected_lengths (completion token counts)")
        d = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / rejected_lengths.clamp(min=1)
        losses = (d - 1 / (2 * beta)) ** 2
    else:
        d = chosen_logratios - rejected_logratios
        losses = torch.relu(1 - beta * d)

    chosen_rewards = (beta * chosen_logratios).detach()
    rejected_rewards = (beta * rejected_logratios).detach()
    return losses, chosen_rewards, rejected_rewards
