"""Per-query AP and rank-1 hits of the re-ID bench (bench/reid_per_query.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from reid_per_query import per_query_rank  # noqa: E402

from cama.metrics import evaluate_rank  # noqa: E402


def sorted_ap(dist: torch.Tensor, qp, gp, qc, gc) -> tuple[list[int], list[float], list[float]]:
    """By a stable sort of each row: drop junk and the query's identity in its camera, then AP."""
    queries, aps, hits = [], [], []
    for i in range(dist.shape[0]):
        order = torch.argsort(dist[i], stable=True)
        kept = [int(j) for j in order if gp[j] != -1 and not (gp[j] == qp[i] and gc[j] == qc[i])]
        match = [gp[j] == qp[i] for j in kept]
        if not any(match):
            continue
        ranks = [r + 1 for r, m in enumerate(match) if m]
        queries.append(i)
        aps.append(sum((k + 1) / r for k, r in enumerate(ranks)) / len(ranks))
        hits.append(1.0 if ranks[0] == 1 else 0.0)
    return queries, aps, hits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_sort_per_query_and_the_metrics_mean(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    nq, ng = 40, 120
    qp = torch.randint(1, 12, (nq,), generator=g)
    gp = torch.randint(-1, 12, (ng,), generator=g)  # -1 junk, 0 distractor
    qc, gc = torch.randint(0, 3, (nq,), generator=g), torch.randint(0, 3, (ng,), generator=g)
    dist = torch.randint(0, 30, (nq, ng), generator=g).float()  # many ties: broken by gallery index
    out = per_query_rank(dist, qp, gp, qc, gc)
    queries, aps, hits = sorted_ap(dist, qp.tolist(), gp.tolist(), qc.tolist(), gc.tolist())
    assert out["query"].tolist() == queries
    assert out["ap"].tolist() == pytest.approx(aps, abs=1e-12)
    assert out["rank1"].tolist() == hits
    cmc, m_ap = evaluate_rank(dist, qp, gp, qc, gc)
    assert float(out["ap"].mean()) == pytest.approx(m_ap, abs=1e-6)
    assert float(out["rank1"].mean()) == pytest.approx(float(cmc[0]), abs=1e-6)
