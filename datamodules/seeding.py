"""Stable integer seed mixing shared by the synthetic generator and the samplers.

Python's ``hash`` of a tuple of ints is stable, but it is not a good mixer and it is
platform-width dependent; ``mix_seed`` is a SplitMix64 chain: the same integers give the same
63-bit seed on every machine, process and Python version, and nearby inputs give unrelated outputs.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*values: int) -> int:
    """A non-negative 63-bit seed derived from a sequence of (possibly negative) integers."""
    h = 0x243F6A8885A308D3
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h & ((1 << 63) - 1)


class single_thread:
    """Context manager: run torch ops on one intra-op thread, restoring the previous setting.

    Per-image work (drawing a 128x64 image, transforming one sample) is far too small to gain from
    intra-op parallelism, and on a busy machine the thread hand-offs cost 10x the work itself.
    DataLoader workers already run single-threaded; this makes ``num_workers=0`` behave the same.
    """

    def __enter__(self) -> "single_thread":
        import torch

        self._n = torch.get_num_threads()
        if self._n != 1:
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self._n != 1:
            torch.set_num_threads(self._n)
