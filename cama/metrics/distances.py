"""Pairwise distances of embeddings, safe from float32 overflow.

The squared Euclidean distance is computed by the expansion ``||x||^2 + ||y||^2 - 2 <x, y>`` (one
matrix product). For large but finite embeddings (entries beyond about ``1e17`` in 2048
dimensions, e.g. a diverging model, or float64 embeddings beyond the float32 range) the squared
norms overflow float32 and ``inf - inf`` gives NaN. :func:`overflow_safe_float32` therefore divides
all the embeddings of one comparison by a common power of two ``2^k`` (exact in binary floating
point; ``k = 0``, i.e. nothing changes, for ordinary embeddings) before the computation, which
leaves every ranking unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cama.explain.precision import autocast_off

__all__ = [
    "max_abs", "overflow_safe_float32", "overflow_safe_scale", "paired_distance", "pairwise_distance",
    "prepare_rows", "prepared_distance", "scale_for", "squared_norms",
]

_FLOAT32_MAX = torch.finfo(torch.float32).max


def max_abs(x: Tensor, dim: int | None = None) -> Tensor:
    """``x.abs().amax(dim)`` without the ``abs`` copy of ``x`` (one ``aminmax`` pass; NaN propagates)."""
    if x.shape[-1 if dim is None else dim] == 0:  # aminmax rejects an empty reduction
        return x.new_zeros(() if dim is None else x.shape[:dim] + x.shape[dim + 1 :])
    lo, hi = torch.aminmax(x) if dim is None else torch.aminmax(x, dim=dim)
    return torch.maximum(hi, lo.neg())


def scale_for(largest: Tensor, dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """:func:`overflow_safe_scale` of embeddings of dimension ``dim`` whose largest absolute entry is
    ``largest`` (0-d): ``2^-k``, ``k >= 0`` the smallest exponent with ``largest`` at most
    ``sqrt(float32_max / (8 dim))``, as a 0-d tensor of ``dtype``."""
    limit_exponent = math.floor(math.log2(math.sqrt(_FLOAT32_MAX / (8 * max(dim, 1)))))
    _, exponent = torch.frexp(largest.to(dtype))  # largest < 2^exponent
    k = (exponent - limit_exponent).clamp_min(0).to(dtype)
    return torch.exp2(-k)  # 1 unless needed; an exact power of two


def overflow_safe_scale(*embeddings: Tensor) -> Tensor:
    """The power of two ``2^-k``, ``k >= 0``, that :func:`overflow_safe_float32` multiplies ``embeddings``
    by: a 0-d tensor in their promoted dtype (at least float32), 1 unless an entry is larger than
    ``sqrt(float32_max / (8 D))`` (:func:`scale_for`). No host synchronisation, no copy of the inputs."""
    dim = max(max((e.shape[-1] for e in embeddings), default=1), 1)
    dtype = torch.float32
    for e in embeddings:
        dtype = torch.promote_types(dtype, e.dtype)
    nonempty = [e for e in embeddings if e.numel()]
    if not nonempty:
        return torch.ones((), dtype=dtype)
    largest = torch.stack([max_abs(e).to(dtype) for e in nonempty]).amax()
    return scale_for(largest, dim, dtype)


def prepare_rows(x: Tensor, scale: Tensor, distance: str) -> Tensor:
    """``[N, D]`` rows as :func:`prepared_distance` takes them: float32, multiplied by ``scale`` (an
    :func:`overflow_safe_scale` of every row they are compared with) in ``scale``'s dtype, and of
    unit length for ``"cosine"`` -- :func:`pairwise_distance`'s preparation of one side. ``x`` itself
    (no copy) where that changes nothing: float32 rows, scale 1, ``"euclidean"``. One host
    synchronisation (whether the scale is 1)."""
    if x.dtype != torch.float32 or bool(scale != 1):
        x = (x.to(scale.dtype) * scale.to(x.device)).float()
    if distance == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    return x


def squared_norms(x: Tensor, block_rows: int = 4096) -> Tensor:
    """``[N]`` ``(x * x).sum(1)``, :func:`prepared_distance`'s squared norms, ``block_rows`` rows at a
    time (no ``[N, D]`` temporary). Each row is reduced alone, the same way in a block as in the
    whole matrix, so the values are those of the one-shot expression."""
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    block_rows = max(1, block_rows)
    with autocast_off(x.device.type):
        for s in range(0, x.shape[0], block_rows):
            rows = x[s : s + block_rows]
            torch.sum(rows * rows, dim=1, out=out[s : s + block_rows])
    return out


def overflow_safe_float32(*embeddings: Tensor) -> tuple[Tensor, ...]:
    """``[N_i, D]`` embeddings as float32, all divided by one power of two ``2^k``, ``k >= 0``.

    ``k`` is the smallest exponent for which every entry is at most
    ``sqrt(float32_max / (8 D))``, so that sums of ``D`` squared differences stay finite in float32
    with a factor of 2 to spare; ``k = 0`` (the embeddings only cast to float32) unless an entry is
    larger than that bound (:func:`overflow_safe_scale`). The scaling is done before the cast, in
    float64 for float64 inputs, so finite float64 embeddings beyond the float32 range stay finite.
    No host synchronisation.

    Returns:
        The scaled float32 embeddings, in the order given. Distances computed from them are the
        distances of the inputs divided by ``2^k`` (squared distances by ``4^k``): the same ranking.
    """
    if not embeddings:
        return ()
    scale = overflow_safe_scale(*embeddings)
    return tuple((e.to(scale.dtype) * scale.to(e.device)).float() for e in embeddings)


def prepared_distance(x: Tensor, y: Tensor, distance: str, x_sq: Tensor | None = None,
                      y_sq: Tensor | None = None) -> Tensor:
    """:func:`pairwise_distance`'s ``[N, M]`` distances of float32 rows already made overflow-safe
    (and, for ``"cosine"``, of unit length); ``x_sq`` / ``y_sq``: the rows' squared norms
    (``"euclidean"``; computed when not given). Blocks of one distance matrix computed with the
    same scaling rank like the whole matrix."""
    with autocast_off(x.device.type):
        if distance == "euclidean":
            xx = (x * x).sum(1) if x_sq is None else x_sq
            yy = (y * y).sum(1) if y_sq is None else y_sq
            return torch.addmm(yy[None, :], x, y.t(), alpha=-2.0).add_(xx[:, None])
        return torch.mm(x, y.t()).neg_().add_(1.0)


def paired_distance(x: Tensor, y: Tensor, distance: str, x_sq: Tensor, y_sq: Tensor) -> Tensor:
    """The ``[P]`` distances of the row pairs ``(x[p], y[p])``, by :func:`prepared_distance`'s formula
    (same inputs; ``x_sq`` / ``y_sq`` the squared norms, unused for ``"cosine"``)."""
    dot = torch.einsum("pd,pd->p", x, y)
    if distance == "euclidean":
        return y_sq.add(dot, alpha=-2.0).add_(x_sq)
    return dot.neg_().add_(1.0)


def pairwise_distance(x: Tensor, y: Tensor, distance: str = "euclidean") -> Tensor:
    """``[N, M]`` distances between rows of ``x`` and ``y`` (float32, finite for finite inputs).

    ``"euclidean"``: squared Euclidean distance (same ranking as the Euclidean distance);
    ``"cosine"``: ``1 - cos(x, y)``. Both are computed on :func:`overflow_safe_float32` of
    ``(x, y)``: for embeddings with entries beyond ``sqrt(float32_max / (8 D))`` (about ``1e17``
    for ``D = 2048``) the squared distances are those of ``x / 2^k`` and ``y / 2^k`` -- the same
    ranking, never NaN; otherwise they are exactly the squared distances of ``x`` and ``y`` in float32.
    Autocast is off inside (a bfloat16 ``addmm`` would not keep the ranking).
    """
    if distance not in ("euclidean", "cosine"):
        raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
    scale = overflow_safe_scale(x, y)
    return prepared_distance(prepare_rows(x, scale, distance), prepare_rows(y, scale, distance), distance)
