"""Recall@K and MAP@R (cama.metrics.retrieval) against brute-force nearest neighbours and the naive
MAP@R equation; deduplication of DistributedSampler padding; merged shards and a real 2-process run."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.nn.functional as F

import cama.metrics.retrieval as retrieval_module
from cama.metrics.retrieval import RetrievalMetric, faiss_available, retrieval_metrics
from tests.test_reid_rank_metric import _shard  # what DistributedSampler(shuffle=False) gives each process


def clustered(seed: int, n: int = 300, classes: int = 12, dim: int = 16, spread: float = 1.5):
    """Unit embeddings around one random centre per class (continuous: no tied distances)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, dim, generator=g)
    emb = F.normalize(centres[labels] + spread * torch.randn(n, dim, generator=g), dim=1)
    return emb, labels, torch.arange(n)


def brute_force(emb: torch.Tensor, labels: torch.Tensor, ks=(1, 2, 4, 8)) -> dict[str, float]:
    """Every query against all other samples by a full sort of its distance row (double precision)."""
    e = emb.double()
    d = torch.cdist(e, e)
    d.fill_diagonal_(float("inf"))  # the query is not its own neighbour
    order = d.argsort(dim=1, stable=True)[:, :-1]
    same = labels[order] == labels[:, None]  # [N, N-1] in rank order
    r = same.sum(dim=1)
    keep = r > 0  # queries whose class has another image
    out = {f"recall@{k}": same[keep, :k].any(dim=1).double().mean().item() for k in ks}
    # naive MAP@R: (1/R) sum_{i <= R} P@i * rel_i for each query, averaged
    aps = []
    for row, rq in zip(same[keep], r[keep]):
        rq = int(rq)
        hits = 0
        total = 0.0
        for i in range(rq):
            if row[i]:
                hits += 1
                total += hits / (i + 1)
        aps.append(total / rq)
    out["map@r"] = sum(aps) / len(aps)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_and_map_at_r_match_brute_force(seed, monkeypatch):
    if seed == 2:  # the torch k-NN in several blocks of queries
        monkeypatch.setattr(retrieval_module, "_KNN_BLOCK", 64)
    emb, labels, _ = clustered(seed, spread=1.5 + 0.5 * seed)
    got = retrieval_metrics(emb, labels, knn="torch")
    expected = brute_force(emb, labels)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(value, abs=1e-6), key
    assert 0.0 < expected["recall@1"] < expected["recall@8"] < 1.0  # a problem that can fail either way


def test_lone_queries_are_left_out():
    emb, labels, _ = clustered(3, n=120)
    labels = labels.clone()
    labels[:3] = torch.tensor([100, 101, 102])  # three classes of a single image
    got = retrieval_metrics(emb, labels, knn="torch")
    expected = brute_force(emb, labels)
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(value, abs=1e-6), key
    alone = retrieval_metrics(emb[:3], labels[:3], knn="torch")
    assert all(torch.isnan(v) for v in alone.values())


def test_custom_ks_and_small_split():
    emb, labels, _ = clustered(4, n=40, classes=3)
    got = retrieval_metrics(emb, labels, recall_ks=(3, 50), knn="torch")
    assert set(got) == {"recall@3", "recall@50", "map@r"}
    # K beyond the split: all 39 other samples are neighbours, so every non-lone query is a hit
    assert got["recall@50"].item() == 1.0
    assert got["recall@3"].item() == pytest.approx(brute_force(emb, labels, ks=(3,))["recall@3"], abs=1e-6)


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_faiss_and_torch_agree():
    emb, labels, _ = clustered(5)
    a = retrieval_metrics(emb, labels, knn="faiss")
    b = retrieval_metrics(emb, labels, knn="torch")
    for key in a:
        assert a[key].item() == pytest.approx(b[key].item(), abs=1e-6), key


def test_auto_backend_without_faiss_works():
    emb, labels, _ = clustered(6, n=60)
    out = retrieval_metrics(emb, labels)  # "auto": faiss when installed, else torch
    assert out["recall@1"].item() == pytest.approx(brute_force(emb, labels)["recall@1"], abs=1e-6)
    if not faiss_available():
        with pytest.raises(ImportError, match="faiss"):
            retrieval_metrics(emb, labels, knn="faiss")


