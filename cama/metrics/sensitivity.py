"""Max-sensitivity of explanation maps (Yeh et al. 2019, ``SENS_MAX``) accumulated over images.

The per-image estimate is :func:`cama.explain.max_sensitivity` (the Monte-Carlo maximum of the map's
change over an L-inf ball of inputs; its definition and norms: ``docs/explanations.md``,
"Max-sensitivity"). :class:`MaxSensitivity` averages it over the images seen, with the half-width
of the normal 95% interval, ``1.96 s / sqrt(N)`` (``s`` the sample standard deviation), as
:class:`cama.metrics.faithfulness.AverageDropIncrease` does for its drops.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from cama.metrics.faithfulness import Z_95
from cama.metrics.states import add_sum_states, mean_and_interval

__all__ = ["MaxSensitivity"]


class MaxSensitivity(Metric):
    """Mean max-sensitivity over images with its 95% interval; sum states, exact under DDP.

    ``update(sensitivities [B])`` (:func:`cama.explain.max_sensitivity` of a batch; NaN -- a zero map
    that moved, whose relative change is undefined -- is left out); ``compute()`` ->
    ``{"max_sensitivity", "max_sensitivity_ci95"}``: the mean and its interval's half-width (0 with
    fewer than two images; both NaN before any defined value).
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        add_sum_states(self, "total", "total_sq", "count")

    def update(self, sensitivities: Tensor) -> None:
        values = sensitivities.detach().reshape(-1).to(device=self.total.device, dtype=torch.float64)
        values = values[~values.isnan()]
        self.total += values.sum()
        self.total_sq += values.square().sum()
        self.count += float(values.numel())

    def compute(self) -> dict[str, Tensor]:
        mean, ci, _ = mean_and_interval(self.total, self.total_sq, self.count, Z_95, unbiased=True)
        return {"max_sensitivity": mean.float(), "max_sensitivity_ci95": ci.float()}
