"""The paired bootstrap over test queries pooled over seeds (bench/paired_bootstrap.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from paired_bootstrap import paired_bootstrap, resample_indices  # noqa: E402


def naive(
    a: list[list[float]], b: list[list[float]], resamples: int, chunk: int, seed: int
) -> tuple[float, float, float]:
    """The same draws, one resample, one seed and one query at a time in plain Python; numpy's
    percentiles."""
    stats = []
    for idx in resample_indices([len(x) for x in a], resamples, chunk, seed):
        for r in range(idx[0].shape[0]):
            per_seed = []
            for s in range(len(a)):
                picks = [int(i) for i in idx[s][r]]
                per_seed.append(sum(a[s][i] - b[s][i] for i in picks) / len(picks))
            stats.append(sum(per_seed) / len(per_seed))
    observed = sum(sum(x - y for x, y in zip(xs, ys)) / len(xs) for xs, ys in zip(a, b)) / len(a)
    low, high = np.percentile(np.array(stats), [2.5, 97.5])
    return observed, float(low), float(high)


def test_matches_a_naive_loop_on_a_tiny_example() -> None:
    rng = np.random.default_rng(3)
    a = [rng.random(7).tolist(), rng.random(4).tolist(), rng.random(9).tolist()]  # unequal query counts
    b = [(np.array(x) * 0.8 + rng.random(len(x)) * 0.1).tolist() for x in a]
    got = paired_bootstrap(a, b, resamples=203, chunk=50, seed=11)
    mean, low, high = naive(a, b, resamples=203, chunk=50, seed=11)
    assert got.mean == pytest.approx(mean, abs=1e-12)
    assert got.low == pytest.approx(low, abs=1e-12)
    assert got.high == pytest.approx(high, abs=1e-12)
    assert (got.resamples, got.queries, got.seeds) == (203, 20, 3)
    assert got.low < got.mean < got.high


def test_one_chunk_of_every_resample_matches_the_naive_loop_too() -> None:
    rng = np.random.default_rng(0)
    a = [rng.random(30), rng.random(25)]
    b = [rng.random(30), rng.random(25)]
    one = paired_bootstrap(a, b, resamples=400, chunk=400, seed=5)
    mean, low, high = naive([x.tolist() for x in a], [x.tolist() for x in b], 400, 400, 5)
    assert (one.low, one.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert one.mean == pytest.approx(mean, abs=1e-12)


def test_an_identical_pair_gives_a_zero_width_interval_at_zero() -> None:
    values = [torch.rand(50, generator=torch.Generator().manual_seed(s)) for s in range(5)]
    got = paired_bootstrap(values, [v.clone() for v in values])
    assert (got.mean, got.low, got.high) == (0.0, 0.0, 0.0)


def test_a_constant_shift_gives_exactly_the_shift() -> None:
    # dyadic values: a - b is exactly d, so every resample's mean is exactly d
    b = [torch.randint(0, 1024, (n,), generator=torch.Generator().manual_seed(n)).double() / 1024
         for n in (40, 55, 61)]
    for d in (0.25, -0.125):
        got = paired_bootstrap([x + d for x in b], b, resamples=2000)
        assert (got.mean, got.low, got.high) == (d, d, d)


def test_the_interval_narrows_with_more_queries() -> None:
    rng = np.random.default_rng(1)
    small = paired_bootstrap([rng.normal(1, 1, 50)], [np.zeros(50)])
    large = paired_bootstrap([rng.normal(1, 1, 5000)], [np.zeros(5000)])
    assert large.high - large.low < 0.3 * (small.high - small.low)  # about sqrt(100) = 10 times
    assert large.low < 1 < large.high


def test_refuses_unpaired_inputs() -> None:
    with pytest.raises(ValueError):
        paired_bootstrap([[1.0, 2.0]], [[1.0]])
    with pytest.raises(ValueError):
        paired_bootstrap([[1.0]], [[1.0], [2.0]])
