"""Re-ranked retrieval (a split against itself) without an [N, N] matrix: each row's first neighbours
against the dense re_ranking(d, d, d) sorted in full, and the metric's allocations."""
from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import cama.metrics.retrieval as retrieval_module
from cama.metrics.rerank import RerankOptions, re_ranking
from cama.metrics.rerank_self import re_ranked_self_neighbours
from cama.metrics.retrieval import RetrievalMetric, retrieval_metrics
from tests.test_rerank_embeddings import _points


def _exact_distances(x: torch.Tensor, distance: str) -> torch.Tensor:
    """The distances in float64, exactly symmetric (an image and its copy tie exactly)."""
    x = x.double()
    if distance == "cosine":
        x = x / x.norm(dim=1, keepdim=True)
        return 1 - (x[:, None, :] * x[None, :, :]).sum(-1)
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def _dense(x: torch.Tensor, k: int, distance: str = "euclidean", **kw):
    """Each row of re_ranking(d, d, d) sorted in full (stable), the diagonal left out, first k."""
    d = _exact_distances(x, distance)
    full = re_ranking(d, d, d, **kw).fill_diagonal_(float("-inf"))
    values, indices = torch.sort(full, dim=1, stable=True)
    return values[:, 1 : k + 1], indices[:, 1 : k + 1]


def _compare(x, k, distance="euclidean", budgets=(1, 5_000, 1 << 28), **kw):
    want_v, want_i = _dense(x, k, distance, **kw)
    for budget in budgets:
        got_v, got_i = re_ranked_self_neighbours(x, k, distance, chunk_bytes=budget, **kw)
        assert got_v.dtype == torch.float32 and tuple(got_i.shape) == (x.shape[0], min(k, x.shape[0] - 1))
        assert torch.equal(got_i, want_i), f"chunk_bytes={budget}"
        torch.testing.assert_close(got_v, want_v, rtol=1e-5, atol=2e-6, equal_nan=True,
                                   msg=f"chunk_bytes={budget}")


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize(
    "n, k, seed, kw",
    [
        (40, 10, 0, {}),  # the paper's k1 = 20, k1 + 1 = 21 < 2N = 80
        (9, 8, 1, {}),  # k1 + 1 = 21 > 2N = 18: every neighbourhood is the whole doubled set
        (30, 29, 2, {"k1": 6, "k2": 1, "lambda_value": 0.5}),  # k2 = 1; k = N - 1: whole rows
        (12, 50, 3, {"k1": 5, "k2": 30, "lambda_value": 0.0}),  # k2 > 2N, k > N - 1
        (2, 1, 4, {"k1": 3, "k2": 2}),  # two images
    ],
)
def test_neighbours_match_the_dense_re_ranking(distance, n, k, seed, kw):
    _compare(_points(n, 8, seed), k, distance, **kw)


def test_neighbours_match_the_dense_re_ranking_clustered():
    """Clusters with k1 = 20: expansion members outside an image's own list, blocks cut small."""
    _compare(_points(120, 8, 5, clusters=8), 15, budgets=(3_000, 40_000, 1 << 28))


def test_ties_follow_the_stable_order():
    """Integer coordinates (every distance exact), duplicated images: ties within the lists, across
    their cuts and among the final distances are ordered by index, as a stable sort of the dense rows."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randint(0, 3, (30, 3), generator=gen).float()
    x[20:26] = x[12]  # one image seven times
    d = _exact_distances(x, "euclidean")
    assert d.unique().numel() < d.numel() // 50
    _compare(x, 10, k1=4, k2=3)
    _compare(x, 29, k1=6, k2=2, lambda_value=0.6, budgets=(5_000, 1 << 28))
    _compare(x, 12, k1=4, k2=1, budgets=(5_000, 1 << 28))
    _compare(x, 12, k1=70, k2=1, budgets=(5_000, 1 << 28))  # k1 + 1 > 2N


def test_equal_embeddings_give_the_dense_order():
    """All embeddings equal (a collapsed model): every distance 0 / 0, NaN as in the dense path, whose
    stable sort leaves the rows in index order (the image itself not among its neighbours)."""
    _compare(torch.ones(7, 3), 4)
    _compare(torch.ones(7, 3), 6, "cosine", k1=3, k2=2)


def _dense_metrics(x, labels, ks, **kw):
    """Recall@K and MAP@R written out from the dense re-ranked rows (self excluded, stable order)."""
    _, ranked = _dense(x, x.shape[0] - 1, **kw)
    hits = labels[ranked] == labels[:, None]
    out = {f"recall@{k}": float(hits[:, :k].any(1).double().mean()) for k in ks}
    r = int(torch.bincount(labels).max()) - 1  # every class the same size here
    precision = hits[:, :r].double().cumsum(1) / torch.arange(1, r + 1)
    out["map@r"] = float((precision * hits[:, :r]).sum(1).div(r).mean())
    return out


def test_metric_holds_no_n_by_n_matrix(monkeypatch):
    """RetrievalMetric(rerank=True).compute allocates nothing near [N, N] (the old path built the
    [N, N] distances and a [2N, 2N] matrix; pytorch-metric-learning's class counts a [classes, N]
    int64 one), and gives the numbers of the dense rows."""
    monkeypatch.setattr(retrieval_module, "_KNN_BLOCK", 32)  # the plain k-NN's blocks of rows, too
    n, classes = 600, 60
    labels = torch.arange(n) % classes
    gen = torch.Generator().manual_seed(11)
    centres = torch.randint(-2, 3, (classes, 6), generator=gen).float()
    x = centres[labels] + torch.randint(-1, 2, (n, 6), generator=gen)  # integers: ties everywhere
    metric = RetrievalMetric(recall_ks=(1, 4), knn="torch", rerank=True, k1=4, k2=2, chunk_bytes=1 << 16)
    metric.update(x, labels, torch.arange(n))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = metric.compute()
    largest = max(event.cpu_memory_usage for event in prof.events())
    assert largest < n * n * 4 // 8, largest
    want = _dense_metrics(x, labels, (1, 4), k1=4, k2=2)
    for key, value in want.items():
        assert float(out[f"{key}_rerank"]) == pytest.approx(value, abs=1e-6), key


def test_retrieval_metrics_rerank_option():
    """retrieval_metrics(rerank=...) ranks like the dense re-ranked matrix passed as distances."""
    x = _points(60, 8, 12, clusters=6)
    labels = torch.arange(60) % 6
    opts = RerankOptions(k1=6, k2=3)
    got = retrieval_metrics(x, labels, (1, 2), knn="torch", rerank=opts)
    d = _exact_distances(x, "euclidean")
    dense = re_ranking(d, d, d, k1=6, k2=3)
    want = retrieval_metrics(x, labels, (1, 2), knn="torch", distances=dense)
    want = {k: float(v) for k, v in want.items()}
    assert {k: float(v) for k, v in got.items()} == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="not both"):
        retrieval_metrics(x, labels, (1, 2), knn="torch", rerank=opts, distances=dense)
