"""Forward-only explanation maps: CAM, Dist-CAM and RAM (FAM: :mod:`cama.explain.feature_activation`).

Every function here is a pure, batched tensor function: no hooks, no Python loop over samples or
channels, any device and any floating dtype. Each returns the **raw** map at feature resolution --
exactly the linear combination of its equation, with no ReLU and no normalisation -- so that
magnitudes can be compared across branches and references. Apply
:func:`cama.explain.render.postprocess` (ReLU -> bilinear upsampling -> per-map min-max) to get a
displayable map.

Precision: every function computes in float32 whatever the inputs' dtype (float16 / bfloat16
feature maps of a mixed-precision model are upcast, autocast is off inside; float64 stays
float64) and returns float32 (float64 for float64 inputs): see
:func:`cama.explain._common.full_precision`. The eps guards therefore act in float32, and an
all-zero map gives a zero map, not NaN.

Notation (``docs/explanations.md#notation``):

* ``Q``: query feature maps ``[B, K, h, w]`` (B samples, K channels);
* ``GAP``: global average pooling over ``(h, w)``; ``q = GAP(Q)`` ``[B, K]``.

Papers (``docs/explanations.md#the-papers``): dist-cam (CAM Eq. 3, Dist-CAM Eq. 4-7), cama-ram (CAM
Eq. 4, RAM Eq. 10, per-branch RAM Fig. 8); the equations as implemented are in
``docs/explanations.md`` (sections CAM, Dist-CAM, RAM).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from ._common import check_maps, combine, full_precision, safe_norm

__all__ = [
    "global_average_pool",
    "class_prototype",
    "class_activation_map",
    "dist_cam_weights",
    "dist_cam",
    "ram",
    "ram_self",
    "ram_per_branch",
]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def global_average_pool(maps: Tensor) -> Tensor:
    """``GAP``: mean over the two last (spatial) dimensions, ``[..., K, h, w] -> [..., K]``.

    Computed and returned in float32 (float64 for float64 maps).
    """
    if maps.ndim < 3:
        raise ValueError(f"expected maps [..., K, h, w], got shape {tuple(maps.shape)}")
    with full_precision(maps) as (maps,):
        return maps.mean(dim=(-2, -1))


def class_prototype(supports: Tensor, dim: int = 1) -> Tensor:
    """Class prototype, dist-cam Eq. 7: ``P^c = (1/N) sum_i S_i^c``.

    Args:
        supports: support features of one class per sample, e.g. ``[B, N, K]`` vectors or
            ``[B, N, K, h, w]`` maps (N supports).
        dim: the support dimension that is averaged.

    Returns:
        The prototype, ``supports`` with ``dim`` removed (``[B, K]`` or ``[B, K, h, w]``), float32
        (float64 for float64 supports).
    """
    with full_precision(supports) as (supports,):
        return supports.mean(dim=dim)


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
        The raw map ``[B, h, w]`` of each sample's class (no ReLU, no normalisation), float32
        (float64 for float64 maps). Differentiable: the OAP (cama-ram Eq. 5) trains through it.
    """
    check_maps(maps)
    if weight.ndim != 2 or weight.shape[1] != maps.shape[1]:
        raise ValueError(f"weight must be [C, K={maps.shape[1]}], got {tuple(weight.shape)}")
    classes_t = torch.as_tensor(classes, device=weight.device, dtype=torch.long)
    classes_t = classes_t.expand(maps.shape[0]) if classes_t.ndim == 0 else classes_t
    with full_precision(maps, weight[classes_t]) as (maps, class_weights):
        # maps first: the contraction (and its backward) the OAP's training has always used
        return torch.einsum("bkhw,bk->bhw", maps, class_weights)


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


Smoothing = float | Literal["mean"] | None


