"""The ranking core shared by the re-ID metric, the retrieval metric, the reference providers and
``explain.py``: one sample per dataset index, the Market-1501 exclusion rule, and top-k lists.

* :func:`first_per_index` -- the samples of an evaluation epoch, one per dataset index (the first
  occurrence; ``DistributedSampler`` repeats samples to pad the last batch), ordered by index, the
  queries and the gallery numbered independently when ``is_query`` is given.
* :func:`reid_excluded` -- the gallery images a query never ranks (``docs/evaluation.md#re-id-ranking``):
  same identity *and* same camera, or junk (pid ``-1``); :func:`excluded_pairs` is the same rule
  element-wise (the one definition), :func:`is_junk` its junk part.
* :func:`top_k` -- the ``k`` nearest gallery rows of each query outside an exclusion mask, ties
  broken by gallery row (a stable sort), ``-1`` where fewer than ``k`` rows are rankable.
* :func:`match_rank_scores` -- per query, the AP, the rank of the first true match and the INP
  from the ranks of its true matches: the one per-query core of :func:`ranked_matches` and of the
  re-ID metric (:mod:`cama.metrics.reid_queries`, :func:`cama.metrics.evaluate_rank`).
* :func:`ranked_matches` -- per query, the AP and the rank of the first true match over the whole
  gallery, as :func:`cama.metrics.evaluate_rank` counts them (the deletion / insertion curves'
  ranking scores, :mod:`cama.metrics.deletion`).
* :class:`EmbeddingSet` -- the embeddings of one evaluation epoch with their labels, as the
  metrics hand them to the tasks' reference providers (:mod:`cama.references`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cama.metrics.distances import pairwise_distance

__all__ = [
    "EmbeddingSet", "excluded_pairs", "first_per_index", "is_junk", "match_rank_scores", "ranked_matches",
    "reid_excluded", "top_k",
]

#: The gallery pid of a junk image (never ranked); pid 0 (a distractor) is ranked as a false match.
JUNK_PID = -1


def first_per_index(indices: Tensor, is_query: Tensor | None = None) -> Tensor:
    """Positions of the first sample of each dataset index, ordered by index.

    With ``is_query`` the key is ``(index, is_query)``: a query and a gallery image may share an
    index (two dataloaders numbering their samples independently); the order is then by index, the
    gallery sample before the query sample of the same index.
    """
    indices = indices.long().reshape(-1)
    keys = indices if is_query is None else indices * 2 + is_query.long().reshape(-1)
    unique, inverse = torch.unique(keys, return_inverse=True)
    count = indices.numel()
    first = torch.full((unique.numel(),), count, dtype=torch.long, device=indices.device)
    first.scatter_reduce_(0, inverse, torch.arange(count, device=indices.device), reduce="amin")
    return first


def is_junk(g_pids: Tensor) -> Tensor:
    """Bool: the gallery images that are junk (pid ``-1``), never ranked by any query."""
    return g_pids == JUNK_PID


def excluded_pairs(q_pids: Tensor, q_camids: Tensor, g_pids: Tensor, g_camids: Tensor) -> Tensor:
    """The Market-1501 exclusion rule element-wise (shapes broadcast): query ``(q_pids, q_camids)``
    never ranks gallery image ``(g_pids, g_camids)`` of the same pid and camera, or junk."""
    return ((q_pids == g_pids) & (q_camids == g_camids)) | is_junk(g_pids)


def reid_excluded(q_pids: Tensor, q_camids: Tensor, g_pids: Tensor, g_camids: Tensor) -> Tensor:
    """``[Q, G]`` bool: gallery images query ``q`` never ranks (same pid and camera, or junk pid -1)."""
    return excluded_pairs(q_pids[:, None], q_camids[:, None], g_pids[None, :], g_camids[None, :])


def top_k(
    queries: Tensor, gallery: Tensor, k: int, distance: str = "euclidean", exclude: Tensor | None = None,
    distances: Tensor | None = None,
) -> Tensor:
    """The ``k`` nearest gallery rows ``[Q, k]`` of each query (``-1`` where none is left).

    Args:
        queries: ``[Q, D]`` embeddings.
        gallery: ``[G, D]`` embeddings.
        k: list length.
        distance: ``"euclidean"`` (squared; same order) or ``"cosine"`` (:func:`pairwise_distance`).
        exclude: optional ``[Q, G]`` bool, gallery rows a query must not rank.
        distances: optional ``[Q, G]`` distances to rank by instead of the embeddings' (e.g.
            :func:`cama.metrics.rerank.re_ranking`'s).
    """
    k = max(1, int(k))
    count, size = queries.shape[0], gallery.shape[0]
    if size == 0 or count == 0:
        return torch.full((count, k), -1, dtype=torch.long, device=gallery.device)
    if distances is None:
        distances = pairwise_distance(queries.to(gallery.device), gallery, distance)
    distances = distances.to(gallery.device)
    if exclude is not None:
        distances = distances.masked_fill(exclude.to(device=distances.device, dtype=torch.bool), float("inf"))
    order = torch.sort(distances, dim=1, stable=True).indices[:, :k]
    rows = torch.where(torch.isfinite(distances.gather(1, order)), order, torch.full_like(order, -1))
    if rows.shape[1] < k:  # a gallery smaller than k
        rows = torch.cat([rows, rows.new_full((count, k - rows.shape[1]), -1)], dim=1)
    return rows


def match_rank_scores(ranks: Tensor, num_matches: Tensor, gallery_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each query's AP, rank of its first true match and INP from the ranks of its true matches.

    The per-query core of every ranking score (:func:`ranked_matches`,
    :func:`cama.metrics.reid_queries.query_scores` and so :func:`cama.metrics.evaluate_rank`):
    ``AP`` = mean over the true matches of the precision at their rank, ``(i + 1) / rank_i`` for the
    ``i``-th match (0-based); ``INP`` (fast-reid) = ``num_matches / rank_of_the_last_match``
    (``docs/evaluation.md#re-id-ranking``). A query without a true match gets AP 0, INP 0 and first
    rank ``gallery_size + 1``.

    Args:
        ranks: ``[Q, M]`` 1-based ranks of each query's true matches, ascending; entries
            ``j >= num_matches[q]`` are padding (any value).
        num_matches: ``[Q]`` the number of true matches of each query (``<= M``).
        gallery_size: the number of gallery images (the first rank of a query without a match - 1).

    Returns:
        ``(ap [Q] float64, first_rank [Q] long, inp [Q] float64)``.
    """
    count, width = ranks.shape
    found = num_matches.to(ranks.device).long()
    if width == 0:  # no query has a true match
        ranks = ranks.new_ones(count, 1)
    order = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)
    used = order <= found[:, None]
    ranks = torch.where(used, ranks, torch.ones_like(ranks)).long()  # padding: no division by garbage
    ap = torch.where(used, order / ranks.double(), 0.0).sum(1) / found.clamp_min(1).double()
    last = ranks.gather(1, (found - 1).clamp_min(0)[:, None]).squeeze(1)
    inp = torch.where(found > 0, found.double() / last.double(), 0.0)
    first = torch.where(found > 0, ranks[:, 0], torch.full_like(found, gallery_size + 1))
    return ap, first, inp


