"""k-reciprocal re-ranking from embeddings (no [N, N] matrix) against a line-by-line copy of the
authors' released code fed with distance matrices written out in float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from cama.metrics.rerank import re_ranked_distances
from tests.test_rerank import reference_re_ranking


def _distance(a: torch.Tensor, b: torch.Tensor, distance: str) -> np.ndarray:
    """The metric's distance written out in float64: squared Euclidean, or 1 - cos."""
    a, b = a.double(), b.double()
    if distance == "euclidean":
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).numpy()
    cos = (a[:, None, :] * b[None, :, :]).sum(-1) / (a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :])
    return (1 - cos).numpy()


def _reference(q, g, distance="euclidean", **kw):
    return reference_re_ranking(_distance(q, g, distance), _distance(q, q, distance), _distance(g, g, distance), **kw)


def _points(n, dim, seed, clusters=None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen)
    if clusters:
        x = x + 2 * torch.randn(clusters, dim, generator=gen)[torch.randint(0, clusters, (n,), generator=gen)]
    return x


def _compare(q, g, distance="euclidean", chunk_bytes=(1, 1 << 28), **kw):
    want = _reference(q, g, distance, **kw)
    for budget in chunk_bytes:
        got = re_ranked_distances(q, g, distance, chunk_bytes=budget, **kw)
        assert got.dtype == torch.float32 and tuple(got.shape) == (q.shape[0], g.shape[0])
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=2e-6, err_msg=f"chunk_bytes={budget}")


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize(
    "nq, ng, seed, kw",
    [
        (5, 12, 0, {"k1": 4, "k2": 3, "lambda_value": 0.3}),
        (5, 12, 1, {}),  # k1 + 1 = 21 > N = 17: every neighbourhood is the whole set
        (5, 12, 2, {"k1": 6, "k2": 1, "lambda_value": 0.5}),  # k2 = 1: no query expansion
        (5, 12, 3, {"k1": 5, "k2": 20, "lambda_value": 0.0}),  # k2 > N
        (1, 9, 4, {"k1": 3, "k2": 2}),  # one query
    ],
)
def test_matches_reference(distance, nq, ng, seed, kw):
    x = _points(nq + ng, 8, seed)
    _compare(x[:nq], x[nq:], distance, **kw)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_matches_reference_clustered(distance):
    """The paper's k1 = 20 on clusters: expansion members outside a sample's own first neighbours
    (their distances computed for those pairs), several blocks of distances with the default
    budget's rows cut by a small one."""
    x = _points(100, 8, 5, clusters=6)
    _compare(x[:20], x[20:], distance, chunk_bytes=(3_000, 40_000, 1 << 28))


def test_exact_ties_from_duplicated_embeddings():
    """Integer coordinates (every distance exact) with duplicated samples: ties inside the lists and
    across every cut follow the stable order (the reference with a stable argsort)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randint(0, 3, (30, 3), generator=gen).float()
    x[9] = x[2]  # a query duplicated in the gallery
    x[20:26] = x[12]  # one gallery sample seven times: ties across the cut of k1 + 1 = 5
    d = _distance(x, x, "euclidean")
    assert len(np.unique(d)) < d.size // 50  # many ties
    _compare(x[:6], x[6:], k1=4, k2=3)
    _compare(x[:6], x[6:], k1=6, k2=2, lambda_value=0.6)
    _compare(x[:6], x[6:], k1=4, k2=1)
    _compare(x[:6], x[6:], k1=40, k2=1)  # k1 > N


def test_chunk_budget_changes_no_number():
    """Tiny budgets (every chunked loop runs many times, blocks of one distance) give the numbers of
    a budget that holds everything: the same bits where every distance is exact (integer
    coordinates), the same up to float32 rounding of the distances otherwise."""
    x = torch.randint(-3, 4, (60, 6), generator=torch.Generator().manual_seed(6)).float()
    want = re_ranked_distances(x[:15], x[15:], chunk_bytes=1 << 30)
    for budget in (1, 333, 20_000):
        assert torch.equal(re_ranked_distances(x[:15], x[15:], chunk_bytes=budget), want)
    x = _points(60, 16, 6, clusters=4)
    want = re_ranked_distances(x[:15], x[15:], chunk_bytes=1 << 30)
    for budget in (1, 333, 20_000):
        torch.testing.assert_close(re_ranked_distances(x[:15], x[15:], chunk_bytes=budget), want, rtol=1e-5, atol=1e-6)


def test_holds_no_matrix_larger_than_the_result():
    """The largest single allocation is the [Q, G] result: no [N, N] (nor [Q, N], [G, G]) matrix."""
    nq, ng = 80, 320
    x = _points(nq + ng, 8, 8, clusters=10)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = re_ranked_distances(x[:nq], x[nq:], k1=4, k2=2, chunk_bytes=1 << 14)
    largest = max(event.cpu_memory_usage for event in prof.events())
    assert largest == out.numel() * 4 == nq * ng * 4 < (nq + ng) ** 2 * 4 // 6


def test_bad_embeddings():
    x = _points(20, 4, 9)
    with pytest.raises(ValueError, match="finite"):
        re_ranked_distances(x[:5], x[5:].clone().fill_(float("nan")))
    with pytest.raises(ValueError, match=r"queries \(5, 4\) and gallery \(15, 3\)"):
        re_ranked_distances(x[:5], x[5:, :3])
    with pytest.raises(ValueError, match="gallery must be"):
        re_ranked_distances(x[:5], x[:0])
    with pytest.raises(ValueError, match="k1"):
        re_ranked_distances(x[:5], x[5:], k1=0)
