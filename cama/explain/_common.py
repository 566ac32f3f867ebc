"""Internals shared by the map modules of ``cama.explain``: working precision and input checks.

Working precision: every map is computed in float32 whatever its inputs' dtype, so that the maps
of a model trained with ``bf16-mixed`` / ``16-mixed`` precision equal the float32 maps of the same
feature values. Half types would otherwise lose the maps' small ranges (bfloat16 keeps 8 bits of
mantissa), and eps guards such as ``1e-12`` underflow to zero in float16 (``0 / 0 = NaN`` for an
all-zero map). :func:`full_precision` upcasts the inputs and switches autocast off while the map
is computed (under ``torch.autocast`` an ``einsum`` or ``@`` of float32 tensors would otherwise run
in the autocast dtype). float64 inputs stay float64, so the float64 reference computations of the
tests keep their precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from .precision import autocast_off, work_dtype


@contextmanager
def full_precision(primary: Tensor, *others: Tensor | None) -> Iterator[tuple[Tensor | None, ...]]:
    """Upcast tensors to the working dtype and compute without autocast.

    Usage: ``with full_precision(maps, reference) as (maps, reference): ...``.

    Args:
        primary: the tensor whose dtype decides the working dtype, :func:`work_dtype` of its dtype
            (the feature maps of a map function), so float32 maps with a float64 reference still
            compute in float32, as before.
        others: more tensors, cast to the same dtype (``None`` passes through).

    Yields:
        ``(primary, *others)`` in the working dtype (no copy when already there), with autocast
        disabled on their devices for the duration of the block.
    """
    dtype = work_dtype(primary.dtype)
    tensors = (primary, *others)
    cast = tuple(None if t is None else t.to(dtype) for t in tensors)
    with autocast_off(*(t.device.type for t in tensors if t is not None)):
        yield cast


def check_maps(maps: Tensor, name: str = "maps") -> None:
    """Raise unless ``maps`` is a floating ``[B, K, h, w]`` tensor."""
    if maps.ndim != 4:
        raise ValueError(f"{name} must be [B, K, h, w], got shape {tuple(maps.shape)}")
    if not maps.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {maps.dtype}")


def combine(weights: Tensor, maps: Tensor) -> Tensor:
    """``sum_k weights[b, k] * maps[b, k]``: ``[B, K] x [B, K, h, w] -> [B, h, w]``, in ``maps``' dtype."""
    if weights.shape != maps.shape[:2]:
        raise ValueError(
            f"weights {tuple(weights.shape)} do not match maps {tuple(maps.shape)} (need [B, K])"
        )
    return torch.einsum("bk,bkhw->bhw", weights.to(maps.dtype), maps)


def safe_norm(vectors: Tensor, eps: float) -> Tensor:
    """L2 norm over the last dimension, clamped below at ``eps`` (a zero vector gives no NaN).

    Call it on working-precision tensors: ``eps`` (e.g. ``1e-12``) is representable in float32
    but not in float16.
    """
    return torch.linalg.vector_norm(vectors, dim=-1).clamp_min(eps)
