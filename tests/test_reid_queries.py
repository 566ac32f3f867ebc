"""Each query's AP, first true match's rank and INP (cama.metrics.ranking.match_rank_scores, the one
per-query core; cama.metrics.reid_queries.per_query_rank under the re-ID protocol, which
evaluate_rank averages; ranked_matches for any matches and exclusions) against the definitions
written out query by query on distinct distances, and a hand-worked example."""

from __future__ import annotations

import pytest
import torch

from cama.metrics import evaluate_rank
from cama.metrics.ranking import match_rank_scores, ranked_matches
from cama.metrics.reid_queries import per_query_rank

pytestmark = pytest.mark.usefixtures("one_thread")


def naive_scores(distances, matches, exclude):
    """Per query: the gallery sorted by distance, the excluded dropped, AP = mean of the precision at
    each true match, the first true match's rank, INP = matches / rank of the last; None without a match."""
    out = []
    for q in range(distances.shape[0]):
        order = sorted(range(distances.shape[1]), key=lambda g: float(distances[q, g]))
        kept = [g for g in order if not bool(exclude[q, g])]
        ranks = [r + 1 for r, g in enumerate(kept) if bool(matches[q, g])]
        if not ranks:
            out.append(None)
            continue
        precisions = [(i + 1) / rank for i, rank in enumerate(ranks)]
        out.append((sum(precisions) / len(ranks), ranks[0], len(ranks) / ranks[-1]))
    return out


def distinct_distances(generator, queries, gallery):
    """``[Q, G]`` distances without ties (a permutation of distinct values)."""
    return torch.randperm(queries * gallery, generator=generator).reshape(queries, gallery).float() / 7


@pytest.mark.parametrize("seed", [0, 1])
def test_per_query_rank_equals_the_loop_and_evaluate_rank_is_its_mean(seed):
    generator = torch.Generator().manual_seed(seed)
    nq, ng = 30, 70
    q_pids = torch.randint(1, 10, (nq,), generator=generator)  # 8, 9: no true match in the gallery
    g_pids = torch.randint(-1, 8, (ng,), generator=generator)  # -1 junk, 0 distractor
    q_cams = torch.randint(0, 3, (nq,), generator=generator)
    g_cams = torch.randint(0, 3, (ng,), generator=generator)
    distances = distinct_distances(generator, nq, ng)
    matches = q_pids[:, None] == g_pids[None]
    exclude = (matches & (q_cams[:, None] == g_cams[None])) | (g_pids[None] == -1)
    expected = naive_scores(distances, matches, exclude)
    valid = [q for q, e in enumerate(expected) if e is not None]
    assert 0 < len(valid) < nq  # some queries have no true match left
    for chunk_size in (None, 4):
        scores = per_query_rank(distances, q_pids, g_pids, q_cams, g_cams, chunk_size=chunk_size)
        assert scores.query.tolist() == valid
        assert scores.ap.tolist() == pytest.approx([expected[q][0] for q in valid], abs=1e-12)
        assert scores.first_rank.tolist() == [expected[q][1] for q in valid]
        assert scores.inp.tolist() == pytest.approx([expected[q][2] for q in valid], abs=1e-12)
    cmc, m_ap, m_inp = evaluate_rank(distances, q_pids, g_pids, q_cams, g_cams, max_rank=ng, return_minp=True)
    assert m_ap == pytest.approx(sum(expected[q][0] for q in valid) / len(valid), abs=1e-9)
    assert m_inp == pytest.approx(sum(expected[q][2] for q in valid) / len(valid), abs=1e-9)
    for k in (1, 5, ng):
        hits = sum(expected[q][1] <= k for q in valid) / len(valid)
        assert float(cmc[k - 1]) == pytest.approx(hits, abs=1e-6)


def test_ranked_matches_equals_the_loop():
    generator = torch.Generator().manual_seed(3)
    nq, ng = 12, 25
    q_labels = torch.randint(0, 5, (nq,), generator=generator)
    g_labels = torch.randint(0, 5, (ng,), generator=generator)
    q_labels[0] = 9  # a query without any true match
    distances = distinct_distances(generator, nq, ng)
    matches = q_labels[:, None] == g_labels[None]
    exclude = torch.rand(nq, ng, generator=generator) < 0.3
    ap, first = ranked_matches(distances, matches, exclude)
    for q, e in enumerate(naive_scores(distances, matches, exclude)):
        if e is None:
            assert ap[q].item() == 0.0 and first[q].item() == ng + 1
        else:
            assert ap[q].item() == pytest.approx(e[0], abs=1e-12)
            assert first[q].item() == e[1]
    assert ap[0].item() == 0.0 and first[0].item() == ng + 1


def test_match_rank_scores_by_hand():
    # query 0: matches at ranks 1, 3, 6; query 1: one match at rank 2 (the rest padding, garbage);
    # query 2: no match
    ranks = torch.tensor([[1, 3, 6], [2, 0, -5], [0, 0, 0]])
    ap, first, inp = match_rank_scores(ranks, torch.tensor([3, 1, 0]), gallery_size=10)
    assert ap.tolist() == pytest.approx([(1 / 1 + 2 / 3 + 3 / 6) / 3, 1 / 2, 0.0])
    assert first.tolist() == [1, 2, 11]
    assert inp.tolist() == pytest.approx([3 / 6, 1 / 2, 0.0])
    none = torch.zeros(2, dtype=torch.long)
    ap, first, inp = match_rank_scores(none[:, None][:, :0], none, 4)  # no column at all
    assert ap.tolist() == [0.0, 0.0] and first.tolist() == [5, 5] and inp.tolist() == [0.0, 0.0]
