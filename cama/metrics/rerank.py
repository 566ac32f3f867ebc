"""k-reciprocal re-ranking of re-ID distances (Zhong et al., CVPR 2017).

Z. Zhong, L. Zheng, D. Cao, S. Li, "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017.  :func:`re_ranking` gives the distances of the authors' released Python code
(``person-re-ranking``, the version taking distance matrices that torchreid's
``torchreid/utils/rerank.py`` and fast-reid copy), vectorised over rows and chunked in memory.

With ``N = Q + G`` samples (queries first, then the gallery):

1. ``d`` = the ``[N, N]`` matrix ``[[q_q, q_g], [q_g^T, g_g]]``, squared elementwise, each column
   divided by its maximum, then transposed (as the reference code does; for symmetric inputs this
   is each row divided by its maximum).  Computed in float32.
2. ``initial_rank[i]`` = the samples sorted by ``d[i]`` (ascending).
3. k-reciprocal neighbours (paper Eq. 4): ``R(i, k) = {j in N(i, k) : i in N(j, k)}`` where
   ``N(i, k)`` = the first ``k`` entries of ``initial_rank[i]``; the code uses ``k = k1 + 1``.
4. Expansion (Eq. 6): for each ``c`` in ``R(i, k1 + 1)``, ``R(c, round(k1 / 2) + 1)`` joins when more
   than 2/3 of it is already in ``R(i, k1 + 1)``; ``R*(i)`` = the union.
5. Gaussian-kernel encoding (Eq. 7): ``V[i, j] = exp(-d[i, j]) / sum_{j' in R*(i)} exp(-d[i, j'])``
   for ``j`` in ``R*(i)``, 0 elsewhere (a sparse row).
6. Local query expansion (Eq. 11), when ``k2 != 1``: ``V[i] <- mean(V[initial_rank[i, :k2]])``.
7. Jaccard distance (Eq. 10, with the min/max form of Eq. 9 and ``sum V_i = sum V_j = 1``):
   ``t = sum_k min(V[i, k], V[j, k])``, ``d_J(i, j) = 1 - t / (2 - t)``.
8. ``final = (1 - lambda_value) * d_J + lambda_value * d`` (Eq. 12), sliced to the query rows and
   gallery columns ``[:Q, Q:]``.

Differences from the reference code, none of which changes the published method:

* **Ties**: ``initial_rank`` is a *stable* sort (among equal distances the smaller index comes
  first); the reference uses ``np.argsort`` (quicksort), whose order of equal distances is
  unspecified.
* Float32 sums are accumulated in a different order (differences of a few ulps).
* Memory: one ``[N, N]`` float32 matrix (the normalised distances) while steps 2-5 run, then only
  the ``[Q, G]`` block; ``V`` is kept sparse (about ``N * 1.5 * k1`` entries) and step 7 joins the
  query rows with the gallery rows on their shared columns, chunked to a bounded number of pairs,
  instead of the reference's inverted-index loops.
"""
from __future__ import annotations

from dataclasses import dataclass

from typing import Iterator

import torch
from torch import Tensor

from cama.metrics.distances import pairwise_distance

__all__ = ["re_ranking", "re_ranked_distances", "check_rerank_options", "RerankOptions"]

# budget of the temporaries of one chunk (bytes) and of one chunk of the Jaccard join (pairs)
_CHUNK_BYTES = 256 * 1024 * 1024
_CHUNK_PAIRS = 4 * 1024 * 1024


def _chunks(n: int, rows: int) -> Iterator[slice]:
    rows = max(1, rows)
    for s in range(0, n, rows):
        yield slice(s, min(n, s + rows))


def _check(q_g: Tensor, q_q: Tensor, g_g: Tensor, k1: int, k2: int, lambda_value: float) -> None:
    for name, t in (("q_g_dist", q_g), ("q_q_dist", q_q), ("g_g_dist", g_g)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t)}")
        if t.dim() != 2 or t.is_complex() or not t.is_floating_point():
            raise ValueError(f"{name} must be a 2-D real floating tensor, got {t.dtype} {tuple(t.shape)}")
    nq, ng = q_g.shape
    if tuple(q_q.shape) != (nq, nq) or tuple(g_g.shape) != (ng, ng):
        raise ValueError(
            f"shapes do not match: q_g_dist {tuple(q_g.shape)}, q_q_dist {tuple(q_q.shape)}, "
            f"g_g_dist {tuple(g_g.shape)} (expected [Q, G], [Q, Q], [G, G])"
        )
    if nq < 1 or ng < 1:
        raise ValueError(f"need at least one query and one gallery sample, got Q={nq}, G={ng}")
    check_rerank_options(k1, k2, lambda_value)


