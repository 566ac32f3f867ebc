"""Losses of the CAMA network (cama-ram Sec. 3.2-3.3) and the centre loss of BoT (Luo et al., CVPR-W 2019,
Sec. 3.6; Wen et al., ECCV 2016)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["center_loss", "center_loss_step", "overlapped_activation_penalty", "resolve_topk"]


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


def _check_centers(features: Tensor, centers: Tensor, labels: Tensor) -> None:
    if features.dim() != 2 or centers.dim() != 2 or features.shape[1] != centers.shape[1]:
        raise ValueError(f"features must be [B, D] and centers [C, D], got {tuple(features.shape)} "
                         f"and {tuple(centers.shape)}")
    if labels.shape != features.shape[:1]:
        raise ValueError(f"labels must be [B] for features {tuple(features.shape)}, "
                         f"got {tuple(labels.shape)}")


def center_loss(features: Tensor, centers: Tensor, labels: Tensor) -> Tensor:
    """The centre loss as BoT trains it, ``L_C = (1/B) sum_j ||f_j - c_{y_j}||^2`` (in float32).

    Wen et al. 2016 (Eq. 2) and BoT's Sec. 3.6 write ``(1/2) sum_j``; BoT's code, whose weight
    ``beta = 0.0005`` the paper reports, averages over the batch without the 1/2, and so does this.
    The centres get no gradient from it: :func:`center_loss_step` moves them.

    Args:
        features: ``[B, D]`` the features ``f_j`` (BoT: the pooled features before the BNNeck).
        centers: ``[C, D]`` one centre per training class.
        labels: ``[B]`` the class ``y_j`` of each feature.
    """
    _check_centers(features, centers, labels)
    diff = features.float() - centers.detach().float()[labels]
    return diff.pow(2).sum(dim=1).mean()


def center_loss_step(features: Tensor, centers: Tensor, labels: Tensor, lr: float) -> Tensor:
    """The centres after one SGD step of learning rate ``lr`` on :func:`center_loss` (BoT, Sec. 3.6).

    ``c_k <- c_k - lr * dL_C/dc_k`` with ``dL_C/dc_k = -(2/B) sum_{j: y_j = k} (f_j - c_k)``: each
    centre moves towards the features of its class in the batch, the others stay. This is BoT's
    update (its centres have an SGD optimizer of their own, learning rate 0.5, and their gradient
    is divided by ``beta`` so that it is the gradient of ``L_C`` itself); Wen et al.'s own update
    (Sec. 3.2, Algorithm 1) divides the same sum by ``1 + n_k`` instead of ``B / (2 lr)``. Returns a
    new ``[C, D]`` tensor (float32 math, the centres' dtype); the features are not differentiated.
    """
    _check_centers(features, centers, labels)
    diff = features.detach().float() - centers.float()[labels]
    pulled = torch.zeros(centers.shape, dtype=torch.float32, device=centers.device)
    pulled.index_add_(0, labels, diff)  # sum_{j: y_j = k} (f_j - c_k) for every class k at once
    return (centers.float() + (2.0 * lr / features.shape[0]) * pulled).to(centers.dtype)
