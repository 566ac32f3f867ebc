"""Each re-ID query's AP, first true match's rank and INP, in chunks of queries: the per-query
scores that :func:`cama.metrics.evaluate_rank` and :class:`cama.metrics.ReIDRankMetric` reduce to
CMC, mAP and mINP, and that :func:`per_query_rank` hands back query by query (a paired bootstrap over
queries needs them: ``bench/reid_per_query.py``).

Protocol: ``docs/evaluation.md#re-id-ranking`` (the Market-1501 single-query protocol, ties broken
by gallery index). The ranks of each chunk's true matches come from
:func:`cama.metrics.match_ranks.match_ranks`, the scores from them from
:func:`cama.metrics.ranking.match_rank_scores` (the one per-query core); only the queries with a true
match are scored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from cama.metrics.match_ranks import Gallery, Workspace, match_ranks, max_chunk_rows
from cama.metrics.ranking import is_junk, match_rank_scores
from cama.metrics.reid_inputs import as_ids, as_tensor, no_valid_query_error

__all__ = ["CHUNK_BYTES", "DistanceRows", "QueryScores", "distance_rows", "per_query_rank", "query_scores"]

#: Default memory budget for the temporaries of one chunk of queries.
CHUNK_BYTES = 256 * 1024 * 1024


@dataclass
class QueryScores:
    """The scores of the queries that have a true match, one entry each, by query position."""

    query: Tensor  # [V] long, the queries' positions (rows of the distance matrix)
    ap: Tensor  # [V] float64 average precision
    first_rank: Tensor  # [V] long, 1-based rank of the first true match among the kept gallery images
    inp: Tensor  # [V] float64 inverse negative penalty (fast-reid)


@dataclass
class DistanceRows:
    """A checked ``[Q, G]`` distance matrix handed out by chunks of query rows, with its labels."""

    block: Callable[[Tensor], Tensor]  # query positions [C] -> their [C, G] distances
    q_pids: Tensor
    g_pids: Tensor
    q_camids: Tensor
    g_camids: Tensor
    bytes_per_row: int  # temporaries of one query row
    device: torch.device


def distance_rows(distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any) -> DistanceRows:
    """:class:`DistanceRows` of ``distmat`` (tensor or numpy array, any real dtype, any device; not
    copied as a whole) and the integer ids; ``ValueError`` on a bad shape or dtype."""
    d = as_tensor(distmat, "distmat")
    if d.dim() != 2:
        raise ValueError(f"distmat must be [num_query, num_gallery], got shape {tuple(d.shape)}")
    if d.is_complex():
        raise ValueError("distmat must be real")
    if d.dtype == torch.bool:
        d = d.to(torch.uint8)
    nq, ng = d.shape
    device = d.device
    qp = as_ids(q_pids, "q_pids", nq, device)
    gp = as_ids(g_pids, "g_pids", ng, device)
    qc = as_ids(q_camids, "q_camids", nq, device)
    gc = as_ids(g_camids, "g_camids", ng, device)

    # temporaries per query row: float32 + int32 + bool per gallery entry, a copy of the row when
    # the chunk's rows are not contiguous, the junk columns
    esize = d.element_size()
    bytes_per_row = ng * (9 + esize) + int(is_junk(gp).sum()) * esize

    def block(rows: Tensor) -> Tensor:
        r0, n = int(rows[0]), rows.numel()
        return d[r0 : r0 + n] if int(rows[-1]) - r0 == n - 1 else d.index_select(0, rows)

    return DistanceRows(block, qp, gp, qc, gc, bytes_per_row, device)


def query_chunks(
    valid: Tensor, n_same: Tensor, bytes_per_row: int, chunk_size: int | None, chunk_bytes: int
) -> Iterator[Tensor]:
    """Consecutive runs of the valid query indices, each within the memory budget."""
    n = valid.numel()
    max_rows = max_chunk_rows()
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        base = min(chunk_size, max_rows)
    else:
        base = min(max_rows, max(1, chunk_bytes // max(1, bytes_per_row)))
    n_same = n_same.cpu()
    i = 0
    while i < n:
        rows = min(base, n - i)
        if chunk_size is None:  # identity groups are padded to the chunk's largest one
            while True:
                fit = max(1, chunk_bytes // (bytes_per_row + 96 * int(n_same[i : i + rows].max())))
                if fit >= rows:
                    break
                rows = fit
        yield valid[i : i + rows]
        i += rows


def query_scores(
    block_fn: Callable[[Tensor], Tensor], q_pids: Tensor, g_pids: Tensor, q_camids: Tensor, g_camids: Tensor,
    bytes_per_row: int, chunk_size: int | None, chunk_bytes: int,
) -> Iterator[QueryScores]:
    """:class:`QueryScores` of each chunk of the queries with a true match, in query order.

    ``block_fn(rows)`` returns the ``[len(rows), G]`` distances of queries ``rows`` to the gallery.
    Raises ``ValueError`` (naming the likely causes) when no query has a true match.
    """
    gal = Gallery(g_pids, g_camids)
    num_m, n_same = gal.num_matches(q_pids, q_camids)
    valid = (num_m > 0).nonzero().squeeze(1)
    if valid.numel() == 0:
        raise no_valid_query_error(q_pids, g_pids, q_camids, g_camids)
    workspace = Workspace()
    for rows in query_chunks(valid, n_same[valid], bytes_per_row, chunk_size, chunk_bytes):
        ranks, num = match_ranks(block_fn(rows), q_pids[rows], q_camids[rows], gal, workspace, chunk_bytes)
        ap, first, inp = match_rank_scores(ranks, num, gal.size)
        yield QueryScores(rows, ap, first, inp)


def per_query_rank(
    distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any, *,
    chunk_size: int | None = None, chunk_bytes: int = CHUNK_BYTES,
) -> QueryScores:
    """Each query's AP, first true match's rank and INP under :func:`cama.metrics.evaluate_rank`'s
    protocol and arguments (whose means and CMC these are); the queries without a true match are left
    out (``QueryScores.query`` names the others)."""
    rows = distance_rows(distmat, q_pids, g_pids, q_camids, g_camids)
    chunks = list(query_scores(rows.block, rows.q_pids, rows.g_pids, rows.q_camids, rows.g_camids,
                               rows.bytes_per_row, chunk_size, chunk_bytes))
    fields = ("query", "ap", "first_rank", "inp")
    return QueryScores(*(torch.cat([getattr(chunk, field) for chunk in chunks]) for field in fields))