def ranked_matches(distances: Tensor, matches: Tensor, exclude: Tensor) -> tuple[Tensor, Tensor]:
    """Each query's AP and the 1-based rank of its first true match over the whole gallery.

    The gallery images ``exclude`` marks are not ranked; the others are ranked by distance, ties by
    gallery column (a stable sort), as :func:`cama.metrics.evaluate_rank` ranks them; the scores are
    :func:`match_rank_scores` of the true matches' ranks. A query with no true match left gets AP 0
    and rank ``G + 1``.

    Args:
        distances: ``[Q, G]``, smaller = more similar.
        matches: ``[Q, G]`` bool, the true matches (same identity or class).
        exclude: ``[Q, G]`` bool, the images the query never ranks (e.g. :func:`reid_excluded`).

    Returns:
        ``(ap [Q] float64, first_rank [Q] long)``.
    """
    if distances.shape != matches.shape or distances.shape != exclude.shape or distances.ndim != 2:
        raise ValueError(
            f"distances, matches and exclude must be one [Q, G] shape, got {tuple(distances.shape)}, "
            f"{tuple(matches.shape)}, {tuple(exclude.shape)}"
        )
    exclude = exclude.to(device=distances.device, dtype=torch.bool)
    order = torch.sort(distances, dim=1, stable=True).indices
    kept_first = torch.sort(exclude.gather(1, order).byte(), dim=1, stable=True).indices
    order = order.gather(1, kept_first)
    hits = (matches.to(distances.device).bool() & ~exclude).gather(1, order)
    found = hits.sum(1)
    width = int(found.max()) if found.numel() else 0
    # the j-th hit of a row (0-based) goes to column j; the other columns to the dropped column `width`
    column = torch.where(hits, hits.cumsum(1) - 1, torch.full_like(found[:, None], width))
    positions = torch.arange(1, hits.shape[1] + 1, device=hits.device).expand_as(column)
    ranks = positions.new_zeros(hits.shape[0], width + 1).scatter_(1, column, positions)[:, :width]
    ap, first, _ = match_rank_scores(ranks, found, hits.shape[1])
    return ap, first


@dataclass
class EmbeddingSet:
    """The embeddings of one evaluation epoch, one row per dataset index, ordered by index.

    Attributes:
        embeddings: ``[N, D]`` (at least float32).
        labels: ``[N]`` long: the identity (re-ID; 0 distractor, -1 junk) or the class (retrieval).
        indices: ``[N]`` long dataset indices.
        cameras: ``[N]`` long camera of each row (re-ID), else None.
        is_query: ``[N]`` bool (re-ID), else None (every image is a query against the others).
        distance: how the metric ranks: ``"euclidean"`` (squared) or ``"cosine"``.
    """

    embeddings: Tensor
    labels: Tensor
    indices: Tensor
    cameras: Tensor | None = None
    is_query: Tensor | None = None
    distance: str = "euclidean"

    def __len__(self) -> int:
        return int(self.indices.numel())

    def gallery(self) -> EmbeddingSet:
        """The rows that are not queries (all rows when there is no query/gallery split)."""
        if self.is_query is None:
            return self
        keep = ~self.is_query
        return EmbeddingSet(
            self.embeddings[keep], self.labels[keep], self.indices[keep], self.cameras[keep]
            if self.cameras is not None else None, None, self.distance
        )

    def to(self, device: torch.device | str) -> EmbeddingSet:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return EmbeddingSet(
            move(self.embeddings), move(self.labels), move(self.indices), move(self.cameras),
            move(self.is_query), self.distance,
        )
