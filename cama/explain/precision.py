"""Working precision under mixed precision: compute in at least float32, with autocast off.

Models trained with ``bf16-mixed`` / ``16-mixed`` hand half-precision feature maps and embeddings
to the maps, metrics and heads. Where half precision would lose the result (small ranges in
bfloat16's 8-bit mantissa, eps guards that underflow in float16, sums of squares that overflow at
65504) the computation runs in :func:`work_dtype`; float64 stays float64.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor

__all__ = ["at_least_float32", "autocast_off", "work_dtype"]


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` promoted to at least float32: float16, bfloat16, float32 and integer dtypes give
    float32; float64 stays float64."""
    return torch.promote_types(dtype, torch.float32) if dtype.is_floating_point else torch.float32


def at_least_float32(tensor: Tensor) -> Tensor:
    """``tensor`` in :func:`work_dtype` of its dtype (no copy when already there)."""
    return tensor.to(work_dtype(tensor.dtype))


@contextmanager
def autocast_off(*device_types: str) -> Iterator[None]:
    """Autocast disabled on each of ``device_types`` (where autocast exists) for the block: under
    ``torch.autocast`` an ``einsum``, ``@`` or ``addmm`` of float32 tensors would run in half precision."""
    with ExitStack() as stack:
        for device_type in sorted(set(device_types)):
            if torch.amp.is_autocast_available(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield
