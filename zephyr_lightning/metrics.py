"""torchmetrics metrics for language modelling, and their states in a checkpoint (so that a resumed run's
epoch metrics cover the whole epoch, not only the batches after the resume)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_sum


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


def metric_states(metrics: Mapping[str, Metric]) -> dict[str, dict[str, Any]]:
    """The accumulated state of each metric, summed over every process, as plain tensors (loads with
    ``weights_only=True``). Called on every rank (it communicates when several processes run); the
    result is what the whole job has accumulated, so `load_metric_states` gives it to one rank only.

    Only sum-reduced tensor states are supported (`TokenNLL`, torchmetrics' ``MeanMetric``, ``SumMetric``):
    their totals add up the same whichever rank holds them.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, metric in metrics.items():
        for state, reduction in metric._reductions.items():
            if reduction is not dim_zero_sum or not isinstance(getattr(metric, state), Tensor):
                raise TypeError(f"{name}: state {state!r} is not a summed tensor; its total cannot be saved")
        metric.sync(should_sync=True)  # a no-op in a single process
        try:
            out[name] = {state: getattr(metric, state).detach().cpu().clone() for state in metric._defaults}
            out[name]["_update_count"] = int(metric._update_count)
        finally:
            if metric._is_synced:
                metric.unsync()
    return out


def load_metric_states(metrics: Mapping[str, Metric], states: Mapping[str, Mapping[str, Any]], *, holder: bool) -> None:
    """Put saved totals (`metric_states`) back: into this process's metrics when it is the ``holder``
    (rank 0), the empty state elsewhere, so the next reduction over all ranks sums to the saved total plus
    what follows. Metrics absent from ``states`` (saved by an older version) start empty."""
    for name, metric in metrics.items():
        metric.reset()
        saved = states.get(name)
        if not holder or saved is None:
            continue
        for state, default in metric._defaults.items():
            setattr(metric, state, saved[state].to(device=default.device, dtype=default.dtype).clone())
        metric._update_count = int(saved.get("_update_count", 1))
        metric._computed = None
