"""Re-ID ranking metrics: ``evaluate_rank`` against a plain per-query implementation, ``ReIDRankMetric``."""
from __future__ import annotations


import numpy as np
import pytest
import torch

import cama.metrics.match_ranks as match_ranks
from cama.metrics import evaluate_rank


def naive_eval_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Market-1501 protocol one query at a time (torchreid's ``eval_market1501`` with a stable sort
    and junk removal, fast-reid's INP): returns (cmc, mAP, mINP) or None when no query is valid."""
    arrays = (distmat, q_pids, g_pids, q_camids, g_camids)
    distmat, q_pids, g_pids, q_camids, g_camids = map(np.asarray, arrays)
    cmcs, aps, inps = [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        gp, gc = g_pids[order], g_camids[order]
        remove = ((gp == q_pids[i]) & (gc == q_camids[i])) | (gp == -1)
        matches = (gp[~remove] == q_pids[i]).astype(np.int64)
        if not matches.any():
            continue  # no true match: the query is skipped
        cmc = np.minimum(matches.cumsum(), 1)[:max_rank].astype(np.float64)
        # short gallery: the curve stays at its last value
        cmc = np.concatenate([cmc, np.full(max_rank - cmc.size, cmc[-1])])
        cmcs.append(cmc)
        pos = np.flatnonzero(matches)  # 0-based ranks of the true matches
        aps.append(np.mean(np.arange(1, pos.size + 1) / (pos + 1)))
        inps.append(pos.size / (pos[-1] + 1))
    if not cmcs:
        return None
    return np.mean(cmcs, 0), float(np.mean(aps)), float(np.mean(inps))


def random_problem(rng, nq, ng, nid, ncam, dist="float", junk=True):
    q_pids = rng.integers(1, nid + 1, nq)
    q_pids[: max(1, nq // 10)] = nid + 1  # identities absent from the gallery: skipped queries
    low = -1 if junk else 0
    g_pids = rng.integers(low, nid + 1, ng)  # -1 junk, 0 distractors
    q_camids = rng.integers(0, ncam, nq)
    g_camids = rng.integers(0, ncam, ng)
    if dist == "float":
        d = rng.random((nq, ng)).astype(np.float32)
    elif dist == "ties":  # integer-valued distances: plenty of ties, broken by gallery index
        d = rng.integers(0, 6, (nq, ng)).astype(np.float32)
    elif dist == "float64":
        d = rng.normal(size=(nq, ng)) ** 3
    elif dist == "int":
        d = rng.integers(-2, 3, (nq, ng))
    else:
        raise ValueError(dist)
    return d, q_pids, g_pids, q_camids, g_camids


def assert_same(result, ref, atol=1e-6):
    cmc, m_ap, m_inp = result
    ref_cmc, ref_ap, ref_inp = ref
    np.testing.assert_allclose(cmc.numpy(), ref_cmc, atol=atol, rtol=0)
    assert m_ap == pytest.approx(ref_ap, abs=atol)
    assert m_inp == pytest.approx(ref_inp, abs=atol)


# ------------------------------------------------------------------------------------------------
# evaluate_rank
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dist", ["float", "ties", "float64", "int"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_naive_implementation(dist, seed):
    rng = np.random.default_rng(seed)
    problem = random_problem(rng, nq=40, ng=300, nid=12, ncam=3, dist=dist)
    ref = naive_eval_rank(*problem, max_rank=20)
    assert ref is not None
    # numpy in, torch in
    assert_same(evaluate_rank(*problem, max_rank=20, return_minp=True), ref)
    tensors = [torch.from_numpy(np.asarray(a)) for a in problem]
    assert_same(evaluate_rank(*tensors, max_rank=20, return_minp=True), ref)


def test_matches_naive_with_infinite_distances_and_short_gallery():
    rng = np.random.default_rng(7)
    d, qp, gp, qc, gc = random_problem(rng, nq=15, ng=25, nid=4, ncam=2, dist="float")
    d[:, 3] = np.inf
    d[2, :] = -np.inf  # a whole row of ties
    ref = naive_eval_rank(d, qp, gp, qc, gc, max_rank=40)  # max_rank > gallery size
    assert_same(evaluate_rank(d, qp, gp, qc, gc, max_rank=40, return_minp=True), ref)


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: 1e30 + rng.random((20, 200)) * 1e15,  # float64 values that collapse in float32
        lambda rng: rng.random((20, 200)) * 1e-40,  # float32 subnormals
        lambda rng: rng.choice([-3e38, 3e38, 0.0, 1.0, np.inf, -np.inf], (20, 200)).astype(np.float32),
        lambda rng: rng.random((20, 200)).astype(np.float16),
        lambda rng: rng.normal(size=(20, 200)) * 1e300,
        lambda rng: rng.integers(-(2**40), 2**40, (20, 200)),
    ],
    ids=["f64-collapsing", "subnormal", "huge-and-inf", "float16", "f64-huge", "int64"],
)
def test_extreme_values_and_dtypes(make):
    rng = np.random.default_rng(5)
    _, qp, gp, qc, gc = random_problem(rng, nq=20, ng=200, nid=4, ncam=3)
    d = make(rng)
    ref = naive_eval_rank(d, qp, gp, qc, gc, max_rank=10)
    out = evaluate_rank(torch.from_numpy(d), qp, gp, qc, gc, max_rank=10, return_minp=True, chunk_size=6)
    assert_same(out, ref)


@pytest.mark.parametrize("num_bins", [2, 8, 64])
def test_few_bins_still_exact(monkeypatch, num_bins):
    """Few bins put many gallery entries and several thresholds in the same bin: the one-by-one
    comparison path carries the work and must still be exact, ties included."""
    monkeypatch.setattr(match_ranks, "_NUM_BINS", num_bins)
    rng = np.random.default_rng(num_bins)
    for dist in ("float", "ties"):
        problem = random_problem(rng, nq=30, ng=400, nid=5, ncam=3, dist=dist)
        ref = naive_eval_rank(*problem, max_rank=10)
        assert_same(evaluate_rank(*problem, max_rank=10, return_minp=True, chunk_size=7), ref)


def test_default_returns_cmc_and_map():
    rng = np.random.default_rng(0)
    problem = random_problem(rng, nq=10, ng=50, nid=3, ncam=2)
    out = evaluate_rank(*problem)
    assert len(out) == 2
    cmc, m_ap = out
    assert cmc.shape == (50,) and cmc.dtype == torch.float32
    assert isinstance(m_ap, float)
    ref_cmc, ref_ap, _ = naive_eval_rank(*problem)
    np.testing.assert_allclose(cmc.numpy(), ref_cmc, atol=1e-6, rtol=0)
    assert m_ap == pytest.approx(ref_ap, abs=1e-6)


def test_hand_worked_example():
    # gallery:  index  pid  cam
    #             0     1    0
    #             1     1    1
    #             2     2    1
    #             3     0    1   distractor (a false match for everybody)
    #             4    -1    0   junk (never ranked)
    #             5     2    0
    g_pids = [1, 1, 2, 0, -1, 2]
    g_cams = [0, 1, 1, 1, 0, 0]
    q_pids = [1, 2, 1, 3]
    q_cams = [0, 0, 2, 1]
    distmat = torch.tensor(
        [
            # q0 (pid 1, cam 0): g0 same pid+cam -> removed, g4 junk -> removed.
            #   kept order: g2 .2, g3 .3, g1 .5 (match), g5 .6 -> match at rank 3: AP 1/3, INP 1/3
            [0.1, 0.5, 0.2, 0.3, 0.05, 0.6],
            # q1 (pid 2, cam 0): g5 same pid+cam -> removed, g4 junk.
            #   kept order: g2 .1 (match), g3 .2, g1 .3, g0 .4 -> rank 1: AP 1, INP 1
            [0.4, 0.3, 0.1, 0.2, 0.9, 0.35],
            # q2 (pid 1, cam 2): nothing same-camera; g4 junk.  Ties at .3 keep gallery order:
            #   g2 .1, g5 .2, g0 .3 (match), g1 .3 (match), g3 .3 -> matches at ranks 3 and 4:
            #   AP (1/3 + 2/4) / 2 = 5/12, INP 2/4
            [0.3, 0.3, 0.1, 0.3, 0.0, 0.2],
            # q3 (pid 3): not in the gallery -> skipped
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        ]
    )
    cmc, m_ap, m_inp = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=4, return_minp=True)
    # first-match ranks 3, 1, 3 over the 3 valid queries
    torch.testing.assert_close(cmc, torch.tensor([1 / 3, 1 / 3, 1.0, 1.0]))
    assert m_ap == pytest.approx((1 / 3 + 1 + 5 / 12) / 3)  # = 7/12
    assert m_inp == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)  # = 11/18
    ref = naive_eval_rank(distmat.numpy(), q_pids, g_pids, q_cams, g_cams, max_rank=4)
    assert_same((cmc, m_ap, m_inp), ref)


