"""Forward-only explanation maps: CAM, Dist-CAM, RAM and FAM.

Every function here is a pure, batched tensor function: no hooks, no Python loop over samples or
channels, any device and any floating dtype. Each returns the **raw** map at feature resolution --
exactly the linear combination of its equation, with no ReLU and no normalisation -- so that
magnitudes can be compared across branches and references. Apply
:func:`cama.explain.render.postprocess` (ReLU -> bilinear upsampling -> per-map min-max) to get a
displayable map.

Notation (``/work/shared/DESIGN.md``, "Equations as this project implements them"):

* ``Q``: query feature maps ``[B, K, h, w]`` (B samples, K channels);
* ``GAP``: global average pooling over ``(h, w)``; ``q = GAP(Q)`` ``[B, K]``.

Papers (``/work/shared/papers/``): ``dist-cam.md`` (CAM Eq. 3, Dist-CAM Eq. 4-7),
``cama-ram.md`` (CAM Eq. 4, RAM Eq. 10, per-branch RAM Fig. 8), ``fam.md`` (FAM Sec. IV,
Eq. 11-18).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "global_average_pool",
    "class_prototype",
    "class_activation_map",
    "dist_cam_weights",
    "dist_cam",
    "ram",
    "ram_self",
    "ram_per_branch",
    "fam_channel_contributions",
    "fam_importance",
    "fam",
]

Metric = Literal["cosine", "euclidean"]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def global_average_pool(maps: Tensor) -> Tensor:
    """``GAP``: mean over the two last (spatial) dimensions, ``[..., K, h, w] -> [..., K]``."""
    if maps.ndim < 3:
        raise ValueError(f"expected maps [..., K, h, w], got shape {tuple(maps.shape)}")
    return maps.mean(dim=(-2, -1))


def class_prototype(supports: Tensor, dim: int = 1) -> Tensor:
    """Class prototype, dist-cam Eq. 7: ``P^c = (1/N) sum_i S_i^c``.

    Args:
        supports: support features of one class per sample, e.g. ``[B, N, K]`` vectors or
            ``[B, N, K, h, w]`` maps (N supports).
        dim: the support dimension that is averaged.

    Returns:
        The prototype, ``supports`` with ``dim`` removed (``[B, K]`` or ``[B, K, h, w]``).
    """
    return supports.mean(dim=dim)


def _combine(weights: Tensor, maps: Tensor) -> Tensor:
    """``sum_k weights[b, k] * maps[b, k]``: ``[B, K] x [B, K, h, w] -> [B, h, w]``."""
    if weights.shape != maps.shape[:2]:
        raise ValueError(
            f"weights {tuple(weights.shape)} do not match maps {tuple(maps.shape)} (need [B, K])"
        )
    return torch.einsum("bk,bkhw->bhw", weights.to(maps.dtype), maps)


def _check_maps(maps: Tensor, name: str = "maps") -> None:
    if maps.ndim != 4:
        raise ValueError(f"{name} must be [B, K, h, w], got shape {tuple(maps.shape)}")
    if not maps.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {maps.dtype}")


def _safe_norm(vectors: Tensor, eps: float) -> Tensor:
    """L2 norm over the last dimension, clamped below at ``eps`` (a zero vector gives no NaN)."""
    return torch.linalg.vector_norm(vectors, dim=-1).clamp_min(eps)


# --------------------------------------------------------------------------------------------------
# CAM
# --------------------------------------------------------------------------------------------------
def class_activation_map(maps: Tensor, weight: Tensor, classes: Tensor | Sequence[int] | int) -> Tensor:
    """Class Activation Map, dist-cam Eq. 3 (= cama-ram Eq. 4): ``M_c = sum_k w_{c,k} Q_k``.

    Args:
        maps: feature maps ``Q`` ``[B, K, h, w]`` that are pooled into the classifier's input.
        weight: classifier weight ``[C, K]`` (``nn.Linear(K, C).weight``).
        classes: class index per sample, ``[B]`` integer tensor, a sequence, or one int for all.

    Returns:
        The raw map ``[B, h, w]`` of each sample's class (no ReLU, no normalisation).
    """
    _check_maps(maps)
    if weight.ndim != 2 or weight.shape[1] != maps.shape[1]:
        raise ValueError(f"weight must be [C, K={maps.shape[1]}], got {tuple(weight.shape)}")
    classes_t = torch.as_tensor(classes, device=weight.device, dtype=torch.long)
    classes_t = classes_t.expand(maps.shape[0]) if classes_t.ndim == 0 else classes_t
    return _combine(weight[classes_t], maps)


# --------------------------------------------------------------------------------------------------
# Dist-CAM
# --------------------------------------------------------------------------------------------------
def _reference_vector(reference: Tensor, batch: int, channels: int) -> Tensor:
    """Reduce a Dist-CAM / RAM reference to ``[B, K]``.

    ``[B, K]`` is used as is, ``[B, K, h', w']`` maps are pooled (GAP), ``[B, N, K]`` supports are
    averaged into the class prototype (dist-cam Eq. 7).
    """
    if reference.ndim == 2:
        vector = reference
    elif reference.ndim == 3:
        vector = class_prototype(reference, dim=1)
    elif reference.ndim == 4:
        vector = global_average_pool(reference)
    else:
        raise ValueError(
            f"reference must be [B, K], [B, N, K] or [B, K, h, w], got {tuple(reference.shape)}"
        )
    if vector.shape != (batch, channels):
        raise ValueError(
            f"reference reduces to {tuple(vector.shape)}, expected [B={batch}, K={channels}]"
        )
    return vector


def dist_cam_weights(query: Tensor, reference: Tensor, eps: float = 1e-6) -> Tensor:
    """Dist-CAM channel weights, dist-cam Eq. 4-5.

    ``D = |s - q|`` (Eq. 4, element-wise L1 distance per channel) and
    ``W_k = (1 / (D_k + eps)) / sum_j (1 / (D_j + eps))`` (Eq. 5, ``norm`` read as division by the
    sum, so the weights are positive and sum to 1).

    The ratio is evaluated as ``(m / (D_k + eps)) / sum_j (m / (D_j + eps))`` with
    ``m = min_j (D_j + eps)``, which is the same number but stays finite in every dtype (float16
    included) when a channel distance is zero, e.g. for a reference equal to the query.

    Args:
        query: ``q = GAP(Q)`` ``[B, K]``.
        reference: ``GAP(S)`` or a prototype ``[B, K]``.
        eps: positive guard added to the distances.

    Returns:
        ``W`` ``[B, K]``, each row summing to 1.
    """
    if eps <= 0:
        raise ValueError("eps must be > 0")
    shifted = (reference.to(query.dtype) - query).abs() + eps  # D + eps, [B, K]
    smallest = shifted.amin(dim=-1, keepdim=True)
    inverse = smallest / shifted  # in (0, 1]; the closest channel has 1
    return inverse / inverse.sum(dim=-1, keepdim=True)


def dist_cam(maps: Tensor, reference: Tensor, eps: float = 1e-6) -> Tensor:
    """Distance-based Class Activation Map (Dist-CAM), dist-cam Eq. 4-6.

    ``D = |GAP(S) - GAP(Q)|`` (Eq. 4), ``W = norm(1 / D)`` (Eq. 5, see :func:`dist_cam_weights`),
    ``M = sum_k W_k Q_k`` (Eq. 6).

    Args:
        maps: query feature maps ``Q`` ``[B, K, h, w]``.
        reference: the reference side of each sample, one of

            * ``[B, K]``: a feature vector (gallery / support embedding) or a class prototype;
            * ``[B, N, K]``: the N support vectors of the class, averaged into the prototype
              (Eq. 7);
            * ``[B, K, h', w']``: the reference's feature maps, pooled by GAP (any ``h', w'``).
        eps: positive guard of Eq. 5 (a zero distance gives a large but finite weight).

    Returns:
        The raw Dist-CAM ``[B, h, w]`` (no ReLU, no normalisation).
    """
    _check_maps(maps)
    batch, channels = maps.shape[:2]
    reference_vector = _reference_vector(reference, batch, channels)
    weights = dist_cam_weights(global_average_pool(maps), reference_vector, eps=eps)
    return _combine(weights, maps)


# --------------------------------------------------------------------------------------------------
# RAM
# --------------------------------------------------------------------------------------------------
def ram(query_embedding: Tensor, gallery_maps: Tensor, eps: float = 1e-12) -> Tensor:
    """Ranking Activation Map (RAM), cama-ram Eq. 10: ``R_g^q(x, y) = <f_q, F_g(x, y)> / ||f_g||``.

    ``f_g = GAP(F_g)``. Summed over the pixels the map gives ``h * w * <f_q, f_g> / ||f_g||``, the
    part of the cosine similarity that depends on the gallery image (Eq. 9-10), so each pixel's
    value is its contribution to the ranking score.

    Args:
        query_embedding: ``f_q`` ``[B, K]``, the query's pooled feature (not L2-normalised, as in
            Eq. 10; pass the normalised one to compare several branches on the same scale).
        gallery_maps: ``F_g`` ``[B, K, h, w]``, the gallery image's feature maps.
        eps: lower bound on ``||f_g||``.

    Returns:
        The raw RAM ``[B, h, w]`` on the gallery image.
    """
    _check_maps(gallery_maps, "gallery_maps")
    if query_embedding.shape != gallery_maps.shape[:2]:
        raise ValueError(
            f"query_embedding {tuple(query_embedding.shape)} does not match gallery_maps "
            f"{tuple(gallery_maps.shape)} (need [B, K])"
        )
    gallery_norm = _safe_norm(global_average_pool(gallery_maps), eps)  # [B]
    return _combine(query_embedding, gallery_maps) / gallery_norm[:, None, None]


def ram_self(query_maps: Tensor, eps: float = 1e-12) -> Tensor:
    """The query's own RAM ``R_q^q`` (cama-ram Sec. 3.4, after Eq. 10).

    Eq. 10 with ``f_g`` replaced by ``f_q``: ``R_q^q(x, y) = <f_q, F_q(x, y)> / ||f_q||`` with
    ``f_q = GAP(F_q)``; it sums over the pixels to ``h * w * ||f_q||``.

    Args:
        query_maps: ``F_q`` ``[B, K, h, w]``.

    Returns:
        ``[B, h, w]``.
    """
    _check_maps(query_maps, "query_maps")
    return ram(global_average_pool(query_maps), query_maps, eps=eps)


def ram_per_branch(
    query_embeddings: Sequence[Tensor] | Tensor,
    gallery_maps: Sequence[Tensor] | Tensor,
    eps: float = 1e-12,
) -> Tensor:
    """Per-branch RAMs of a multi-branch model, cama-ram Fig. 8 (Eq. 10 with ``f_q^i, F_g^i``).

    Branch ``i`` gives ``R^i(x, y) = <f_q^i, F_g^i(x, y)> / ||f_g^i||``. The branches may have
    different channel counts ``K_i`` but must share the spatial size ``h, w``. When every ``K_i`` is
    equal (or stacked tensors are given) the computation is one batched call; otherwise it loops
    over the (few) branches.

    The aggregated map of the concatenated test feature ``f = [f^1/||f^1||; ...; f^N/||f^N||]``
    (cama-ram Sec. 3.3) is ``ram_per_branch([f_q^i / ||f_q^i||], [F_g^i]).sum(1)``: it sums over
    the pixels to ``h * w * <f_q, f_g>`` of the concatenated features.

    Args:
        query_embeddings: list of ``f_q^i`` ``[B, K_i]``, or a stacked tensor ``[B, N, K]``.
        gallery_maps: list of ``F_g^i`` ``[B, K_i, h, w]``, or a stacked tensor
            ``[B, N, K, h, w]``.
        eps: lower bound on each ``||f_g^i||``.

    Returns:
        ``[B, N_branches, h, w]``.
    """
    if isinstance(query_embeddings, Tensor) and isinstance(gallery_maps, Tensor):
        if query_embeddings.ndim != 3 or gallery_maps.ndim != 5:
            raise ValueError("stacked inputs must be [B, N, K] and [B, N, K, h, w]")
        batch, branches = query_embeddings.shape[:2]
        flat = ram(
            query_embeddings.reshape(batch * branches, -1),
            gallery_maps.reshape(batch * branches, *gallery_maps.shape[2:]),
            eps=eps,
        )
        return flat.reshape(batch, branches, *flat.shape[-2:])
    queries, galleries = list(query_embeddings), list(gallery_maps)
    if len(queries) != len(galleries) or not queries:
        raise ValueError("need the same, non-zero number of query embeddings and gallery maps")
    sizes = {tuple(g.shape[-2:]) for g in galleries}
    if len(sizes) != 1:
        raise ValueError(f"all branches must share the spatial size, got {sorted(sizes)}")
    if len({tuple(q.shape) for q in queries}) == 1 and len({tuple(g.shape) for g in galleries}) == 1:
        return ram_per_branch(torch.stack(queries, 1), torch.stack(galleries, 1), eps=eps)
    return torch.stack([ram(q, g, eps=eps) for q, g in zip(queries, galleries)], dim=1)


# --------------------------------------------------------------------------------------------------
# FAM
# --------------------------------------------------------------------------------------------------
def _embedding_contributions(query: Tensor, supports: Tensor, metric: Metric, eps: float) -> Tensor:
    """Per-dimension contributions ``c`` ``[B, D]`` of ``query`` ``[B, D]`` vs ``supports`` ``[B, N, D]``.

    cosine (fam Eq. 14-15): ``c_k = mean_n q_k s_{n,k} / (||q|| ||s_n||)``, summing to the mean
    cosine similarity over the N supports (Eq. 11);
    euclidean: ``c_k = -mean_n (q_k - s_{n,k})^2``, summing to minus the mean squared distance.
    """
    if metric == "cosine":
        query_unit = query / _safe_norm(query, eps)[:, None]
        supports_unit = supports / _safe_norm(supports, eps)[..., None]
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
        ``c`` ``[B, K]`` (before the min-max normalisation of Eq. 12).
    """
    if query.ndim != 2:
        raise ValueError(f"query must be [B, K], got {tuple(query.shape)}")
    supports = references[:, None, :] if references.ndim == 2 else references
    if supports.ndim != 3 or supports.shape[0] != query.shape[0]:
        raise ValueError(f"references must be [B, N, dim], got {tuple(references.shape)}")
    supports = supports.to(query.dtype)
    if projection is None:
        if supports.shape[-1] != query.shape[-1]:
            raise ValueError(f"references {tuple(references.shape)} must end in K={query.shape[-1]}")
        return _embedding_contributions(query, supports, metric, eps)

    weight = projection.to(query.dtype)
    if weight.ndim != 2 or weight.shape[1] != query.shape[-1]:
        raise ValueError(f"projection must be [D, K={query.shape[-1]}], got {tuple(projection.shape)}")
    if supports.shape[-1] != weight.shape[0]:
        raise ValueError(f"with a projection, references must be [B, N, D={weight.shape[0]}]")
    embedding = query @ weight.T  # e_q [B, D]
    if metric == "cosine":
        # c_j / e_j = mean_n s_{n,j} / (||e_q|| ||s_n||) exactly: no division by e_j at all.
        supports_unit = supports / _safe_norm(supports, eps)[..., None]
        ratio = supports_unit.mean(dim=1) / _safe_norm(embedding, eps)[:, None]
    else:
        dim_contributions = _embedding_contributions(embedding, supports, metric, eps)  # c_j [B, D]
        guarded = torch.where(
            embedding.abs() < eps, torch.where(embedding < 0, -eps, eps).to(embedding.dtype), embedding
        )
        ratio = dim_contributions / guarded
    # c'_k = q_k * sum_j (c_j / e_j) W_jk: one [B, D] x [D, K] product, no [B, D, K] tensor.
    return query * (ratio @ weight)


