"""Feature Activation Map (FAM) for similarity-based models, fam Sec. IV (Eq. 11-18).

Like every map of :mod:`cama.explain.maps`, a pure batched tensor function that returns the raw
map at feature resolution (no ReLU, no normalisation; :func:`cama.explain.render.postprocess`
displays it), computed in float32 whatever the inputs' dtype (float64 stays float64), see
:func:`cama.explain._common.full_precision`.

Notation (``docs/explanations.md#notation``): ``Q`` query feature maps ``[B, K, h, w]``,
``q = GAP(Q)`` ``[B, K]``. The paper is fam (``docs/explanations.md#the-papers``); its text lost
Eq. 11-18, and ``docs/explanations.md#fam`` gives our reading of them as implemented here.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ._common import check_maps, combine, full_precision, safe_norm
from .maps import global_average_pool

__all__ = ["IMPORTANCES", "Importance", "Metric", "fam_channel_contributions", "fam_importance", "fam"]

Metric = Literal["cosine", "euclidean"]
Importance = Literal["minmax", "relu"]
IMPORTANCES: tuple[str, ...] = ("minmax", "relu")


def _embedding_contributions(query: Tensor, supports: Tensor, metric: Metric, eps: float) -> Tensor:
    """Per-dimension contributions ``c`` ``[B, D]`` of ``query`` ``[B, D]`` vs ``supports`` ``[B, N, D]``.

    cosine (fam Eq. 14-15): ``c_k = mean_n q_k s_{n,k} / (||q|| ||s_n||)``, summing to the mean
    cosine similarity over the N supports (Eq. 11);
    euclidean: ``c_k = -mean_n (q_k - s_{n,k})^2``, summing to minus the mean squared distance.
    """
    if metric == "cosine":
        query_unit = query / safe_norm(query, eps)[:, None]
        supports_unit = supports / safe_norm(supports, eps)[..., None]
        return query_unit * supports_unit.mean(dim=1)
    if metric == "euclidean":
        return -(query[:, None, :] - supports).square().mean(dim=1)
    raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")


def fam_channel_contributions(
    query: Tensor,
    references: Tensor,
    metric: Metric = "cosine",
    projection: Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """Channel-wise contribution weights of FAM, fam Sec. IV-B to IV-D (Eq. 11, 14-18).

    Without ``projection`` the similarity is taken between the pooled query ``q`` ``[B, K]`` and
    the N supports of the class ``s_n`` (``references`` ``[B, N, K]``), and the contribution of
    channel ``k`` is

    * cosine (Eq. 15, averaged over the supports as in Eq. 11):
      ``c_k = (1/N) sum_n q_k s_{n,k} / (||q|| ||s_n||)`` -- the ``c_k`` sum to the mean cosine
      similarity;
    * euclidean: ``c_k = -(1/N) sum_n (q_k - s_{n,k})^2`` (larger = more similar) -- the ``c_k``
      sum to minus the mean squared Euclidean distance.

    With ``projection`` ``W`` ``[D, K]`` (an FC layer without bias, ``e = W q``, Sec. IV-D), the
    similarity is the one the model ranks with: between ``e_q = W q`` and the supports'
    embeddings (``references`` are then ``[B, N, D]`` embeddings). The contributions ``c_j`` of
    the embedding dimensions are computed as above on ``e_q`` and mapped back to the channels by
    each channel's share of each output (Eq. 16-18):
    ``c'_k = sum_j c_j W_{jk} q_k / e_j``. Since ``sum_k W_{jk} q_k = e_j``, the total is kept:
    ``sum_k c'_k = sum_j c_j`` (Eq. 17). An ``e_j`` with ``|e_j| < eps`` is replaced by
    ``+-eps`` (its sign kept, 0 counted as positive), so nothing is infinite; the total is then
    exact only up to those guarded dimensions. For the cosine metric ``c_j / e_j`` simplifies to
    ``(1/N) sum_n s_{n,j} / (||e_q|| ||s_n||)``, which is used directly, so no guard is needed.

    Args:
        query: pooled query feature ``q`` ``[B, K]``.
        references: ``[B, N, K]`` supports (``[B, N, D]`` with ``projection``); ``[B, K]`` (or
            ``[B, D]``) is read as a single support.
        metric: ``"cosine"`` or ``"euclidean"``.
        projection: optional ``W`` ``[D, K]``.
        eps: guard on norms and on ``e_j``.

    Returns:
        ``c`` ``[B, K]`` (before the min-max normalisation of Eq. 12), float32 (float64 for a
        float64 ``query``).
    """
    if query.ndim != 2:
        raise ValueError(f"query must be [B, K], got {tuple(query.shape)}")
    supports = references[:, None, :] if references.ndim == 2 else references
    if supports.ndim != 3 or supports.shape[0] != query.shape[0]:
        raise ValueError(f"references must be [B, N, dim], got {tuple(references.shape)}")
    with full_precision(query, supports, projection) as (query, supports, weight):
        return _contributions(query, supports, metric, weight, eps)


def _contributions(
    query: Tensor, supports: Tensor, metric: Metric, weight: Tensor | None, eps: float
) -> Tensor:
    """:func:`fam_channel_contributions` on checked, working-precision ``[B, K]`` / ``[B, N, dim]``."""
    if weight is None:
        if supports.shape[-1] != query.shape[-1]:
            raise ValueError(f"references {tuple(supports.shape)} must end in K={query.shape[-1]}")
        return _embedding_contributions(query, supports, metric, eps)

    if weight.ndim != 2 or weight.shape[1] != query.shape[-1]:
        raise ValueError(f"projection must be [D, K={query.shape[-1]}], got {tuple(weight.shape)}")
    if supports.shape[-1] != weight.shape[0]:
        raise ValueError(f"with a projection, references must be [B, N, D={weight.shape[0]}]")
    embedding = query @ weight.T  # e_q [B, D]
    if metric == "cosine":
        # c_j / e_j = mean_n s_{n,j} / (||e_q|| ||s_n||) exactly: no division by e_j at all.
        supports_unit = supports / safe_norm(supports, eps)[..., None]
        ratio = supports_unit.mean(dim=1) / safe_norm(embedding, eps)[:, None]
    else:
        dim_contributions = _embedding_contributions(embedding, supports, metric, eps)  # c_j [B, D]
        guarded = torch.where(
            embedding.abs() < eps, torch.where(embedding < 0, -eps, eps).to(embedding.dtype), embedding
        )
        ratio = dim_contributions / guarded
    # c'_k = q_k * sum_j (c_j / e_j) W_jk: one [B, D] x [D, K] product, no [B, D, K] tensor.
    return query * (ratio @ weight)


def fam_importance(contributions: Tensor, importance: Importance = "minmax") -> Tensor:
    """Importance coefficients ``alpha``, fam Eq. 12 (``importance="relu"``: a variant beyond the paper).

    ``"minmax"`` (Eq. 12, the default): min-max normalisation of ``c`` over channels,
    ``alpha_k = (c_k - min_j c_j) / (max_j c_j - min_j c_j)``. When all contributions of a sample
    are equal the ratio is undefined; every channel is then equally important and gets
    ``alpha_k = 1``. The smallest contribution gets 0, so a channel that contributes nothing
    (``c_k = 0``, e.g. a silent channel of post-ReLU maps) gets ``-min c / (max c - min c)``, above 0
    whenever some contribution is negative.

    ``"relu"`` (not in the paper, off by default; the explainer's ``fam_unfloored``): no min-max
    floor, ``alpha_k = max(c_k, 0) / max_j max(c_j, 0)`` -- a channel that contributes nothing or
    against the similarity gets exactly 0, the largest contribution 1. When no contribution is
    positive every ``alpha_k`` is 0 (a zero map).

    Args:
        contributions: ``c`` ``[B, K]``.
        importance: ``"minmax"`` (Eq. 12) or ``"relu"``.

    Returns:
        ``alpha`` ``[B, K]`` in ``[0, 1]``, float32 (float64 for float64 contributions).
    """
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES}, got {importance!r}")
    with full_precision(contributions) as (contributions,):
        if importance == "relu":
            positive = contributions.clamp_min(0.0)
            top = positive.amax(dim=-1, keepdim=True)
            return positive / torch.where(top > 0, top, torch.ones_like(top))
        low = contributions.amin(dim=-1, keepdim=True)
        span = contributions.amax(dim=-1, keepdim=True) - low
        flat = span <= 0
        alpha = (contributions - low) / torch.where(flat, torch.ones_like(span), span)
        return torch.where(flat, torch.ones_like(alpha), alpha)


def fam(
    maps: Tensor,
    references: Tensor,
    metric: Metric = "cosine",
    projection: Tensor | None = None,
    eps: float = 1e-6,
    importance: Importance = "minmax",
) -> Tensor:
    """Feature Activation Map (FAM), fam Sec. IV (Eq. 11-13, 15-18).

    ``q = GAP(Q)``; channel contributions ``c`` to the (support-averaged) similarity
    (Eq. 11, 15; :func:`fam_channel_contributions`, which also maps embedding-dimension
    contributions back to channels when the model ranks with ``e = W q``, Eq. 16-18);
    ``alpha = minmax(c)`` (Eq. 12, :func:`fam_importance`; ``importance="relu"``: the unfloored
    variant beyond the paper, ``alpha = ReLU(c) / max ReLU(c)``); ``FAM = sum_k alpha_k Q_k``
    (Eq. 13 without its ReLU, which :func:`~cama.explain.render.postprocess` applies).

    Args:
        maps: query feature maps ``Q`` ``[B, K, h, w]``.
        references: the N supports of the class, ``[B, N, K]`` pooled features, or ``[B, N, D]``
            embeddings when ``projection`` is given; ``[B, K]`` / ``[B, D]`` is one support.
        metric: ``"cosine"`` or ``"euclidean"``.
        projection: optional FC weight ``W`` ``[D, K]`` between the pooled feature and the
            embedding used for the similarity.
        eps: numerical guard (norms, ``e_j``).
        importance: ``"minmax"`` (Eq. 12, the default) or ``"relu"`` (:func:`fam_importance`; not with
            the euclidean metric without ``projection``, whose contributions are all ``<= 0``).

    Returns:
        The raw FAM ``[B, h, w]``, float32 (float64 for float64 maps).
    """
    check_maps(maps)
    if importance == "relu" and metric == "euclidean" and projection is None:
        raise ValueError(
            "importance='relu' keeps the positive contributions, but the euclidean metric's are all <= 0 "
            "(minus squared distances): the map would be zero; use importance='minmax' (fam Eq. 12)"
        )
    with full_precision(maps, references, projection) as (maps, references, projection):
        contributions = fam_channel_contributions(
            global_average_pool(maps), references, metric=metric, projection=projection, eps=eps
        )
        return combine(fam_importance(contributions, importance), maps)
