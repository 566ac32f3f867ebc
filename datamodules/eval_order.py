"""The order in which an evaluation loader visits its samples: every prefix is a fair sample.

Re-ID evaluation sets are stored queries first, then the gallery; retrieval sets class by class.
A loop that sees only a prefix of the loader (Lightning's sanity check, ``limit_val_batches``)
would then see queries and no gallery, or a handful of classes. :class:`SpreadSampler` visits the
samples of several groups (query / gallery, or the classes) interleaved in proportion to the
groups' sizes, so any prefix holds about the same share of each group and the metrics over it
describe a smaller evaluation set of the same make-up.

The order changes no full-set number: the metrics order what they collected by dataset index, and
batch composition does not change a network's per-sample output in eval mode.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["SpreadSampler", "spread_order"]


def spread_order(groups: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Dataset indices ``0..N-1`` reordered so that every prefix holds each group in proportion.

    ``groups[i]`` is the group of dataset index ``i``. Sample ``r`` of a group of ``n`` (in index
    order) gets the key ``(r + 0.5) / n``; indices are sorted by key, ties by index. A group of
    ``n`` samples then has ``round(n * m / N)`` (+-1) samples among the first ``m``.
    """
    g = torch.as_tensor(groups, dtype=torch.long)
    if g.dim() != 1:
        raise ValueError(f"groups must be 1-D (one group per sample), got shape {tuple(g.shape)}")
    if g.numel() == 0:
        return g
    _, inverse, counts = torch.unique(g, return_inverse=True, return_counts=True)
    order_in = torch.argsort(inverse, stable=True)  # indices grouped, index order inside a group
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(g)
    rank[order_in] = torch.arange(g.numel()) - starts[inverse[order_in]]
    key = (rank.double() + 0.5) / counts[inverse].double()
    return torch.argsort(key, stable=True)


class SpreadSampler(Sampler[int]):
    """Yields the indices of :func:`spread_order` (the same every epoch, no randomness)."""

    def __init__(self, groups: Sequence[int] | torch.Tensor) -> None:
        self.order = spread_order(groups).tolist()

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)
