"""Metric states shared by the Metrics of :mod:`cama.metrics`: float64 sums (exact under DDP) and
per-sample tensors concatenated over the epoch (``"cat"``, gathered from every process), and
:class:`CatRows`, rows of such a state taken without concatenating it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["CatRows", "CollectedSamples", "add_sum_states", "mean_and_interval"]


def add_sum_states(metric: Metric, *names: str, shape: tuple[int, ...] = ()) -> None:
    """Add float64 zero states ``names`` of ``shape`` to ``metric``, reduced by ``sum``."""
    for name in names:
        metric.add_state(name, default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")


def mean_and_interval(
    total: Tensor, total_sq: Tensor, n: Tensor, z: float = 1.96, unbiased: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean, z * std / sqrt(n), std)`` of ``n`` samples known by their sum and sum of squares (the
    sum states a Metric keeps, exact under DDP), in float64. ``std`` is the population standard
    deviation, or the sample one (``ddof = 1``) when ``unbiased``; a single sample gives 0."""
    n_f = torch.as_tensor(n).to(torch.float64)
    mean = total / n_f
    var = (total_sq / n_f - mean * mean).clamp_min(0.0)  # population variance
    if unbiased:
        var = var * n_f / (n_f - 1).clamp_min(1.0)
    std = var.sqrt()
    return mean, z * std / n_f.sqrt(), std


class CatRows:
    """The rows of ``torch.cat(pieces)`` (``[N, D]``, the pieces' promoted dtype) without that
    concatenated copy: a ``"cat"`` state collected batch by batch (or already one tensor, as after a
    distributed sync), of which an evaluation takes a few sets of rows."""

    def __init__(self, pieces: Sequence[Tensor] | Tensor) -> None:
        self.pieces = [pieces] if isinstance(pieces, Tensor) else list(pieces)
        if not self.pieces:
            raise ValueError("CatRows needs at least one tensor")
        sizes = torch.tensor([p.shape[0] for p in self.pieces])
        self.ends = sizes.cumsum(0)
        self.starts = self.ends - sizes
        self.dtype = self.pieces[0].dtype
        for p in self.pieces[1:]:
            self.dtype = torch.promote_types(self.dtype, p.dtype)
        self.shape = (int(self.ends[-1]), *self.pieces[0].shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def map_rows(self, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """``torch.cat([fn(piece) for piece in pieces])``: a per-row function of every row, piece by piece."""
        return torch.cat([fn(p) for p in self.pieces])

    def take(self, positions: Tensor) -> Tensor:
        """``torch.cat(pieces)[positions]``, ``positions`` ``[P]`` long: a view of one piece where they
        are consecutive ascending rows of it (no copy), else a new tensor."""
        positions = positions.reshape(-1)
        count = positions.numel()
        dev = self.pieces[0].device
        where = torch.searchsorted(self.ends.to(positions.device), positions, right=True).cpu()
        if count and bool((where == where[0]).all()):
            i = int(where[0])
            piece = self.pieces[i]
            local = positions - int(self.starts[i])
            first = int(local[0])
            if piece.dtype == self.dtype and torch.equal(local, torch.arange(first, first + count, device=local.device)):
                return piece[first : first + count]
            return piece.index_select(0, local.to(piece.device)).to(self.dtype)
        out = torch.empty((count, *self.shape[1:]), dtype=self.dtype, device=dev)
        order = torch.argsort(where, stable=True)
        bounds = torch.bincount(where, minlength=len(self.pieces)).cumsum(0).tolist()
        lo = 0
        for i, hi in enumerate(bounds):
            if hi > lo:
                sel = order[lo:hi].to(dev)
                local = positions.to(dev).index_select(0, sel) - int(self.starts[i])
                out.index_copy_(0, sel, self.pieces[i].index_select(0, local).to(self.dtype))
            lo = hi
        return out


class CollectedSamples(Metric):
    """A Metric that collects per-sample tensors in ``"cat"`` states and ranks them once per epoch."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    _epoch_key: int | None = None
    _epoch_value: Any = None

    def _add_cat_states(self, *names: str) -> None:
        self._sample_states = names
        for name in names:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def _once_per_epoch(self, build: Callable[[], Any]) -> Any:
        """``build()``, kept until the next ``update`` or ``reset``: several callbacks of one epoch
        then gather the states once. Every process takes the same path (the same updates happened
        on each), so a collective inside ``build`` runs on all of them or on none."""
        key = self.update_count
        if self._epoch_key == key and self._epoch_value is not None:
            return self._epoch_value
        value = build()
        self._epoch_key, self._epoch_value = key, value
        return value

    def reset(self) -> None:
        super().reset()
        self._epoch_key, self._epoch_value = None, None

    def _collected(self, *names: str) -> tuple[Tensor, ...] | None:
        """The sample states ``names`` (default: every one, in the order added) concatenated, None
        before any update."""
        last = getattr(self, self._sample_states[-1])
        if isinstance(last, list) and not last:
            return None
        return tuple(dim_zero_cat(getattr(self, name)) for name in names or self._sample_states)

    def _collected_rows(self, name: str) -> CatRows | None:
        """The rows of sample state ``name`` without concatenating them (:class:`CatRows`), None
        before any update."""
        state = getattr(self, name)
        if isinstance(state, list) and not state:
            return None
        return CatRows(state)
