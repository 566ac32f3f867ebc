"""A paired bootstrap over test queries, pooled over seeds: the interval of a difference between two
models measured on the same queries.

For each seed ``s`` the two models' per-query values ``a_s[i]`` and ``b_s[i]`` (e.g. the average
precision of query ``i``) give the paired differences ``d_s = a_s - b_s``. The statistic is the mean
over seeds of the mean over queries, ``T = mean_s mean_i d_s[i]`` (each seed weighs the same). One
resample draws, within every seed independently, ``n_s`` of its queries with replacement and
recomputes ``T``; the 95% interval is the 2.5 and 97.5 percentiles of ``T`` over the resamples
(linear interpolation, as ``torch.quantile``).

It measures how much ``T`` would move with another draw of test queries of the same models: the
seeds (another training run) are held fixed, so it is no substitute for the t-interval over seeds
(:func:`claims_common.mean_ci`), which takes the training's randomness in.

Vectorised: the resamples are drawn as ``[chunk, n_s]`` index tensors (:func:`resample_indices`), at
most ``chunk`` resamples at a time, each chunk one ``gather`` and one ``mean`` per seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

__all__ = ["BootstrapInterval", "paired_bootstrap", "resample_indices", "pooled_statistics"]


@dataclass(frozen=True)
class BootstrapInterval:
    """The observed statistic, the percentile interval and how it was drawn."""

    mean: float
    low: float
    high: float
    resamples: int
    queries: int  # summed over seeds
    seeds: int

    def scaled(self, factor: float) -> BootstrapInterval:
        return BootstrapInterval(self.mean * factor, self.low * factor, self.high * factor,
                                 self.resamples, self.queries, self.seeds)


def resample_indices(
    sizes: Sequence[int], resamples: int, chunk: int, seed: int
) -> Iterator[list[torch.Tensor]]:
    """Chunks of resamples: for each chunk, one ``[c, n_s]`` long tensor of query indices per seed
    (``c <= chunk``; the chunks add up to ``resamples``), drawn from one generator seeded ``seed``
    in the order chunk, then seed."""
    if resamples < 1 or chunk < 1:
        raise ValueError(f"resamples and chunk must be >= 1, got {resamples} and {chunk}")
    generator = torch.Generator().manual_seed(seed)
    done = 0
    while done < resamples:
        c = min(chunk, resamples - done)
        yield [torch.randint(int(n), (c, int(n)), generator=generator) for n in sizes]
        done += c


def pooled_statistics(diffs: Sequence[torch.Tensor], indices: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[c]``: for each resample (a row of every ``indices[s]``), the mean over seeds of the mean of
    ``diffs[s]`` at that row's indices."""
    per_seed = [d[i].mean(dim=1) for d, i in zip(diffs, indices)]
    return torch.stack(per_seed).mean(dim=0)


def paired_bootstrap(
    a: Sequence[Sequence[float] | torch.Tensor],
    b: Sequence[Sequence[float] | torch.Tensor],
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int = 500,
) -> BootstrapInterval:
    """The pooled paired bootstrap of ``mean_s mean_i (a[s][i] - b[s][i])`` (module docstring).

    ``a[s]`` and ``b[s]``: the two models' per-query values of seed ``s``, on the same queries in the
    same order (float64 inside).
    """
    if len(a) != len(b) or not len(a):
        raise ValueError(f"need the same number (>= 1) of seeds on both sides, got {len(a)} and {len(b)}")
    diffs = []
    for s, (x, y) in enumerate(zip(a, b)):
        x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
        if x.shape != y.shape or x.dim() != 1 or not x.numel():
            raise ValueError(f"seed {s}: need two equal non-empty 1-d per-query vectors, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        diffs.append(x - y)
    observed = float(torch.stack([d.mean() for d in diffs]).mean())
    stats = torch.cat([pooled_statistics(diffs, idx)
                       for idx in resample_indices([d.numel() for d in diffs], resamples, chunk, seed)])
    tail = (1 - confidence) / 2
    low, high = torch.quantile(stats, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return BootstrapInterval(observed, low, high, resamples, sum(d.numel() for d in diffs), len(diffs))
