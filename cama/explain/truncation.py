"""The truncation trick of ltgrad-cam (Eq. 9-11): keep the largest positive gradients."""

from __future__ import annotations

import torch
from torch import Tensor

from .precision import work_dtype

__all__ = ["truncate_gradients"]


def truncate_gradients(gradients: Tensor, percentile: float, per_channel: bool = False) -> Tensor:
    """Truncation trick, ltgrad-cam Eq. 9-10: keep ``g >= delta``, zero the others.

    ``delta`` is the ``percentile``-th percentile (linear interpolation, as ``numpy.percentile``)
    of the positive entries of each sample's feature map; a map without a positive gradient
    keeps nothing. Vectorised with ``torch.nanquantile`` over the non-positive entries set to NaN.

    Args:
        gradients: ``[B, K, h, w]`` (any ``[B, ...]`` when ``per_channel`` is False).
        percentile: ``delta`` in ``[0, 100]``; 0 keeps exactly the positive gradients.
        per_channel: take the percentile of each channel ``[h, w]`` instead of the whole
            ``[K, h, w]`` map.

    Returns:
        The truncated gradients, same shape and dtype.
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    rows = gradients.flatten(2) if per_channel else gradients.flatten(1)  # [B, K, hw] or [B, n]
    work = rows.to(work_dtype(rows.dtype))
    positive = torch.where(work > 0, work, torch.full_like(work, float("nan")))
    delta = torch.nanquantile(positive, percentile / 100.0, dim=-1, keepdim=True)
    keep = work >= delta  # False against NaN: no positive gradient keeps nothing
    return torch.where(keep, rows, torch.zeros_like(rows)).reshape(gradients.shape)
