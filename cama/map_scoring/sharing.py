"""Which process scores which probe: every probe exactly once over the processes.

Each process of a distributed run keeps the feature maps of the probes its own validation batches
held (its share of the evaluation set). A probe is scored by the first process that kept its maps
(no second forward); a probe no process kept is dealt round-robin (position ``p`` to process
``p % world``) and forwarded there. Every process derives the same owners from the same gathered
flags, so the shares cover the probes exactly once and the metrics' reduction gives the numbers of
one process.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import Tensor

__all__ = ["captured_flags", "owned_positions", "probe_owners"]


def captured_flags(probes: Sequence[int], captured: Collection[int], device: torch.device | str | None = None) -> Tensor:
    """``[N]`` ``int32``: 1 where probe ``probes[p]`` (a dataset index) is in ``captured``, else 0 --
    the tensor a process contributes to the gather (an integer tensor: gathering bools is not portable).

    >>> captured_flags([4, 7, 9], {7: "maps"}).tolist()
    [0, 1, 0]
    """
    return torch.tensor([int(i in captured) for i in probes], dtype=torch.int32, device=device)


def probe_owners(flags: Tensor) -> Tensor:
    """The process that scores each probe, ``[N]`` ``long``, from every process's
    :func:`captured_flags` stacked, ``[W, N]`` (row ``r``: process ``r``): the first process whose
    flag is set, else ``p % W`` for the probe at position ``p``.

    >>> probe_owners(torch.tensor([[0, 1, 0, 0], [0, 1, 1, 0]])).tolist()
    [0, 0, 1, 1]
    """
    if flags.ndim != 2:
        raise ValueError(f"need the flags of every process, [W, N], got {tuple(flags.shape)}")
    world, count = flags.shape
    has = flags > 0
    fallback = torch.arange(count, device=flags.device) % world
    return torch.where(has.any(dim=0), has.int().argmax(dim=0), fallback)


def owned_positions(flags: Tensor, rank: int) -> list[int]:
    """Positions (in the probe list) that process ``rank`` scores, ascending; ``flags`` as in
    :func:`probe_owners`. Over the ranks ``0 .. W-1`` every position comes exactly once.

    >>> flags = torch.tensor([[0, 1, 0, 0], [0, 1, 1, 0]])
    >>> owned_positions(flags, 0), owned_positions(flags, 1)
    ([0, 1], [2, 3])
    """
    return (probe_owners(flags) == rank).nonzero().squeeze(1).tolist()
