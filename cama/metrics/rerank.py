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
* Memory: :func:`re_ranking` holds one ``[N, N]`` float32 matrix (the normalised distances) while
  steps 2-5 run, then only the ``[Q, G]`` block; :func:`re_ranked_distances` of a query and a gallery
  set holds no ``[N, N]`` matrix at all (:mod:`cama.metrics.rerank_embeddings`: the distances are
  computed from the embeddings in blocks, each row keeps its maximum and its first neighbours, and
  the distances of the few other pairs step 5 needs are computed for those pairs alone).  Both
  keep ``V`` sparse (about ``N * 1.5 * k1`` entries) and join the query rows with the gallery rows
  on their shared columns (step 7), a bounded number of pairs at a time, instead of the reference's
  inverted-index loops (:mod:`cama.metrics.rerank_steps`).  ``chunk_bytes`` bounds the temporaries
  of one chunk; it changes no ranking.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cama.metrics.distances import pairwise_distance
from cama.metrics.rerank_embeddings import re_ranking_embeddings
from cama.metrics.rerank_steps import CHUNK_BYTES, chunks, combine, encode, query_expansion, stable_smallest

__all__ = ["RerankOptions", "check_rerank_options", "re_ranked_distances", "re_ranking"]


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
    def of(cls, rerank: bool, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> RerankOptions | None:
        """The options when ``rerank``, else None."""
        return cls(int(k1), int(k2), float(lambda_value)) if rerank else None

    def distances(self, queries: Tensor, gallery: Tensor | None = None, distance: str = "euclidean",
                  chunk_bytes: int = CHUNK_BYTES) -> Tensor:
        """:func:`re_ranked_distances` with these options."""
        return re_ranked_distances(queries, gallery, distance, self.k1, self.k2, self.lambda_value, chunk_bytes)


def _normalised_distances(q_g: Tensor, q_q: Tensor, g_g: Tensor, chunk_bytes: int) -> Tensor:
    """Step 1: ``transpose(orig ** 2 / max(orig ** 2, axis=0))``, built directly transposed."""
    nq, ng = q_g.shape
    n = nq + ng
    d = torch.empty(n, n, dtype=torch.float32, device=q_g.device)
    # orig = [[qq, qg], [qg^T, gg]] -> orig^T = [[qq^T, qg], [qg^T, gg^T]]
    d[:nq, :nq] = q_q.T
    d[:nq, nq:] = q_g
    d[nq:, :nq] = q_g.T
    d[nq:, nq:] = g_g.T
    for s in chunks(n, chunk_bytes // (4 * n)):
        blk = d[s]
        blk.square_()
        # column max of orig = row max of orig^T; NaN and inf propagate into it
        top = blk.amax(1, keepdim=True)
        if not bool(torch.isfinite(top).all()):
            raise ValueError("re_ranking: the distances must be finite (got NaN or inf)")
        blk.div_(top)
    return d


def _entries(d: Tensor):
    """Step 5's ``d[rows, cols]`` read from the matrix."""
    return lambda rows, cols: d[rows, cols]


@torch.no_grad()
def re_ranking(
    q_g_dist: Tensor,
    q_q_dist: Tensor,
    g_g_dist: Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_bytes: int = CHUNK_BYTES,
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
        chunk_bytes: the budget of one chunk's temporaries; it changes no number.

    Returns:
        ``[Q, G]`` float32 re-ranked distances on the inputs' device.  ``lambda_value=1`` gives
        back ``q_g_dist ** 2`` with each query's row divided by the largest squared distance of
        that query's column of the full matrix (``max(q_q_dist[:, i] ** 2, q_g_dist[i] ** 2)``).

    Peak memory: one ``[Q + G, Q + G]`` float32 matrix plus chunked temporaries (``chunk_bytes``);
    :func:`re_ranked_distances` of embeddings needs no ``[Q + G, Q + G]`` matrix.
    Equal distances are ordered by index (a stable sort); the reference leaves their order to
    numpy's quicksort.
    """
    _check(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)
    k1, k2, lam = int(k1), int(k2), float(lambda_value)
    nq, ng = q_g_dist.shape
    n = nq + ng
    chunk_bytes = int(chunk_bytes)
    d = _normalised_distances(q_g_dist, q_q_dist, g_g_dist, chunk_bytes)
    k2e = min(k2, n)
    rank = stable_smallest(d, max(min(k1 + 1, n), k2e), chunk_bytes)[1]
    rows, cols, vals = encode(rank, k1, _entries(d), chunk_bytes)
    original = d[:nq, nq:].clone()
    del d
    if k2 != 1:
        rows, cols, vals = query_expansion(rows, cols, vals, rank, k2e, n, chunk_bytes)
    del rank
    return combine(rows, cols, vals, original, lam, chunk_bytes)


def re_ranked_distances(
    queries: Tensor, gallery: Tensor | None = None, distance: str = "euclidean",
    k1: int = 20, k2: int = 6, lambda_value: float = 0.3, chunk_bytes: int = CHUNK_BYTES,
) -> Tensor:
    """:func:`re_ranking` of embeddings: ``[Q, G]`` re-ranked distances of ``queries`` ``[Q, D]`` to
    ``gallery`` ``[G, D]`` (:func:`~cama.metrics.distances.pairwise_distance`, squared Euclidean by
    default, as torchreid passes them).

    With a gallery, no ``[Q + G, Q + G]`` matrix is held: the distances are computed from the
    embeddings in blocks (:mod:`cama.metrics.rerank_embeddings`); memory is the ``[Q, G]`` result
    plus ``O((Q + G) k1^2)`` and ``chunk_bytes`` of temporaries.  ``gallery=None`` ranks the set
    against itself, one distance matrix (``[Q, Q]``, held) serving as the three blocks of
    :func:`re_ranking`; that matrix is symmetric only up to float32 rounding, so a sample and its
    copy tie only where the rounding agrees.
    :func:`cama.metrics.rerank_self.re_ranked_self_neighbours` gives each row's first neighbours of
    the set against itself without the matrix, the copies tied exactly."""
    check_rerank_options(k1, k2, lambda_value)
    if gallery is None:
        same = pairwise_distance(queries, queries, distance)
        return re_ranking(same, same, same, k1, k2, lambda_value, chunk_bytes)
    return re_ranking_embeddings(queries, gallery, distance, k1, k2, lambda_value, chunk_bytes)