def fam_importance(contributions: Tensor) -> Tensor:
    """Importance coefficients ``alpha``, fam Eq. 12: min-max normalisation of ``c`` over channels.

    ``alpha_k = (c_k - min_j c_j) / (max_j c_j - min_j c_j)``. When all contributions of a sample
    are equal the ratio is undefined; every channel is then equally important and gets
    ``alpha_k = 1``.

    Args:
        contributions: ``c`` ``[B, K]``.

    Returns:
        ``alpha`` ``[B, K]`` in ``[0, 1]``.
    """
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
) -> Tensor:
    """Feature Activation Map (FAM), fam Sec. IV (Eq. 11-13, 15-18).

    ``q = GAP(Q)``; channel contributions ``c`` to the (support-averaged) similarity
    (Eq. 11, 15; :func:`fam_channel_contributions`, which also maps embedding-dimension
    contributions back to channels when the model ranks with ``e = W q``, Eq. 16-18);
    ``alpha = minmax(c)`` (Eq. 12, :func:`fam_importance`); ``FAM = sum_k alpha_k Q_k`` (Eq. 13
    without its ReLU, which :func:`~cama.explain.render.postprocess` applies).

    Args:
        maps: query feature maps ``Q`` ``[B, K, h, w]``.
        references: the N supports of the class, ``[B, N, K]`` pooled features, or ``[B, N, D]``
            embeddings when ``projection`` is given; ``[B, K]`` / ``[B, D]`` is one support.
        metric: ``"cosine"`` or ``"euclidean"``.
        projection: optional FC weight ``W`` ``[D, K]`` between the pooled feature and the
            embedding used for the similarity.
        eps: numerical guard (norms, ``e_j``).

    Returns:
        The raw FAM ``[B, h, w]``.
    """
    _check_maps(maps)
    contributions = fam_channel_contributions(
        global_average_pool(maps), references, metric=metric, projection=projection, eps=eps
    )
    return _combine(fam_importance(contributions), maps)
