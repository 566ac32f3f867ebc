"""Steps 2-8 of k-reciprocal re-ranking (Zhong et al., CVPR 2017) on neighbour lists and a sparse ``V``.

Shared by the two ways in: the distance matrices of :func:`cama.metrics.rerank.re_ranking` and the
embeddings of :mod:`cama.metrics.rerank_embeddings`. The step numbers and equations are those of
:mod:`cama.metrics.rerank`'s docstring. Nothing here holds an ``[N, N]`` matrix: the neighbour lists
are ``[N, k]``, ``V`` is a list of (row, column, value) triplets, and the only dense matrix is the
caller's ``[Q, G]`` result. Every step works in chunks whose temporaries stay within about
``chunk_bytes``; the chunking changes no number.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = [
    "CHUNK_BYTES", "chunks", "combine", "encode", "jaccard_chunks", "query_expansion", "stable_smallest",
]

# default budget of the temporaries of one chunk (bytes)
CHUNK_BYTES = 256 * 1024 * 1024
# bytes of temporaries per (query entry, gallery entry) pair of the sparse joins (steps 6-7)
_PAIR_BYTES = 64


def chunks(n: int, rows: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of ``rows`` (at least 1) each."""
    rows = max(1, int(rows))
    for s in range(0, n, rows):
        yield slice(s, min(n, s + rows))