def dist_cam_weights(
    query: Tensor, reference: Tensor, eps: float = 1e-6, smoothing: Smoothing = None
) -> Tensor:
    """Dist-CAM channel weights, dist-cam Eq. 4-5 (``smoothing``: a variant beyond the paper).

    ``D = |s - q|`` (Eq. 4, element-wise L1 distance per channel) and
    ``W_k = (1 / (D_k + eps)) / sum_j (1 / (D_j + eps))`` (Eq. 5, ``norm`` read as division by the
    sum, so the weights are positive and sum to 1).

    **Smoothed variant** (not in the paper, off by default): ``smoothing`` adds a term ``s`` to the
    denominator, ``W_k = (1 / (D_k + s + eps)) / sum_j (1 / (D_j + s + eps))``, with ``s`` the
    given constant ``>= 0`` or, for ``"mean"``, ``s = mean_j D_j`` per sample. Eq. 5's weights put
    most of the mass on the few channels whose distance is nearly 0 (a tiny change of the reference
    moves them a lot); ``s`` bounds the ratio of two weights by ``(max D + s) / s``, and a very large
    ``s`` tends to equal channel weights ``1 / K``. ``None`` is Eq. 5.

    The ratio is evaluated as ``(m / (D_k + eps)) / sum_j (m / (D_j + eps))`` with
    ``m = min_j (D_j + eps)``, which is the same number but stays finite in every dtype (float16
    included) when a channel distance is zero, e.g. for a reference equal to the query.

    Args:
        query: ``q = GAP(Q)`` ``[B, K]``.
        reference: ``GAP(S)`` or a prototype ``[B, K]``.
        eps: positive guard added to the distances.
        smoothing: ``None`` (Eq. 5), a constant ``s >= 0``, or ``"mean"`` (``s = mean_j D_j``).

    Returns:
        ``W`` ``[B, K]``, each row summing to 1, float32 (float64 for a float64 ``query``).
    """
    if eps <= 0:
        raise ValueError("eps must be > 0")
    if smoothing is not None and smoothing != "mean":
        if isinstance(smoothing, str) or not float(smoothing) >= 0:
            raise ValueError(f"smoothing must be None, 'mean' or a number >= 0, got {smoothing!r}")
    with full_precision(query, reference) as (query, reference):
        distances = (reference - query).abs()  # D, [B, K]
        if smoothing == "mean":
            distances = distances + distances.mean(dim=-1, keepdim=True)
        elif smoothing is not None:
            distances = distances + float(smoothing)
        shifted = distances + eps  # D (+ s) + eps
        smallest = shifted.amin(dim=-1, keepdim=True)
        inverse = smallest / shifted  # in (0, 1]; the closest channel has 1
        return inverse / inverse.sum(dim=-1, keepdim=True)


def dist_cam(maps: Tensor, reference: Tensor, eps: float = 1e-6, smoothing: Smoothing = None) -> Tensor:
    """Distance-based Class Activation Map (Dist-CAM), dist-cam Eq. 4-6.

    ``D = |GAP(S) - GAP(Q)|`` (Eq. 4), ``W = norm(1 / D)`` (Eq. 5, see :func:`dist_cam_weights`),
    ``M = sum_k W_k Q_k`` (Eq. 6). ``smoothing`` gives the smoothed variant beyond the paper,
    ``W_k ∝ 1 / (D_k + s)`` (:func:`dist_cam_weights`; the explainer's ``dist_cam_smoothed``).

    Args:
        maps: query feature maps ``Q`` ``[B, K, h, w]``.
        reference: the reference side of each sample, one of

            * ``[B, K]``: a feature vector (gallery / support embedding) or a class prototype;
            * ``[B, N, K]``: the N support vectors of the class, averaged into the prototype
              (Eq. 7);
            * ``[B, K, h', w']``: the reference's feature maps, pooled by GAP (any ``h', w'``).
        eps: positive guard of Eq. 5 (a zero distance gives a large but finite weight).
        smoothing: ``None`` (Eq. 5, the default), a constant ``s >= 0`` or ``"mean"``.

    Returns:
        The raw Dist-CAM ``[B, h, w]`` (no ReLU, no normalisation), float32 (float64 for float64
        maps).
    """
    check_maps(maps)
    batch, channels = maps.shape[:2]
    with full_precision(maps, reference) as (maps, reference):
        reference_vector = _reference_vector(reference, batch, channels)
        weights = dist_cam_weights(global_average_pool(maps), reference_vector, eps=eps, smoothing=smoothing)
        return combine(weights, maps)


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
        The raw RAM ``[B, h, w]`` on the gallery image, float32 (float64 for float64
        ``gallery_maps``).
    """
    check_maps(gallery_maps, "gallery_maps")
    if query_embedding.shape != gallery_maps.shape[:2]:
        raise ValueError(
            f"query_embedding {tuple(query_embedding.shape)} does not match gallery_maps "
            f"{tuple(gallery_maps.shape)} (need [B, K])"
        )
    with full_precision(gallery_maps, query_embedding) as (gallery_maps, query_embedding):
        gallery_norm = safe_norm(global_average_pool(gallery_maps), eps)  # [B], eps in float32
        return combine(query_embedding, gallery_maps) / gallery_norm[:, None, None]


def ram_self(query_maps: Tensor, eps: float = 1e-12) -> Tensor:
    """The query's own RAM ``R_q^q`` (cama-ram Sec. 3.4, after Eq. 10).

    Eq. 10 with ``f_g`` replaced by ``f_q``: ``R_q^q(x, y) = <f_q, F_q(x, y)> / ||f_q||`` with
    ``f_q = GAP(F_q)``; it sums over the pixels to ``h * w * ||f_q||``.

    Args:
        query_maps: ``F_q`` ``[B, K, h, w]``.

    Returns:
        ``[B, h, w]``, float32 (float64 for float64 maps).
    """
    check_maps(query_maps, "query_maps")
    with full_precision(query_maps) as (query_maps,):
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
        ``[B, N_branches, h, w]``, float32 (float64 when the gallery maps are float64).
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