def test_bad_inputs():
    emb, labels, idx = clustered(7, n=20)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        retrieval_metrics(emb[0], labels)
    with pytest.raises(ValueError, match="labels must be"):
        retrieval_metrics(emb, labels[:5])
    with pytest.raises(ValueError, match="integers"):
        retrieval_metrics(emb, labels.float())
    with pytest.raises(ValueError, match="at least 2"):
        retrieval_metrics(emb[:1], labels[:1])
    bad = emb.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(bad, labels)
    with pytest.raises(ValueError, match="knn"):
        retrieval_metrics(emb, labels, knn="annoy")
    with pytest.raises(ValueError, match="recall_ks"):
        RetrievalMetric(recall_ks=(0, 1))
    metric = RetrievalMetric(knn="torch")
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    with pytest.raises(ValueError, match="indices"):
        metric.update(emb, labels, idx[:4])


def feed(metric: RetrievalMetric, data, batch: int = 32) -> None:
    emb, labels, idx = data
    for s in range(0, emb.shape[0], batch):
        metric.update(emb[s : s + batch], labels[s : s + batch], idx[s : s + batch])


def test_metric_equals_functional_in_any_order_with_duplicates():
    data = clustered(8)
    expected = retrieval_metrics(data[0], data[1], knn="torch")
    metric = RetrievalMetric(knn="torch")
    perm = torch.randperm(data[0].shape[0], generator=torch.Generator().manual_seed(0))
    feed(metric, [t[perm] for t in data])
    sel = torch.tensor([0, 17, 5, 0, 299])  # padding: samples seen a second time
    metric.update(*(t[sel] for t in data))
    got = metric.compute()
    for key in expected:
        assert got[key].item() == pytest.approx(expected[key].item(), abs=1e-7), key


def test_merged_shards_equal_single_process():
    data = clustered(9, n=203)  # not a multiple of 2 or 3: padded duplicates
    expected = retrieval_metrics(data[0], data[1], knn="torch")
    for world in (2, 3):
        shards = []
        for rank in range(world):
            m = RetrievalMetric(knn="torch")
            feed(m, _shard(data, rank, world), batch=16)
            shards.append(m)
        merged = shards[0]
        for m in shards[1:]:
            merged.merge_state(m)
        got = merged.compute()
        for key in expected:
            assert got[key].item() == pytest.approx(expected[key].item(), abs=1e-7), (world, key)


def _ddp_worker(rank, world, init_file, data, out_path):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        metric = RetrievalMetric(knn="torch")
        feed(metric, _shard(data, rank, world), batch=16)
        out = metric.compute()  # torchmetrics all-gathers the "cat" states
        if rank == 0:
            torch.save({k: v.item() for k, v in out.items()}, out_path)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_process_gloo():
    """A real 2-process gloo run (spawned workers: ~2 interpreter start-ups)."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed not available")
    data = clustered(10, n=203)
    expected = {k: v.item() for k, v in retrieval_metrics(data[0], data[1], knn="torch").items()}
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "out.pt")
        torch.multiprocessing.spawn(_ddp_worker, args=(2, os.path.join(tmp, "init"), data, out_path), nprocs=2,
                                    join=True)
        got = torch.load(out_path)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-7), key


def test_rerank_scores_the_re_ranked_neighbours():
    from cama.metrics.distances import pairwise_distance
    from cama.metrics.rerank import re_ranking

    generator = torch.Generator().manual_seed(5)
    labels = torch.arange(6).repeat_interleave(4)
    embeddings = torch.randn(6, 8, generator=generator)[labels] + 0.9 * torch.randn(24, 8, generator=generator)
    metric = RetrievalMetric(recall_ks=(1, 2, 4), knn="torch", rerank=True)
    metric.update(embeddings, labels, torch.arange(24))
    out = metric.compute()
    assert set(out) == set(metric.result_names) and "map@r_rerank" in out
    # independently: the re-ranked matrix, self excluded, stable order; Recall@K and MAP@R written out
    d = pairwise_distance(embeddings, embeddings)
    ranked = torch.sort(re_ranking(d, d, d).fill_diagonal_(float("inf")), dim=1, stable=True).indices[:, :-1]
    hits = labels[ranked] == labels[:, None]
    for k in (1, 2, 4):
        assert float(out[f"recall@{k}_rerank"]) == pytest.approx(float(hits[:, :k].any(1).double().mean()), abs=1e-6)
    r = 3  # other images of the class
    precision = hits[:, :r].double().cumsum(1) / torch.arange(1, r + 1)
    map_at_r = float((precision * hits[:, :r]).sum(1).div(r).mean())
    assert float(out["map@r_rerank"]) == pytest.approx(map_at_r, abs=1e-6)
    plain = RetrievalMetric(recall_ks=(1, 2, 4), knn="torch")
    plain.update(embeddings, labels, torch.arange(24))
    assert {k: float(v) for k, v in plain.compute().items()} == {k: float(out[k]) for k in plain.result_names}
