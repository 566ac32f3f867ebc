"""k-reciprocal re-ranking of a set against itself, kept to each row's first neighbours (Zhong et al.,
CVPR 2017), without any ``[N, N]`` matrix.

The retrieval protocol ranks every image of a split against the others: the query set is the gallery
set. Re-ranked, that is :func:`cama.metrics.rerank.re_ranking` with the split's distance matrix as
its three blocks, ``re_ranking(d, d, d)``: ``2N`` samples, each image once as a query (``i``) and once
as a gallery sample (``N + i``), and an ``[N, N]`` result whose diagonal (an image against its own
copy) the protocol leaves out. :func:`re_ranked_self_neighbours` gives the first ``k`` entries of each
row of that result, the diagonal left out, in step 2's stable order (equal distances by index):

* The ``2N`` samples are ``N`` points twice, so their normalised distances are those of the points,
  ``d2[r, c] = d[r mod N, c mod N]`` (the same row maxima). The points' neighbour lists come from
  the blocks of the upper triangle of their ``N x N`` distances (:mod:`cama.metrics.rerank_embeddings`;
  a quarter of the work of the ``2N`` set), and give the ``2N`` set's: each entry ``(v, j)`` stands for
  ``(v, j)`` and ``(v, N + j)``, and among equal values every ``j`` comes before every ``N + j``, so a
  stable sort by value of ``[list, list + N]``, cut at ``K``, is the ``2N`` list. The points' lists
  need only their first ``K`` entries (the members of a tie group missing from them would come at
  position ``K`` or later). An image and its copy tie exactly.
* Steps 3-6 (:mod:`cama.metrics.rerank_steps`) on the ``2N`` lists, ``V`` sparse. Rows ``i`` and
  ``N + i`` of ``V`` can differ: step 3 asks whether ``i``, resp. ``N + i``, is among a neighbour's
  first ``k1 + 1``.
* Steps 7-8 a few queries at a time (:func:`~cama.metrics.rerank_steps.jaccard_chunks`), the
  ``lambda d`` term of those rows computed from the embeddings, each row cut to its first ``k``
  entries other than its own copy (set to ``-inf``, so first, then dropped). Embeddings that are all
  equal give ``0 / 0`` distances, as the dense path does; those rows are in index order.

Memory: the ``[N, k]`` result, the ``[2N, K]`` lists (``K = max(k1 + 1, k2)``), ``V`` (at most about
``2N k2 1.5 (k1 + 1)`` entries after the expansion) and about ``chunk_bytes`` of temporaries per chunk.
Work: the ``N x N`` distances twice (once for the lists, half of them; once for the final rows),
and the sparse Jaccard join of the ``N`` query rows of ``V`` with the ``N`` gallery rows.
"""
from __future__ import annotations

import torch
from torch import Tensor

from cama.metrics.rerank_embeddings import _initial_ranking, _listed_or_computed, _Points
from cama.metrics.rerank_steps import CHUNK_BYTES, encode, jaccard_chunks, query_expansion, stable_smallest

__all__ = ["re_ranked_self_neighbours"]


def _doubled_ranking(rank: Tensor, d: Tensor, k: int) -> Tensor:
    """The ``[2N, k]`` initial ranking of the ``2N`` set (every point twice) from the points' lists
    ``rank`` / ``d`` ``[N, kn]`` (stable order, ``kn = min(k, N)``)."""
    n = rank.shape[0]
    values = torch.cat([d, d], 1)
    columns = torch.cat([rank, rank + n], 1)
    order = values.argsort(dim=1, stable=True)[:, :k]
    return columns.gather(1, order).repeat(2, 1)


@torch.no_grad()
def re_ranked_self_neighbours(
    embeddings: Tensor, k: int, distance: str = "euclidean", k1: int = 20, k2: int = 6,
    lambda_value: float = 0.3, chunk_bytes: int = CHUNK_BYTES,
) -> tuple[Tensor, Tensor]:
    """Each image's ``k`` nearest other images of ``embeddings`` ``[N, D]`` by the re-ranked distances
    of the set against itself (the module docstring): ``(values, indices)``, both ``[N, min(k, N - 1)]``,
    ``values`` float32 ``re_ranking(d, d, d)[i, j]`` ascending, ``indices`` the ``j != i``, equal values
    in index order. ``d``: :func:`~cama.metrics.distances.pairwise_distance` (``distance``).
    ``chunk_bytes`` bounds the temporaries of one chunk; it changes no ranking."""
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 2 or embeddings.is_complex():
        raise ValueError("re-ranking: embeddings must be a real [N, D] tensor, got "
                         f"{getattr(embeddings, 'shape', type(embeddings))}")
    n = embeddings.shape[0]
    if n < 2:
        raise ValueError(f"re-ranking a set against itself needs at least 2 samples, got {n}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if distance not in ("euclidean", "cosine"):
        raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
    if not bool(torch.isfinite(embeddings).all()):
        raise ValueError("re-ranking: the embeddings must be finite (got NaN or inf)")
    k1, k2, lam, chunk_bytes = int(k1), int(k2), float(lambda_value), int(chunk_bytes)
    k = min(int(k), n - 1)
    points = _Points(embeddings, embeddings[:0], distance, chunk_bytes)
    dev = points.q.device
    k2e = min(k2, 2 * n)
    big_k = max(min(k1 + 1, 2 * n), k2e)
    no_gallery = torch.empty(n, 0, dtype=torch.float32, device=dev)
    rank, d, top = _initial_ranking(points, min(big_k, n), no_gallery, chunk_bytes)
    rank2 = _doubled_ranking(rank, d, big_k)
    listed = _listed_or_computed(points, rank, d, top, chunk_bytes)
    rows, cols, vals = encode(rank2, k1, lambda r, c: listed(r % n, c % n), chunk_bytes)
    del d
    if k2 != 1:
        rows, cols, vals = query_expansion(rows, cols, vals, rank2, k2e, 2 * n, chunk_bytes)
    del rank, rank2
    out_v = torch.empty(n, k, dtype=torch.float32, device=dev)
    out_i = torch.empty(n, k, dtype=torch.long, device=dev)
    ar = torch.arange(n, device=dev)
    everything = slice(0, n)
    for q0, q1, part in jaccard_chunks(rows, cols, vals, n, n, lam, chunk_bytes):
        s = slice(q0, q1)
        final = points.block(points.rows(s), ar[s], everything).square_().div_(top[s, None])
        final.mul_(lam).add_(part)
        del part
        final[ar[: q1 - q0], ar[s]] = float("-inf")  # the image's own copy first, then left out
        v, i = stable_smallest(final, k + 1, chunk_bytes)
        nan = torch.isnan(final).any(1).nonzero().squeeze(1)
        if nan.numel():  # all the embeddings equal (0 / 0): a stable sort puts NaN last, by index
            full = final[nan].sort(dim=1, stable=True)
            v[nan], i[nan] = full.values[:, : k + 1], full.indices[:, : k + 1]
        out_v[s], out_i[s] = v[:, 1:], i[:, 1:]
    return out_v, out_i
