"""torchmetrics metrics for language modelling."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class TokenNLL(Metric):
    """Mean negative log-likelihood per token, and its perplexity, over everything seen.

    Sums and counts are reduced across devices before dividing, so the value is the mean over all
    tokens of all ranks (not a mean of per-batch or per-rank means).
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("nll_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, token_logprobs: Tensor) -> None:
        self.nll_sum += -token_logprobs.detach().double().sum()
        self.tokens += token_logprobs.numel()

    def compute(self) -> Tensor:
        return (self.nll_sum / self.tokens.clamp(min=1)).float()


class TokenPerplexity(TokenNLL):
    """exp(mean token NLL): the perplexity of the scored tokens."""

    def compute(self) -> Tensor:
        return torch.exp(super().compute())