def test_no_valid_query_raises_with_causes():
    rng = np.random.default_rng(0)
    d = rng.random((5, 12))
    pids_q = np.array([1, 2, 3, 1, 2])
    pids_g = np.array([1, 2, 3, 0, -1, 1, 2, 3, 1, 2, 3, 0])
    one_cam_q, one_cam_g = np.zeros(5, np.int64), np.zeros(12, np.int64)
    with pytest.raises(ValueError) as err:
        evaluate_rank(d, pids_q, pids_g, one_cam_q, one_cam_g)
    msg = str(err.value)
    assert "no query has a valid true match" in msg
    assert "same camera" in msg
    assert "missing from the gallery" in msg
    assert "swapped" in msg
    # identities absent from the gallery: same error
    with pytest.raises(ValueError, match="no query has a valid true match"):
        evaluate_rank(d, pids_q + 10, pids_g, rng.integers(0, 3, 5), rng.integers(0, 3, 12))


def test_bad_inputs():
    d = torch.rand(3, 4)
    ids = torch.tensor([1, 2, 1])
    gids = torch.tensor([1, 2, 1, 2])
    qcams, gcams = torch.zeros(3, dtype=torch.long), torch.ones(4, dtype=torch.long)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(torch.where(d > 0.5, float("nan"), d), ids, gids, qcams, gcams)
    with pytest.raises(ValueError, match="g_pids"):
        evaluate_rank(d, ids, gids[:3], ids, gids)
    with pytest.raises(ValueError, match="max_rank"):
        evaluate_rank(d, ids, gids, qcams, gcams, max_rank=0)


def test_chunking_does_not_change_results():
    rng = np.random.default_rng(3)
    problem = random_problem(rng, nq=60, ng=500, nid=10, ncam=4, dist="ties")
    whole = evaluate_rank(*problem, max_rank=30, return_minp=True, chunk_size=1000)
    for chunk_size in (1, 2, 7):
        out = evaluate_rank(*problem, max_rank=30, return_minp=True, chunk_size=chunk_size)
        torch.testing.assert_close(out[0], whole[0], atol=1e-7, rtol=0)
        assert out[1:] == pytest.approx(whole[1:], abs=1e-12)
    tiny_budget = evaluate_rank(*problem, max_rank=30, return_minp=True, chunk_bytes=50_000)
    torch.testing.assert_close(tiny_budget[0], whole[0], atol=1e-7, rtol=0)
    assert tiny_budget[1:] == pytest.approx(whole[1:], abs=1e-12)
