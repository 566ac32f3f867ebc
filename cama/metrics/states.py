"""Metric states shared by the Metrics of :mod:`cama.metrics`: float64 sums (exact under DDP) and
per-sample tensors concatenated over the epoch (``"cat"``, gathered from every process)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["CollectedSamples", "add_sum_states", "mean_and_interval"]


def add_sum_states(metric: Metric, *names: str, shape: tuple[int, ...] = ()) -> None:
    """Add float64 zero states ``names`` of ``shape`` to ``metric``, reduced by ``sum``."""
    for name in names:
        metric.add_state(name, default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")


def mean_and_interval(
    total: Tensor, total_sq: Tensor, n: Tensor, z: float = 1.96, unbiased: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean, z * std / sqrt(n), std)`` of ``n`` samples known by their sum and sum of squares (the
    sum states a Metric keeps, exact under DDP), in float64. ``std`` is the population standard
    deviation, or the sample one (``ddof = 1``) when ``unbiased``; a single sample gives 0."""
    n_f = torch.as_tensor(n).to(torch.float64)
    mean = total / n_f
    var = (total_sq / n_f - mean * mean).clamp_min(0.0)  # population variance
    if unbiased:
        var = var * n_f / (n_f - 1).clamp_min(1.0)
    std = var.sqrt()
    return mean, z * std / n_f.sqrt(), std


class CollectedSamples(Metric):
    """A Metric that collects per-sample tensors in ``"cat"`` states and ranks them once per epoch."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    _epoch_key: int | None = None
    _epoch_value: Any = None

    def _add_cat_states(self, *names: str) -> None:
        self._sample_states = names
        for name in names:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def _once_per_epoch(self, build: Callable[[], Any]) -> Any:
        """``build()``, kept until the next ``update`` or ``reset``: several callbacks of one epoch
        then gather the states once. Every process takes the same path (the same updates happened
        on each), so a collective inside ``build`` runs on all of them or on none."""
        key = self.update_count
        if self._epoch_key == key and self._epoch_value is not None:
            return self._epoch_value
        value = build()
        self._epoch_key, self._epoch_value = key, value
        return value

    def reset(self) -> None:
        super().reset()
        self._epoch_key, self._epoch_value = None, None

    def _collected(self) -> tuple[Tensor, ...] | None:
        """Every sample state concatenated (in the order added), None before any update."""
        states = [getattr(self, name) for name in self._sample_states]
        if isinstance(states[-1], list) and not states[-1]:
            return None
        return tuple(dim_zero_cat(x) for x in states)
