"""k-reciprocal re-ranking against a line-by-line copy of the authors' released code."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cama.metrics.rerank import re_ranking


def reference_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """torchreid/utils/rerank.py (Zhong et al.'s code), with a stable argsort for the ties."""
    original_dist = np.concatenate(
        [np.concatenate([q_q_dist, q_g_dist], axis=1), np.concatenate([q_g_dist.T, g_g_dist], axis=1)],
        axis=0,
    )
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)
    query_num = q_g_dist.shape[0]
    gallery_num = q_g_dist.shape[0] + q_g_dist.shape[1]
    all_num = gallery_num
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, : k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, : k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            candidate_forward_k_neigh_index = initial_rank[candidate, : int(np.around(k1 / 2.0)) + 1]
            candidate_backward_k_neigh_index = initial_rank[
                candidate_forward_k_neigh_index, : int(np.around(k1 / 2.0)) + 1
            ]
            fi_candidate = np.where(candidate_backward_k_neigh_index == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward_k_neigh_index[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > 2.0 / 3 * len(
                candidate_k_reciprocal_index
            ):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index, candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = 1.0 * weight / np.sum(weight)
    original_dist = original_dist[:query_num,]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    invIndex = []
    for i in range(gallery_num):
        invIndex.append(np.where(V[:, i] != 0)[0])
    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, gallery_num], dtype=np.float32)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(
                V[i, indNonZero[j]], V[indImages[j], indNonZero[j]]
            )
        jaccard_dist[i] = 1 - temp_min / (2.0 - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


def _problem(nq, ng, dim, seed, clusters=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(nq + ng, dim, generator=g, dtype=torch.float64)
    if clusters:
        centers = torch.randn(clusters, dim, generator=g, dtype=torch.float64) * 2
        x = x + centers[torch.randint(0, clusters, (nq + ng,), generator=g)]
    d = torch.cdist(x, x)
    return d[:nq, nq:], d[:nq, :nq], d[nq:, nq:]


def _compare(qg, qq, gg, **kw):
    got = re_ranking(qg, qq, gg, **kw)
    want = reference_re_ranking(qg.numpy(), qq.numpy(), gg.numpy(), **kw)
    assert got.dtype == torch.float32 and tuple(got.shape) == tuple(qg.shape)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize(
    "nq, ng, seed, kw",
    [
        (5, 12, 0, dict(k1=4, k2=3, lambda_value=0.3)),
        (5, 12, 1, dict()),  # k1 + 1 = 21 > N = 17: every neighbourhood is the whole set
        (5, 12, 2, dict(k1=6, k2=1, lambda_value=0.5)),  # no query expansion
        (5, 12, 3, dict(k1=5, k2=20, lambda_value=0.0)),  # k2 > N, round(2.5) = 2 like np.around
        (8, 30, 4, dict(k1=6, k2=3, lambda_value=0.3)),
    ],
)
def test_matches_reference(nq, ng, seed, kw):
    _compare(*_problem(nq, ng, 8, seed), **kw)


def test_matches_reference_clustered():
    _compare(*_problem(20, 60, 8, 5, clusters=6), k1=8, k2=4)


def test_matches_reference_chunked():
    """Tiny chunk budgets give the same numbers (every chunked loop runs many times)."""
    qg, qq, gg = _problem(12, 40, 8, 6, clusters=4)
    want = re_ranking(qg, qq, gg, k1=6, k2=3)
    got = re_ranking(qg, qq, gg, k1=6, k2=3, chunk_bytes=1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    _compare(qg, qq, gg, k1=6, k2=3)


def test_ties_follow_the_stable_order():
    """Exact ties (integer coordinates, duplicated samples): the reference with a stable argsort."""
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 3, (17, 3), generator=g).double()
    x[9] = x[2]  # an exact duplicate of a query in the gallery
    d = torch.cdist(x, x).square()
    qg, qq, gg = d[:5, 5:], d[:5, :5], d[5:, 5:]
    assert len(torch.unique(d)) < d.numel() // 4  # many ties, across every cut
    _compare(qg, qq, gg, k1=4, k2=3)
    _compare(qg, qq, gg, k1=6, k2=2, lambda_value=0.6)


def test_lambda_one_gives_the_normalised_squared_distances():
    qg, qq, gg = _problem(5, 12, 8, 8)
    got = re_ranking(qg, qq, gg, k1=4, k2=3, lambda_value=1.0)
    # each query i's column of the full matrix [[qq, qg], [qg^T, gg]] holds qq[:, i] and qg[i]
    col_max = torch.maximum(qq.square().amax(0), qg.square().amax(1))
    torch.testing.assert_close(got, (qg.square() / col_max[:, None]).float())
    np.testing.assert_allclose(
        got.numpy(), reference_re_ranking(qg.numpy(), qq.numpy(), gg.numpy(), k1=4, k2=3, lambda_value=1.0),
        rtol=1e-6,
    )


def test_float32_input_and_bad_input():
    qg, qq, gg = (t.float() for t in _problem(4, 9, 8, 9))
    _compare(qg, qq, gg, k1=3, k2=2)
    with pytest.raises(ValueError, match="shapes"):
        re_ranking(qg, qq, gg[:-1, :-1])
    with pytest.raises(ValueError, match="finite"):
        re_ranking(qg.clone().fill_(float("nan")), qq, gg)
    with pytest.raises(ValueError, match="k1"):
        re_ranking(qg, qq, gg, k1=0)
    with pytest.raises(ValueError, match="lambda"):
        re_ranking(qg, qq, gg, lambda_value=1.5)


# ---------------------------------------------------------------------------------------------- the metric


def _embeddings(seed=0, n=150, dim=16, nid=10, ncam=3):
    g = torch.Generator().manual_seed(seed)
    pids = torch.randint(1, nid + 1, (n,), generator=g)
    emb = torch.randn(nid + 1, dim, generator=g)[pids] + 1.5 * torch.randn(n, dim, generator=g)
    camids = torch.randint(0, ncam, (n,), generator=g)
    is_query = torch.rand(n, generator=g) < 0.25
    gal = (~is_query).nonzero().squeeze(1)
    pids[gal[:8]] = 0  # distractors
    pids[gal[8:14]] = -1  # junk
    indices = torch.randperm(n, generator=g)
    return emb, pids, camids, is_query, indices


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_metric_rerank_equals_evaluate_rank_of_re_ranking(distance):
    from cama.metrics.distances import pairwise_distance
    from cama.metrics.reid import ReIDRankMetric, evaluate_rank

    emb, pids, camids, is_query, indices = _embeddings(1)
    metric = ReIDRankMetric(distance=distance, rerank=True, k1=8, k2=3, lambda_value=0.4)
    for s in range(0, emb.shape[0], 32):
        metric.update(emb[s : s + 32], pids[s : s + 32], camids[s : s + 32], is_query[s : s + 32], indices[s : s + 32])
    out = metric.compute()
    assert tuple(out) == metric.result_names
    assert metric.result_names[-5:] == ("mAP_rerank", "mINP_rerank", "rank1_rerank", "rank5_rerank", "rank10_rerank")

    # by hand: dataset-index order, junk dropped from the gallery, the three distance blocks
    order = indices.argsort()
    emb, pids, camids, is_query = emb[order], pids[order], camids[order], is_query[order]
    q, g = is_query, ~is_query & (pids != -1)
    qf, gf = emb[q], emb[g]
    dist = re_ranking(pairwise_distance(qf, gf, distance), pairwise_distance(qf, qf, distance),
                      pairwise_distance(gf, gf, distance), k1=8, k2=3, lambda_value=0.4)
    cmc, m_ap, m_inp = evaluate_rank(dist, pids[q], pids[g], camids[q], camids[g], return_minp=True)
    assert out["mAP_rerank"].item() == pytest.approx(m_ap, abs=1e-6)
    assert out["mINP_rerank"].item() == pytest.approx(m_inp, abs=1e-6)
    for k in (1, 5, 10):
        assert out[f"rank{k}_rerank"].item() == pytest.approx(cmc[k - 1].item(), abs=1e-6)
    # the plain numbers are untouched, and re-ranking did change the distances
    plain = ReIDRankMetric(distance=distance)
    plain.update(emb, pids, camids, is_query, indices[order])
    base = plain.compute()
    assert all(out[k].item() == pytest.approx(v.item(), abs=1e-6) for k, v in base.items())
    ref = reference_re_ranking(*(pairwise_distance(a, b, distance).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf))),
                               k1=8, k2=3, lambda_value=0.4)
    np.testing.assert_allclose(dist.numpy(), ref, rtol=1e-5, atol=2e-6)


def test_metric_without_rerank_has_no_rerank_keys():
    from cama.metrics.reid import ReIDRankMetric

    assert not any("rerank" in name for name in ReIDRankMetric().result_names)
    with pytest.raises(ValueError, match="re-ranking"):
        ReIDRankMetric(rerank=True, k1=0)


def test_cama_passes_rerank_to_both_metrics():
    from cama.models import CAMA

    model = CAMA(num_classes=5, backbone="resnet10", num_branches=2, rerank=True)
    assert model.val_metric.rerank and model.test_metric.rerank
    assert "mAP_rerank" in model.val_metric.result_names
    assert not CAMA(num_classes=5, backbone="resnet10", num_branches=2).val_metric.rerank
