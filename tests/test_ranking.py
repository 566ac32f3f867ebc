"""cama.metrics.ranking against plain Python loops and a hand-made example."""

from __future__ import annotations

import pytest
import torch

from cama.metrics.ranking import excluded_pairs, first_per_index, is_junk, reid_excluded, top_k


def naive_first_per_index(indices, is_query=None):
    keys = [(int(i), 0 if is_query is None else int(q)) for i, q in
            zip(indices, is_query if is_query is not None else [0] * len(indices))]
    first: dict[tuple[int, int], int] = {}
    for pos, key in enumerate(keys):
        first.setdefault(key, pos)
    return [first[key] for key in sorted(first)]


def test_first_per_index_with_repeats():
    indices = torch.tensor([7, 3, 7, 0, 3, 9, 0])
    assert first_per_index(indices).tolist() == [3, 1, 0, 5]  # index 0 at 3, 3 at 1, 7 at 0, 9 at 5
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        idx = torch.randint(0, 12, (40,), generator=g)
        assert first_per_index(idx).tolist() == naive_first_per_index(idx.tolist())


def test_first_per_index_query_and_gallery_sides():
    indices = torch.tensor([2, 2, 0, 2, 0, 1])
    is_query = torch.tensor([1, 0, 1, 1, 0, 0]).bool()
    # keys (index, query): (0, g) at 4, (0, q) at 2, (1, g) at 5, (2, g) at 1, (2, q) at 0
    assert first_per_index(indices, is_query).tolist() == [4, 2, 5, 1, 0]
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        idx = torch.randint(0, 8, (30,), generator=g)
        isq = torch.rand(30, generator=g) < 0.5
        assert first_per_index(idx, isq).tolist() == naive_first_per_index(idx.tolist(), isq.tolist())


def test_reid_excluded_hand_made():
    q_pids, q_cams = torch.tensor([1, 2]), torch.tensor([0, 1])
    g_pids = torch.tensor([1, 1, 2, -1, 0, 2])
    g_cams = torch.tensor([0, 1, 1, 0, 0, 0])
    expected = [
        [True, False, False, True, False, False],  # q0 (pid 1, cam 0): same pid+cam at 0, junk at 3
        [False, False, True, True, False, False],  # q1 (pid 2, cam 1): same pid+cam at 2, junk at 3
    ]
    assert reid_excluded(q_pids, q_cams, g_pids, g_cams).tolist() == expected
    assert is_junk(g_pids).tolist() == [False, False, False, True, False, False]
    assert excluded_pairs(q_pids[1], q_cams[1], g_pids, g_cams).tolist() == expected[1]


def test_reid_excluded_matches_a_loop():
    g = torch.Generator().manual_seed(2)
    qp, qc = torch.randint(-1, 4, (15,), generator=g), torch.randint(0, 3, (15,), generator=g)
    gp, gc = torch.randint(-1, 4, (25,), generator=g), torch.randint(0, 3, (25,), generator=g)
    got = reid_excluded(qp, qc, gp, gc)
    for i in range(15):
        for j in range(25):
            rule = (qp[i] == gp[j] and qc[i] == gc[j]) or gp[j] == -1
            assert bool(got[i, j]) == bool(rule), (i, j)


def naive_top_k(queries, gallery, k, exclude=None):
    out = []
    for i, q in enumerate(queries.tolist()):
        dists = []
        for j, x in enumerate(gallery.tolist()):
            if exclude is not None and bool(exclude[i, j]):
                continue
            dists.append((sum((a - b) ** 2 for a, b in zip(q, x)), j))  # ties: gallery row
        rows = [j for _, j in sorted(dists)[:k]]
        out.append(rows + [-1] * (k - len(rows)))
    return out


@pytest.mark.parametrize("k", [1, 3, 8])
def test_top_k_ties_exclusion_and_short_gallery(k):
    g = torch.Generator().manual_seed(k)
    # integer coordinates: many equal distances, broken by gallery row
    queries = torch.randint(0, 3, (9, 2), generator=g).float()
    gallery = torch.randint(0, 3, (6, 2), generator=g).float()  # fewer than k = 8 rows
    exclude = torch.rand(9, 6, generator=g) < 0.4
    exclude[0] = True  # nothing left to rank
    assert top_k(queries, gallery, k).tolist() == naive_top_k(queries, gallery, k)
    assert top_k(queries, gallery, k, exclude=exclude).tolist() == naive_top_k(queries, gallery, k, exclude)
    assert top_k(queries, gallery, k, exclude=exclude)[0].tolist() == [-1] * k


def test_top_k_hand_made_ties():
    gallery = torch.tensor([[1.0], [0.0], [2.0], [0.0], [1.0]])
    query = torch.tensor([[0.0]])
    assert top_k(query, gallery, 4).tolist() == [[1, 3, 0, 4]]  # equal distances: smaller row first
    assert top_k(query, gallery[:0], 2).tolist() == [[-1, -1]]
