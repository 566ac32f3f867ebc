"""Losses of the CAMA network (cama-ram Sec. 3.2-3.3)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["overlapped_activation_penalty", "resolve_topk"]


def resolve_topk(topk: float | int, grid_size: int) -> int:
    """The ``k`` of cama-ram Eq. 5 as a count of grid cells.

    A float in (0, 1] is a fraction of the ``h*w`` grid (the paper's best, 26 of 128 cells, is about
    20%); an int >= 1 is a count. The result is clamped to ``[1, grid_size]``.
    """
    if isinstance(topk, bool) or topk <= 0:
        raise ValueError(f"OAP top-k must be a positive fraction or count, got {topk!r}")
    if isinstance(topk, float) and topk <= 1.0:
        count = round(topk * grid_size)
    else:
        count = int(topk)
    return max(1, min(grid_size, count))


def overlapped_activation_penalty(target_cams: Tensor, topk: float | int = 0.2) -> Tensor:
    """Overlapped Activation Penalty, cama-ram Eq. 5-6, averaged over the batch.

    Args:
        target_cams: ``[N, B, h, w]`` -- for each of the N branches the class activation map of the
            target class ``M_t^i`` (Eq. 4) of each of the B samples.
        topk: ``k`` of Eq. 5, a fraction of the grid or a count (see :func:`resolve_topk`).

    Returns:
        Scalar ``mean_b (1/N) sum_{x,y} prod_i a^i_b(x, y)`` with
        ``a^i(x, y) = sigmoid(M_t^i(x, y) - sigma^i)`` and ``sigma^i`` the k-th largest value of
        ``M_t^i`` (Eq. 5). The threshold is not detached: the paper defines it as a value of the
        map, and the gradient reaches the map through it as well.
    """
    if target_cams.dim() != 4:
        raise ValueError(f"target_cams must be [branches, batch, h, w], got shape {tuple(target_cams.shape)}")
    num_branches, batch, height, width = target_cams.shape
    flat = target_cams.reshape(num_branches, batch, height * width)
    k = resolve_topk(topk, height * width)
    sigma = flat.topk(k, dim=-1).values[..., -1:]  # k-th largest, [N, B, 1]
    activation = torch.sigmoid(flat - sigma)  # a^i, Eq. 5
    overlap = activation.prod(dim=0)  # a^1 * ... * a^N, [B, h*w]
    return overlap.sum(dim=-1).mean() / num_branches  # Eq. 6, then mean over the batch
