"""Faithfulness of explanation maps: Average Drop and Increase in Confidence (fam Eq. 21-22).

``Y_i`` is the model's score on image ``i`` -- a class probability for a classifier, the
similarity to the reference (gallery image, prototype, support) for a metric model -- and ``O_i``
the same score on the image *masked by its explanation map*:

* ``AD = 100/N sum_i max(0, Y_i - O_i) / Y_i`` (Eq. 21): how much of the score is lost when only
  the highlighted region is kept (lower is better);
* ``IC = 100/N sum_i [O_i > Y_i]`` (Eq. 22): how often the masked image scores higher (higher is
  better).

A similarity can be zero or negative, where Eq. 21 (written for probabilities) means nothing:
samples with ``Y_i <= 0`` are left out of AD (they still count in IC), and a negative ``O_i`` counts
as 0 in AD, so that each drop lies in ``[0, 1]`` as with probabilities.

**Interval**: over ``N`` samples the numbers move by chance; :class:`AverageDropIncrease` also gives
``ad_ci95`` and ``ic_ci95``, the half-widths of their 95% intervals: for AD the normal one,
``1.96 s / sqrt(N)`` with ``s`` the sample standard deviation of the per-sample drops; for IC, a
proportion often at or near 0, the Agresti-Coull one, ``1.96 sqrt(p~ (1 - p~) / N~)`` with
``N~ = N + 1.96^2`` and ``p~ = (increases + 1.96^2 / 2) / N~`` (the normal one would claim "0 +- 0"
for 0 increases in 64 samples; this one gives +- 3.9 points).

**Masking** (:func:`mask_images`, in :mod:`cama.explain.masking`, which Score-CAM shares), our
reading of fam Sec. V ("the query image masked by the saliency map"): the map multiplies the
``[0, 1]`` picture when the images' ``mean``/``std`` are given, the network input otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from cama.explain.masking import mask_images
from cama.metrics.states import add_sum_states, mean_and_interval

__all__ = ["mask_images", "average_drop", "increase_in_confidence", "AverageDropIncrease"]

Z_95 = 1.96  # the normal quantile of a two-sided 95% interval


def _drops(scores: Tensor, masked_scores: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample ``max(0, Y - O) / Y`` and whether it is defined (``Y > 0``)."""
    scores, masked_scores = scores.double().reshape(-1), masked_scores.double().reshape(-1).to(scores.device)
    if scores.shape != masked_scores.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and masked_scores {tuple(masked_scores.shape)} differ"
        )
    defined = scores > 0
    drop = (scores - masked_scores.clamp_min(0)).clamp_min(0) / torch.where(
        defined, scores, torch.ones_like(scores)
    )
    return torch.where(defined, drop, torch.zeros_like(drop)), defined


def average_drop(scores: Tensor, masked_scores: Tensor) -> Tensor:
    """Average Drop in percent, fam Eq. 21: ``100/N sum max(0, Y - O) / Y`` over samples with ``Y > 0``
    (``O`` clamped at 0 first, so each term lies in ``[0, 1]``).

    Args:
        scores: ``Y`` ``[N]``, the score on each image.
        masked_scores: ``O`` ``[N]``, the score on each image masked by its map.

    Returns:
        0-d float32 tensor (0 when no sample has ``Y > 0``).
    """
    drop, defined = _drops(scores, masked_scores)
    count = defined.sum()
    return (100.0 * drop.sum() / count.clamp_min(1)).float()


def _increases(scores: Tensor, masked_scores: Tensor) -> Tensor:
    """Per-sample ``[O > Y]`` as float64 ``[N]`` (in float64, so ``O`` and ``Y`` of another dtype compare exactly)."""
    scores, masked_scores = scores.reshape(-1), masked_scores.reshape(-1).to(scores.device)
    if scores.shape != masked_scores.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and masked_scores {tuple(masked_scores.shape)} differ")
    return (masked_scores.double() > scores.double()).double()


def increase_in_confidence(scores: Tensor, masked_scores: Tensor) -> Tensor:
    """Increase in Confidence in percent, fam Eq. 22: ``100/N sum [O > Y]`` (0-d float32 tensor)."""
    increases = _increases(scores, masked_scores)
    if increases.numel() == 0:
        return torch.zeros((), device=increases.device)
    return (100.0 * increases.mean()).float()


class AverageDropIncrease(Metric):
    """AD and IC (fam Eq. 21-22) accumulated over batches, with their 95% intervals; sum states,
    exact under DDP.

    ``update(scores [B], masked_scores [B])``; ``compute()`` -> ``{"ad", "ic", "ad_ci95", "ic_ci95"}``
    in percent: the means and the half-widths of their intervals (module docstring; AD's is 0 with
    fewer than two samples).
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        add_sum_states(self, "drop_sum", "drop_sq_sum", "drop_count", "increase_count", "total")

    def update(self, scores: Tensor, masked_scores: Tensor) -> None:
        drop, defined = _drops(scores, masked_scores)
        device = self.total.device
        self.drop_sum += drop.sum().to(device)
        self.drop_sq_sum += drop.square().sum().to(device)
        self.drop_count += defined.double().sum().to(device)
        self.increase_count += _increases(scores, masked_scores).sum().to(device)
        self.total += float(drop.numel())

    def compute(self) -> dict[str, Tensor]:
        drops, increases = self.drop_count.clamp_min(1), self.total.clamp_min(1)
        ad, ad_ci, _ = mean_and_interval(self.drop_sum, self.drop_sq_sum, drops, Z_95, unbiased=True)
        ic = self.increase_count / increases
        z2 = Z_95 * Z_95  # Agresti-Coull (module docstring)
        shrunk = (self.increase_count + z2 / 2) / (self.total + z2)
        ic_ci = Z_95 * (shrunk * (1 - shrunk) / (self.total + z2)).sqrt()
        return {
            "ad": (100.0 * ad).float(),
            "ic": (100.0 * ic).float(),
            "ad_ci95": (100.0 * ad_ci).float(),
            "ic_ci95": (100.0 * ic_ci).float(),
        }
