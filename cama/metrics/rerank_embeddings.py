"""k-reciprocal re-ranking from embeddings without any ``[N, N]`` matrix (Zhong et al., CVPR 2017).

The published method's distances (:mod:`cama.metrics.rerank`'s steps 1-8) of ``Q`` query and ``G``
gallery embeddings, ``N = Q + G``, in ``O(N k)`` memory besides the ``[Q, G]`` result (MSMT17's
11,659 x 82,161: 3.8 GB in float32, where the ``[N, N]`` matrix would be 35 GB):

* ``D(i, j)``: the metric's distance (:func:`~cama.metrics.distances.pairwise_distance`: squared
  Euclidean or ``1 - cos``; one power-of-two overflow scaling for all the embeddings) is symmetric,
  so step 1's ``d[i, j] = D(j, i)^2 / max_k D(k, i)^2`` (the reference's column maximum, then the
  transpose) is ``D(i, j)^2 / m_i`` with ``m_i = max_j D(i, j)^2``, row ``i``'s own maximum.
* The blocks ``(I, J)``, ``I <= J``, of the upper triangle of ``D`` are computed once each, from the
  embeddings, and serve their rows and (transposed) their columns: each row keeps its maximum so far
  and its ``K + 1`` smallest ``(D^2, j)``.  The columns of a row arrive in ascending blocks, so a
  stable merge keeps the order of equal values by column.  Dividing by ``m_i`` cannot reorder a row
  but can make neighbouring values equal, so at the end the list is divided, ordered by
  ``(d, j)`` (step 2's stable order), and a row whose ``K``-th and ``(K + 1)``-th ``d`` are equal
  (a tie across the cut) is computed again in full.
* The ``[Q, G]`` block of ``D^2`` is kept (queries come first, so it lies in the upper triangle)
  and divided by ``m`` at the end: step 8's ``lambda d``.
* Step 5 needs ``d[i, j]`` for the ``j`` of ``R*(i)``: from ``i``'s list where ``j`` is in it, else
  computed from the embeddings of exactly those pairs (the expansion candidates' neighbours).
* Steps 3-8: :mod:`cama.metrics.rerank_steps`, ``V`` sparse, the Jaccard join a few queries at a time.

Work: one pass over the ``N (N + 1) / 2`` distances (the matrix products of half of ``[N, N]``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from cama.metrics.distances import overflow_safe_scale, paired_distance, prepared_distance
from cama.metrics.rerank_steps import CHUNK_BYTES, chunks, combine, encode, query_expansion, stable_smallest

__all__ = ["re_ranking_embeddings"]


class _Points:
    """The ``N = Q + G`` embeddings, queries first, as the distance sees them, without a concatenated
    copy: float32 and overflow-safe (one power-of-two scale for both sets: copies only where that
    changes them), rows of unit length for ``"cosine"`` (normalised as they are taken)."""

    def __init__(self, queries: Tensor, gallery: Tensor, distance: str, chunk_bytes: int) -> None:
        scale = overflow_safe_scale(queries, gallery)
        parts = []
        for e in (queries.detach(), gallery.detach()):
            if e.dtype != torch.float32 or bool(scale != 1):
                e = (e.to(scale.dtype) * scale.to(e.device)).float()
            parts.append(e)
        self.q, self.g = parts
        self.distance = distance
        self.nq, self.n, self.dim = self.q.shape[0], self.q.shape[0] + self.g.shape[0], self.q.shape[1]
        # euclidean: squared norms; cosine: the norms the rows are divided by (F.normalize's)
        self.norms = torch.empty(self.n, dtype=torch.float32, device=self.q.device)
        for s in chunks(self.n, chunk_bytes // (8 * self.dim)):
            x = self._raw(s)
            self.norms[s] = (x * x).sum(1) if distance == "euclidean" else x.norm(dim=1).clamp_min(1e-12)

    def _raw(self, s: slice) -> Tensor:
        if s.stop <= self.nq:
            return self.q[s]
        if s.start >= self.nq:
            return self.g[s.start - self.nq : s.stop - self.nq]
        return torch.cat([self.q[s.start :], self.g[: s.stop - self.nq]])

    def _unit(self, x: Tensor, norms: Tensor) -> Tensor:
        return x if self.distance == "euclidean" else x / norms[:, None]

    def rows(self, s: slice) -> Tensor:
        """``[len, D]`` the rows ``s`` of the ``N`` points."""
        return self._unit(self._raw(s), self.norms[s])

    def take(self, idx: Tensor) -> Tensor:
        """``[P, D]`` the rows ``idx`` of the ``N`` points."""
        out = torch.empty(idx.numel(), self.dim, dtype=torch.float32, device=self.q.device)
        is_q = idx < self.nq
        out[is_q] = self.q[idx[is_q]]
        out[~is_q] = self.g[idx[~is_q] - self.nq]
        return self._unit(out, self.norms[idx])

    def block(self, x: Tensor, rows: Tensor, s: slice) -> Tensor:
        """``D`` of the points ``x`` (whose norm terms are ``rows``' entries) to the points ``s``."""
        return prepared_distance(x, self.rows(s), self.distance, self.norms[rows], self.norms[s])

    def pairs(self, r: Tensor, c: Tensor) -> Tensor:
        """``D(r[p], c[p])`` for each pair ``p``."""
        return paired_distance(self.take(r), self.take(c), self.distance, self.norms[r], self.norms[c])


def _block_rows(n: int, dim: int, chunk_bytes: int) -> int:
    """The side ``b`` of a block: its temporaries ``8 b^2 + 8 b D`` bytes within ``chunk_bytes``."""
    b = (-8 * dim + math.sqrt(64 * dim * dim + 32 * chunk_bytes)) / 16
    return max(1, min(n, int(b)))


def _merge(run_v: Tensor, run_i: Tensor, rows: slice, new_v: Tensor, new_i: Tensor) -> None:
    """Keeps the smallest ``(value, column)`` of ``rows``' lists and new candidates of larger columns
    (both ordered by ``(value, column)``: a stable sort of the two in that order keeps it)."""
    v = torch.cat([run_v[rows], new_v], 1)
    i = torch.cat([run_i[rows], new_i], 1)
    order = v.argsort(dim=1, stable=True)[:, : run_v.shape[1]]
    run_v[rows], run_i[rows] = v.gather(1, order), i.gather(1, order)


def _smallest_squares(points: _Points, keep: int, qg: Tensor, chunk_bytes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Every row's ``keep`` smallest ``(D^2, column)`` (``[N, keep]`` values and columns) and maximum
    ``m`` of ``D^2`` (``[N]``), from the blocks of the upper triangle; ``qg`` ``[Q, G]`` receives
    ``D^2`` of the queries to the gallery."""
    n, nq = points.n, points.nq
    dev = qg.device
    run_v = torch.full((n, keep), float("inf"), dtype=torch.float32, device=dev)
    run_i = torch.full((n, keep), n, dtype=torch.long, device=dev)
    top = torch.zeros(n, dtype=torch.float32, device=dev)
    b = _block_rows(n, points.dim, chunk_bytes)
    ar = torch.arange(n, device=dev)
    for rows in chunks(n, b):
        x = points.rows(rows)
        for start in range(rows.start, n, b):
            cols = slice(start, min(n, start + b))
            sq = points.block(x, ar[rows], cols).square_()
            row_max = sq.amax(1)
            if not bool(torch.isfinite(row_max).all()):
                raise ValueError("re-ranking: the squared distances overflow float32 (embeddings too large)")
            top[rows] = torch.maximum(top[rows], row_max)
            v, i = stable_smallest(sq, min(keep, sq.shape[1]), chunk_bytes)
            _merge(run_v, run_i, rows, v, i + cols.start)
            if cols.start != rows.start:  # the block's columns, as rows
                top[cols] = torch.maximum(top[cols], sq.amax(0))
                v, i = stable_smallest(sq.T, min(keep, sq.shape[0]), chunk_bytes)
                _merge(run_v, run_i, cols, v, i + rows.start)
            q_end, g_start = min(rows.stop, nq), max(cols.start, nq)
            if rows.start < q_end and g_start < cols.stop:
                qg[rows.start : q_end, g_start - nq : cols.stop - nq] = sq[: q_end - rows.start, g_start - cols.start :]
    return run_v, run_i, top


def _initial_ranking(points: _Points, k: int, qg: Tensor, chunk_bytes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 1-2: ``rank`` ``[N, k]`` (stable order of ``d``), ``d`` of those entries ``[N, k]``, the
    row maxima ``m`` ``[N]``; ``qg`` becomes ``d`` of the queries to the gallery."""
    n = points.n
    keep = min(k + 1, n)
    sq, col, top = _smallest_squares(points, keep, qg, chunk_bytes)
    d = sq / top[:, None]
    order = col.argsort(dim=1)  # by column, then stably by d
    d, col = d.gather(1, order), col.gather(1, order)
    order = d.argsort(dim=1, stable=True)
    d, col = d.gather(1, order), col.gather(1, order)
    if keep > k:  # a tie across the cut: columns outside the list may tie too
        redo = (d[:, k - 1] == d[:, k]).nonzero().squeeze(1)
        for s in chunks(redo.numel(), chunk_bytes // (16 * n)):
            r = redo[s]
            x = points.take(r)
            full = torch.cat([points.block(x, r, part) for part in (slice(0, points.nq), slice(points.nq, n))], 1)
            v, i = stable_smallest(full.square_().div_(top[r, None]), k, chunk_bytes)
            d[r, :k], col[r, :k] = v, i
    qg.div_(top[: points.nq, None])
    return col[:, :k].contiguous(), d[:, :k].contiguous(), top


def _listed_or_computed(points: _Points, rank: Tensor, d: Tensor, top: Tensor, chunk_bytes: int):
    """Step 5's ``d[rows, cols]``: from the row's list where the column is in it, else from the
    embeddings (``D^2 / m``) for exactly the pairs outside it."""

    def distance_of(r: Tensor, c: Tensor) -> Tensor:
        out = torch.empty(r.numel(), dtype=torch.float32, device=r.device)
        found = torch.empty(r.numel(), dtype=torch.bool, device=r.device)
        pos = torch.arange(rank.shape[1], device=r.device)
        for s in chunks(r.numel(), chunk_bytes // (21 * rank.shape[1])):
            hit = rank[r[s]] == c[s, None]  # a column appears once in a list
            found[s] = hit.any(1)
            at = torch.where(hit, pos, 0).sum(1, keepdim=True)
            out[s] = d[r[s]].gather(1, at).squeeze(1)
        missing = (~found).nonzero().squeeze(1)
        for s in chunks(missing.numel(), chunk_bytes // (16 * points.dim + 64)):
            m = missing[s]
            out[m] = points.pairs(r[m], c[m]).square_().div_(top[r[m]])
        return out

    return distance_of


@torch.no_grad()
def re_ranking_embeddings(
    queries: Tensor, gallery: Tensor, distance: str = "euclidean", k1: int = 20, k2: int = 6,
    lambda_value: float = 0.3, chunk_bytes: int = CHUNK_BYTES,
) -> Tensor:
    """The ``[Q, G]`` re-ranked distances (float32) of ``queries`` ``[Q, D]`` to ``gallery`` ``[G, D]``:
    :func:`cama.metrics.rerank.re_ranking` of the three distance blocks, computed as the module
    docstring says (the caller checks the options).  ``chunk_bytes``: the budget of one chunk's
    temporaries (a block of the distances is about ``sqrt(chunk_bytes / 8)`` on a side); it changes
    no ranking."""
    for name, t in (("queries", queries), ("gallery", gallery)):
        if not isinstance(t, Tensor):
            raise TypeError(f"re-ranking: {name} must be a torch.Tensor, got {type(t)}")
        if t.dim() != 2 or t.is_complex() or t.shape[0] < 1:
            raise ValueError(f"re-ranking: {name} must be [N, D] real embeddings with N >= 1, got "
                             f"{t.dtype} {tuple(t.shape)}")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"re-ranking: queries {tuple(queries.shape)} and gallery {tuple(gallery.shape)} "
                         "differ in their dimension D")
    if distance not in ("euclidean", "cosine"):
        raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
    if not bool(torch.isfinite(queries).all()) or not bool(torch.isfinite(gallery).all()):
        raise ValueError("re-ranking: the embeddings must be finite (got NaN or inf)")
    chunk_bytes = int(chunk_bytes)
    points = _Points(queries, gallery, distance, chunk_bytes)
    n, nq = points.n, points.nq
    k2e = min(int(k2), n)
    k = max(min(int(k1) + 1, n), k2e)
    out = torch.empty(nq, n - nq, dtype=torch.float32, device=points.q.device)
    rank, d, top = _initial_ranking(points, k, out, chunk_bytes)
    rows, cols, vals = encode(rank, int(k1), _listed_or_computed(points, rank, d, top, chunk_bytes), chunk_bytes)
    if int(k2) != 1:
        rows, cols, vals = query_expansion(rows, cols, vals, rank, k2e, n, chunk_bytes)
    return combine(rows, cols, vals, out, float(lambda_value), chunk_bytes)