def _pairs(chunk_bytes: int) -> int:
    return max(1, chunk_bytes // _PAIR_BYTES)


def stable_smallest(d: Tensor, k: int, chunk_bytes: int = CHUNK_BYTES) -> tuple[Tensor, Tensor]:
    """Step 2 on the rows of ``d`` ``[R, M]``: the first ``k <= M`` entries of a stable ascending
    argsort of each row (among equal values the smaller column first), as ``(values, columns)``,
    both ``[R, k]``.  A ``topk`` of ``k + 1`` per row, ordered by (value, column); a row whose
    ``k``-th and ``(k + 1)``-th values are equal (a tie across the cut: which tied columns get in
    depends on the column) is sorted in full."""
    r, m = d.shape
    vals = torch.empty(r, k, dtype=d.dtype, device=d.device)
    cols = torch.empty(r, k, dtype=torch.long, device=d.device)
    kk = min(k + 1, m)
    for s in chunks(r, chunk_bytes // (8 * m)):
        blk = d[s]
        val, idx = blk.topk(kk, dim=1, largest=False, sorted=True)
        order = idx.argsort(dim=1)  # by column, then stably by value
        val, idx = val.gather(1, order), idx.gather(1, order)
        order = val.argsort(dim=1, stable=True)
        val, idx = val.gather(1, order), idx.gather(1, order)
        if kk > k:
            cut = (val[:, k - 1] == val[:, k]).nonzero().squeeze(1)
            if cut.numel():
                full = blk[cut].sort(dim=1, stable=True)
                val[cut, :k], idx[cut, :k] = full.values[:, :k], full.indices[:, :k]
        vals[s], cols[s] = val[:, :k], idx[:, :k]
    return vals, cols


def _reciprocal(top: Tensor, chunk_bytes: int) -> Tensor:
    """``mask[i, p]``: ``i`` is among the first ``k`` neighbours of ``top[i, p]`` ([N, k] bool)."""
    n, k = top.shape
    mask = torch.empty(n, k, dtype=torch.bool, device=top.device)
    ar = torch.arange(n, device=top.device)
    for s in chunks(n, chunk_bytes // (9 * k * k)):
        mask[s] = (top[top[s]] == ar[s, None, None]).any(-1)
    return mask


def encode(
    rank: Tensor, k1: int, distance_of: Callable[[Tensor, Tensor], Tensor], chunk_bytes: int = CHUNK_BYTES
) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 3-5 (Eq. 4, 6, 7): the sparse rows of ``V`` as (row, column, value) triplets, rows
    ascending, columns ascending in each row.

    Args:
        rank: ``[N, K]`` the first ``K >= min(k1 + 1, N)`` entries of each row's initial ranking.
        k1: the k-reciprocal neighbourhood size.
        distance_of: ``(rows [P], cols [P]) -> [P]`` the normalised distances ``d[rows, cols]`` of
            step 1 (only pairs ``(i, j)`` with ``j`` in ``R*(i)`` are asked for).
    """
    n = rank.shape[0]
    dev = rank.device
    kf = min(k1 + 1, n)
    kh = min(round(k1 / 2.0) + 1, n)  # round half to even, like np.around
    fwd, half = rank[:, :kf], rank[:, :kh]
    rec, rec_h = _reciprocal(fwd, chunk_bytes), _reciprocal(half, chunk_bytes)
    width = kf + kf * kh
    per_row = 9 * kf * kh * kf + 40 * width
    rows_out, cols_out, vals_out = [], [], []
    for s in chunks(n, chunk_bytes // per_row):
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
        w = torch.exp(-distance_of(rr, cc))
        tot = torch.zeros(s.stop - s.start, dtype=w.dtype, device=dev).index_add_(0, rr - s.start, w)
        rows_out.append(rr)
        cols_out.append(cc)
        vals_out.append(w / tot[rr - s.start])
    return torch.cat(rows_out), torch.cat(cols_out), torch.cat(vals_out)


def query_expansion(
    rows: Tensor, cols: Tensor, vals: Tensor, rank: Tensor, k2: int, n: int, chunk_bytes: int = CHUNK_BYTES
) -> tuple[Tensor, Tensor, Tensor]:
    """Step 6 (Eq. 11): ``V[i] <- mean(V[rank[i, :k2]])`` on triplets (rows ascending)."""
    dev = rows.device
    count = torch.bincount(rows, minlength=n)
    start = count.cumsum(0) - count
    rows_out, cols_out, vals_out = [], [], []
    src_all = rank[:, :k2]
    avg = max(1, int(rows.numel()) // n)
    for s in chunks(n, _pairs(chunk_bytes) // (k2 * avg)):
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


def jaccard_chunks(
    rows: Tensor, cols: Tensor, vals: Tensor, nq: int, ng: int, lambda_value: float,
    chunk_bytes: int = CHUNK_BYTES, dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[int, int, Tensor]]:
    """Step 7 and the first term of step 8 (Eq. 9, 10, 12), a few queries at a time: yields
    ``(q0, q1, (1 - lambda) d_J)`` for the queries ``q0..q1-1`` against the gallery ``Q..N-1``
    (``[q1 - q0, G]``), ``d_J = 1 - t / (2 - t)``, ``t[i, j] = sum_k min(V[i, k], V[Q + j, k])``.

    ``t`` is joined on the shared columns (an inverted index of the gallery rows of ``V``) into a
    ``[rows, G]`` buffer whose temporaries stay within about ``chunk_bytes``."""
    dev = rows.device
    n = nq + ng
    is_q = rows < nq
    qr, qc, qv = rows[is_q], cols[is_q], vals[is_q]
    g = ~is_q
    gr, gc, gv = rows[g] - nq, cols[g], vals[g]
    order = gc.argsort(stable=True)  # the gallery entries by column (an inverted index)
    gr, gc, gv = gr[order], gc[order], gv[order]
    ccount = torch.bincount(gc, minlength=n)
    cstart = ccount.cumsum(0) - ccount
    rep = ccount[qc]  # pairs each query entry makes
    per_query = torch.zeros(nq, dtype=torch.long, device=dev).index_add_(0, qr, rep)
    entry_end = torch.bincount(qr, minlength=nq).cumsum(0).cpu()
    cum = per_query.cumsum(0).cpu()
    max_rows = max(1, chunk_bytes // (12 * ng))  # t and 2 - t
    lam = float(lambda_value)
    q0 = 0
    while q0 < nq:
        base = int(cum[q0 - 1]) if q0 else 0
        q1 = int(torch.searchsorted(cum, base + _pairs(chunk_bytes), right=True))
        q1 = min(nq, q0 + max_rows, max(q1, q0 + 1))
        e0 = int(entry_end[q0 - 1]) if q0 else 0
        e1 = int(entry_end[q1 - 1])
        t = torch.zeros(q1 - q0, ng, dtype=dtype, device=dev)
        r = rep[e0:e1]
        total = int(r.sum())
        if total:
            offset = (r.cumsum(0) - r).repeat_interleave(r, output_size=total)
            pos = torch.arange(total, device=dev) - offset + cstart[qc[e0:e1]].repeat_interleave(r, output_size=total)
            m = torch.minimum(qv[e0:e1].repeat_interleave(r, output_size=total), gv[pos])
            qi = qr[e0:e1].repeat_interleave(r, output_size=total) - q0
            t.view(-1).index_add_(0, qi * ng + gr[pos], m)
        # (1 - lambda) d_J = (1 - lambda) (1 - t / (2 - t))
        yield q0, q1, t.div_(t.neg().add_(2.0)).neg_().add_(1.0).mul_(1 - lam)
        q0 = q1


def combine(
    rows: Tensor, cols: Tensor, vals: Tensor, original: Tensor, lambda_value: float, chunk_bytes: int = CHUNK_BYTES
) -> Tensor:
    """Steps 7-8 (Eq. 9, 10, 12) in place: ``original`` ``[Q, G]`` (the normalised distances ``d`` of
    the queries ``0..Q-1`` to the gallery ``Q..N-1``) becomes ``(1 - lambda) d_J + lambda d``
    (:func:`jaccard_chunks`, a few queries at a time); returns ``original``."""
    nq, ng = original.shape
    lam = float(lambda_value)
    for q0, q1, part in jaccard_chunks(rows, cols, vals, nq, ng, lam, chunk_bytes, original.dtype):
        original[q0:q1].mul_(lam).add_(part)
    return original