def check_rerank_options(k1: int, k2: int, lambda_value: float) -> None:
    """Raise ``ValueError`` unless ``k1, k2 >= 1`` and ``0 <= lambda_value <= 1`` (the metrics check
    their options with it when they are built, before any epoch)."""
    if int(k1) < 1 or int(k2) < 1:
        raise ValueError(f"re-ranking: k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"re-ranking: lambda_value must lie in [0, 1], got {lambda_value}")


@dataclass(frozen=True)
class RerankOptions:
    """The k-reciprocal re-ranking options a metric ranks by (checked when it is built, before any
    epoch): ``k1``, ``k2``, ``lambda_value`` of :func:`re_ranking`.

    >>> RerankOptions.of(True, k1=20, k2=6, lambda_value=0.3)
    RerankOptions(k1=20, k2=6, lambda_value=0.3)
    >>> RerankOptions.of(False) is None
    True
    """

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    def __post_init__(self) -> None:
        check_rerank_options(self.k1, self.k2, self.lambda_value)

    @classmethod
    def of(cls, rerank: bool, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> "RerankOptions | None":
        """The options when ``rerank``, else None."""
        return cls(int(k1), int(k2), float(lambda_value)) if rerank else None

    def distances(self, queries: Tensor, gallery: Tensor | None = None, distance: str = "euclidean") -> Tensor:
        """:func:`re_ranked_distances` with these options."""
        return re_ranked_distances(queries, gallery, distance, self.k1, self.k2, self.lambda_value)


def _normalised_distances(q_g: Tensor, q_q: Tensor, g_g: Tensor) -> Tensor:
    """Step 1: ``transpose(orig ** 2 / max(orig ** 2, axis=0))``, built directly transposed."""
    nq, ng = q_g.shape
    n = nq + ng
    d = torch.empty(n, n, dtype=torch.float32, device=q_g.device)
    # orig = [[qq, qg], [qg^T, gg]] -> orig^T = [[qq^T, qg], [qg^T, gg^T]]
    d[:nq, :nq] = q_q.T
    d[:nq, nq:] = q_g
    d[nq:, :nq] = q_g.T
    d[nq:, nq:] = g_g.T
    rows = max(1, _CHUNK_BYTES // (4 * n))
    for s in _chunks(n, rows):
        blk = d[s]
        blk.square_()
        # column max of orig = row max of orig^T; NaN and inf propagate into it
        top = blk.amax(1, keepdim=True)
        if not bool(torch.isfinite(top).all()):
            raise ValueError("re_ranking: the distances must be finite (got NaN or inf)")
        blk.div_(top)
    return d


def _stable_topk(d: Tensor, k: int) -> Tensor:
    """The first ``k`` columns of a stable ascending argsort of each row of ``d`` ([N, k] long)."""
    n, m = d.shape
    out = torch.empty(n, k, dtype=torch.long, device=d.device)
    rows = max(1, _CHUNK_BYTES // (8 * m))
    kk = min(k + 1, m)
    for s in _chunks(n, rows):
        blk = d[s]
        val, idx = blk.topk(kk, dim=1, largest=False, sorted=True)
        # order ties inside the selection by index: sort by index, then stably by value
        order = idx.argsort(dim=1)
        val, idx = val.gather(1, order), idx.gather(1, order)
        order = val.argsort(dim=1, stable=True)
        idx = idx.gather(1, order)[:, :k]
        val = val.gather(1, order)
        if kk > k:  # a tie across the cut: which tied columns get in depends on the index
            cut = (val[:, k - 1] == val[:, k]).nonzero().squeeze(1)
            if cut.numel():
                idx[cut] = blk[cut].argsort(dim=1, stable=True)[:, :k]
        out[s] = idx
    return out


def _reciprocal(top: Tensor) -> Tensor:
    """``mask[i, p]``: ``i`` is among the first ``k`` neighbours of ``top[i, p]`` ([N, k] bool)."""
    n, k = top.shape
    mask = torch.empty(n, k, dtype=torch.bool, device=top.device)
    ar = torch.arange(n, device=top.device)
    for s in _chunks(n, _CHUNK_BYTES // (9 * k * k)):
        mask[s] = (top[top[s]] == ar[s, None, None]).any(-1)
    return mask


def _encode(d: Tensor, rank: Tensor, k1: int) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 3-5: the sparse rows of ``V`` as COO triplets (row, column, value), rows ascending."""
    n = d.shape[0]
    dev = d.device
    kf = min(k1 + 1, n)
    kh = min(int(round(k1 / 2.0)) + 1, n)  # round half to even, like np.around
    fwd, half = rank[:, :kf], rank[:, :kh]
    rec, rec_h = _reciprocal(fwd), _reciprocal(half)
    width = kf + kf * kh
    per_row = 9 * kf * kh * kf + 40 * width
    rows_out, cols_out, vals_out = [], [], []
    for s in _chunks(n, _CHUNK_BYTES // per_row):
        f, r = fwd[s], rec[s]  # [c, kf]
        cand = half[f]  # [c, kf, kh]: the candidates' half neighbourhoods
        cand_ok = rec_h[f]  # their reciprocity
        # membership of each candidate's reciprocal neighbour in R(i)
        inside = ((cand[..., None] == f[:, None, None, :]) & r[:, None, None, :]).any(-1)
        count = (inside & cand_ok).sum(-1)
        size = cand_ok.sum(-1)
        accept = r & (count.double() > (2.0 / 3.0) * size.double())
        members = torch.cat(
            [torch.where(r, f, n), torch.where(accept[..., None] & cand_ok, cand, n).flatten(1)], 1
        )
        members = members.sort(dim=1).values
        keep = members < n
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]
        row = torch.arange(s.start, s.stop, device=dev)[:, None].expand_as(members)
        rr, cc = row[keep], members[keep]
        w = torch.exp(-d[rr, cc])
        tot = torch.zeros(s.stop - s.start, dtype=w.dtype, device=dev).index_add_(0, rr - s.start, w)
        rows_out.append(rr)
        cols_out.append(cc)
        vals_out.append(w / tot[rr - s.start])
    return torch.cat(rows_out), torch.cat(cols_out), torch.cat(vals_out)


def _query_expansion(
    rows: Tensor, cols: Tensor, vals: Tensor, rank: Tensor, k2: int, n: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Step 6: ``V[i] <- mean(V[rank[i, :k2]])`` on COO triplets (rows ascending)."""
    dev = rows.device
    count = torch.bincount(rows, minlength=n)
    start = count.cumsum(0) - count
    rows_out, cols_out, vals_out = [], [], []
    src_all = rank[:, :k2]
    avg = max(1, int(rows.numel()) // n)
    for s in _chunks(n, _CHUNK_PAIRS // (k2 * avg)):
        src = src_all[s].reshape(-1)
        rep = count[src]
        total = int(rep.sum())
        dst = torch.arange(s.start, s.stop, device=dev).repeat_interleave(k2).repeat_interleave(rep, output_size=total)
        offset = (rep.cumsum(0) - rep).repeat_interleave(rep, output_size=total)
        pos = torch.arange(total, device=dev) - offset + start[src].repeat_interleave(rep, output_size=total)
        key = dst * n + cols[pos]
        uniq, inv = torch.unique(key, return_inverse=True)
        acc = torch.zeros(uniq.numel(), dtype=vals.dtype, device=dev).index_add_(0, inv, vals[pos])
        rows_out.append(uniq // n)
        cols_out.append(uniq % n)
        vals_out.append(acc / k2)
    return torch.cat(rows_out), torch.cat(cols_out), torch.cat(vals_out)


def _overlap(rows: Tensor, cols: Tensor, vals: Tensor, nq: int, n: int) -> Tensor:
    """Step 7's ``t[i, j] = sum_k min(V[i, k], V[Q + j, k])`` for the queries ``i`` and gallery ``j``."""
    dev = rows.device
    ng = n - nq
    is_q = rows < nq
    qr, qc, qv = rows[is_q], cols[is_q], vals[is_q]
    g = ~is_q
    gr, gc, gv = rows[g] - nq, cols[g], vals[g]
    order = gc.argsort(stable=True)  # the gallery entries by column (an inverted index)
    gr, gc, gv = gr[order], gc[order], gv[order]
    ccount = torch.bincount(gc, minlength=n)
    cstart = ccount.cumsum(0) - ccount
    rep = ccount[qc]  # pairs each query entry makes
    out = torch.zeros(nq, ng, dtype=vals.dtype, device=dev)
    per_query = torch.zeros(nq, dtype=torch.long, device=dev).index_add_(0, qr, rep)
    entry_end = torch.bincount(qr, minlength=nq).cumsum(0).cpu()
    cum = per_query.cumsum(0).cpu()
    q0 = 0
    while q0 < nq:
        base = int(cum[q0 - 1]) if q0 else 0
        q1 = int(torch.searchsorted(cum, base + _CHUNK_PAIRS, right=True))
        q1 = min(nq, max(q1, q0 + 1))
        e0 = int(entry_end[q0 - 1]) if q0 else 0
        e1 = int(entry_end[q1 - 1])
        r = rep[e0:e1]
        total = int(r.sum())
        if total:
            offset = (r.cumsum(0) - r).repeat_interleave(r, output_size=total)
            pos = torch.arange(total, device=dev) - offset + cstart[qc[e0:e1]].repeat_interleave(r, output_size=total)
            m = torch.minimum(qv[e0:e1].repeat_interleave(r, output_size=total), gv[pos])
            qi = qr[e0:e1].repeat_interleave(r, output_size=total)
            out.view(-1).index_add_(0, qi * ng + gr[pos], m)
        q0 = q1
    return out


@torch.no_grad()
def re_ranking(
    q_g_dist: Tensor,
    q_q_dist: Tensor,
    g_g_dist: Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> Tensor:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017); see the module docstring for the steps.

    Args:
        q_g_dist: ``[Q, G]`` query-gallery distances (torchreid passes squared Euclidean or
            cosine distances; they are squared again here, as in the reference code).
        q_q_dist: ``[Q, Q]`` query-query distances.
        g_g_dist: ``[G, G]`` gallery-gallery distances.
        k1: the k-reciprocal neighbourhood size (paper: 20); ``k1 + 1`` neighbours are ranked,
            ``round(k1 / 2) + 1`` for the expansion.  Sizes beyond ``N`` are capped at ``N``.
        k2: the local query expansion size (paper: 6); ``1`` skips the expansion.
        lambda_value: weight of the original distance in the final one (paper: 0.3).

    Returns:
        ``[Q, G]`` float32 re-ranked distances on the inputs' device.  ``lambda_value=1`` gives
        back ``q_g_dist ** 2`` with each query's row divided by the largest squared distance of
        that query's column of the full matrix (``max(q_q_dist[:, i] ** 2, q_g_dist[i] ** 2)``).

    Peak memory: one ``[Q + G, Q + G]`` float32 matrix plus chunked temporaries (about 256 MB).
    Equal distances are ordered by index (a stable sort); the reference leaves their order to
    numpy's quicksort.
    """
    _check(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)
    k1, k2, lam = int(k1), int(k2), float(lambda_value)
    nq, ng = q_g_dist.shape
    n = nq + ng
    d = _normalised_distances(q_g_dist, q_q_dist, g_g_dist)
    k2e = min(k2, n)
    rank = _stable_topk(d, max(min(k1 + 1, n), k2e))
    rows, cols, vals = _encode(d, rank, k1)
    original = d[:nq, nq:].clone()
    del d
    if k2 != 1:
        rows, cols, vals = _query_expansion(rows, cols, vals, rank, k2e, n)
    del rank
    t = _overlap(rows, cols, vals, nq, n)
    jaccard = 1 - t / (2.0 - t)
    return jaccard.mul_(1 - lam).add_(original.mul_(lam))


def re_ranked_distances(
    queries: Tensor, gallery: Tensor | None = None, distance: str = "euclidean",
    k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
) -> Tensor:
    """:func:`re_ranking` of embeddings: ``[Q, G]`` re-ranked distances of ``queries`` ``[Q, D]`` to
    ``gallery`` ``[G, D]`` (:func:`~cama.metrics.distances.pairwise_distance`, squared Euclidean by
    default, as torchreid passes them); ``gallery=None`` ranks the set against itself, one distance
    matrix serving as the three blocks."""
    if gallery is None:
        same = pairwise_distance(queries, queries, distance)
        return re_ranking(same, same, same, k1, k2, lambda_value)
    return re_ranking(pairwise_distance(queries, gallery, distance), pairwise_distance(queries, queries, distance),
                      pairwise_distance(gallery, gallery, distance), k1, k2, lambda_value)
