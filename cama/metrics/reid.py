"""Person re-ID ranking metrics: CMC, mAP and mINP under the Market-1501 single-query protocol.

Protocol (``docs/evaluation.md#re-id-ranking``), identical to torchreid's ``eval_market1501``:

* for each query, gallery images with the query's identity *and* camera are removed, and so are
  junk images (gallery pid ``-1``); distractors (pid ``0``) stay, as false matches;
* true matches are the remaining gallery images of the query's identity; a query without any is
  skipped (it counts neither in CMC nor in mAP);
* ``cmc[k - 1]`` = fraction of valid queries whose first true match is at rank ``<= k``;
* ``AP`` = mean over the true matches of the precision at their rank
  (``(i + 1) / rank_i`` for the i-th match, 0-based), ``mAP`` its mean over valid queries;
* ``INP`` (fast-reid) = ``num_matches / rank_of_the_last_match``, ``mINP`` its mean.

Ranks are counted among the kept gallery images. **Ties** are broken exactly like a stable argsort
of the query's row: among equal distances the gallery image with the smaller gallery index comes
first (torchreid uses numpy's default quicksort, whose order of equal distances is unspecified;
Zheng's MATLAB code uses a stable sort).

The ranks of the true matches come from :func:`cama.metrics.match_ranks.match_ranks` (a few
passes over each row, no sort), in chunks of queries whose temporaries stay within ``chunk_bytes``;
each query's scores from :mod:`cama.metrics.reid_queries` (:func:`per_query_rank` hands them back),
which these means and the CMC reduce.
:class:`ReIDRankMetric` prepares its gallery (float32, overflow-safe scale, unit rows for cosine,
squared norms) once per ranking and takes the queries of each chunk straight from its collected
batches: no copy of the whole embeddings beyond the prepared gallery, which is the collected rows
themselves where preparing changes nothing (float32, ordinary magnitudes, squared Euclidean, the
gallery's rows consecutive in one batch).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from cama.explain.precision import at_least_float32
from cama.metrics.distances import (
    max_abs, pairwise_distance, prepare_rows, prepared_distance, scale_for, squared_norms,
)
from cama.metrics.ranking import EmbeddingSet, first_per_index, is_junk
from cama.metrics.reid_queries import CHUNK_BYTES, distance_rows, query_scores
from cama.metrics.rerank import RerankOptions
from cama.metrics.states import CatRows, CollectedSamples

__all__ = ["evaluate_rank", "pairwise_distance", "ReIDRankMetric"]


def _evaluate(
    block_fn, q_pids: Tensor, g_pids: Tensor, q_camids: Tensor, g_camids: Tensor, max_rank: int,
    bytes_per_row: int, chunk_size: int | None, chunk_bytes: int, device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:
    """CMC, mAP and mINP: the per-query scores of :func:`query_scores` summed chunk by chunk.

    ``block_fn(rows)`` returns the ``[len(rows), G]`` distances of queries ``rows`` to the gallery.
    """
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    cmc_counts = torch.zeros(max_rank, dtype=torch.long, device=device)
    ap_sum = torch.zeros((), dtype=torch.float64, device=device)
    inp_sum = torch.zeros((), dtype=torch.float64, device=device)
    num_valid = 0
    for scores in query_scores(block_fn, q_pids, g_pids, q_camids, g_camids, bytes_per_row, chunk_size,
                               chunk_bytes):
        first = scores.first_rank.clamp(max=max_rank + 1)
        cmc_counts += torch.bincount(first, minlength=max_rank + 2)[1 : max_rank + 1].cumsum(0)
        ap_sum += scores.ap.sum()
        inp_sum += scores.inp.sum()
        num_valid += scores.query.numel()
    cmc = (cmc_counts.double() / num_valid).float()
    return cmc, ap_sum / num_valid, inp_sum / num_valid


def evaluate_rank(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    return_minp: bool = False,
    *,
    chunk_size: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> tuple[Tensor, float] | tuple[Tensor, float, float]:
    """CMC and mAP (and mINP) of a query-gallery distance matrix, Market-1501 single-query protocol.

    Args:
        distmat: ``[Q, G]`` distances, smaller = more similar (tensor or numpy array, any real
            dtype, on any device; it is not copied as a whole).  NaN is rejected.
        q_pids, g_pids, q_camids, g_camids: integer identities / camera ids, ``[Q]`` and ``[G]``.
            Gallery pid ``-1`` = junk (ignored), pid ``0`` = distractor (a false match).
        max_rank: length of the returned CMC curve (kept even when the gallery is shorter: the
            curve then stays at its last value, where torchreid would truncate it).
        return_minp: also return mINP.
        chunk_size: queries per chunk (default: chosen from ``chunk_bytes``); results do not
            depend on it.
        chunk_bytes: memory budget for the temporaries of one chunk.

    Returns:
        ``(cmc, mAP)`` or ``(cmc, mAP, mINP)``: ``cmc`` a float32 CPU tensor of ``max_rank`` fractions,
        ``mAP``/``mINP`` python floats in [0, 1], averaged over the queries that have a true match
        (each query's values: :func:`cama.metrics.reid_queries.per_query_rank`).

    Ties between equal distances are broken as a stable argsort of the row does (smaller gallery
    index first).  Raises ``ValueError`` (naming the likely causes) when no query has a true match.
    """
    rows = distance_rows(distmat, q_pids, g_pids, q_camids, g_camids)
    cmc, m_ap, m_inp = _evaluate(
        rows.block, rows.q_pids, rows.g_pids, rows.q_camids, rows.g_camids, max_rank, rows.bytes_per_row,
        chunk_size, chunk_bytes, rows.device,
    )
    cmc = cmc.cpu()
    if return_minp:
        return cmc, float(m_ap), float(m_inp)
    return cmc, float(m_ap)


# ----------------------------------------------------------------------------------------------
# torchmetrics Metric
# ----------------------------------------------------------------------------------------------


def _branch_key(i: int) -> str:
    return "mAP_branches_1" if i == 1 else f"mAP_branches_1-{i}"


class ReIDRankMetric(CollectedSamples):
    """CMC / mAP / mINP of re-ID embeddings, Market-1501 single-query protocol (see ``evaluate_rank``).

    ``update(embeddings [B, D], pids [B], camids [B], is_query [B] bool, indices [B] long)`` collects
    query and gallery samples; ``indices`` are dataset indices, unique among the queries and among the
    gallery samples: ``compute()`` keeps one sample per (query or gallery, index) (the first) and
    orders samples by index, so the samples that DistributedSampler repeats to pad the last batch
    are dropped and 1 and N processes give the same numbers (ties included).

    ``compute()`` returns 0-d float tensors: ``"mAP"``, ``"mINP"``, ``"rank{k}"`` for each ``k`` in
    ``ranks`` and, when ``prefix_dims=[d1, d2, ...]`` gives the cumulative dimensions of the branches
    of a concatenated embedding, ``"mAP_branches_1"`` (features ``[:, :d1]``), ``"mAP_branches_1-2"``
    (``[:, :d2]``), ... Distances (``"euclidean"``: squared Euclidean, same ranking; ``"cosine"``:
    ``1 - cos``) are computed in chunks of queries (``chunk_bytes`` of temporaries, or ``chunk_size``
    queries), never as a whole matrix; gallery samples with pid ``-1`` (junk) are dropped first.

    With ``rerank=True`` it also returns ``"mAP_rerank"``, ``"mINP_rerank"`` and ``"rank{k}_rerank"``:
    the same protocol (:func:`evaluate_rank`) on the k-reciprocal re-ranked distances
    (:func:`cama.metrics.rerank.re_ranking` with ``k1``, ``k2``, ``lambda_value``) of the junk-free
    query and gallery sets, from the embeddings: no ``[Q + G, Q + G]`` matrix, the ``[Q, G]``
    result (3.8 GB in float32 for MSMT17) and ``chunk_bytes`` of temporaries
    (:func:`cama.metrics.rerank.re_ranked_distances`); seconds to minutes on a CPU (``bench/rerank.py``).

    Call ``update`` per batch and ``compute`` once per epoch: ``forward`` would rank each batch
    alone, which usually has no valid query (``compute`` raises ``ValueError`` then).
    """

    embeddings: list[Tensor]
    pids: list[Tensor]
    camids: list[Tensor]
    is_query: list[Tensor]
    indices: list[Tensor]

    def __init__(
        self,
        max_rank: int = 50,
        ranks: Sequence[int] = (1, 5, 10),
        prefix_dims: Sequence[int] | None = None,
        distance: str = "euclidean",
        chunk_bytes: int = CHUNK_BYTES,
        chunk_size: int | None = None,
        rerank: bool = False,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_rank < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        ranks = tuple(int(k) for k in ranks)
        if any(k < 1 or k > max_rank for k in ranks):
            raise ValueError(f"ranks must lie in [1, max_rank={max_rank}], got {ranks}")
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
        if prefix_dims is not None:
            prefix_dims = [int(p) for p in prefix_dims]
            if any(p < 1 for p in prefix_dims) or any(b <= a for a, b in zip(prefix_dims, prefix_dims[1:])):
                raise ValueError(f"prefix_dims must be increasing positive ints, got {prefix_dims}")
        self.max_rank = int(max_rank)
        self.ranks = ranks
        self.prefix_dims = prefix_dims
        self.distance = distance
        self.chunk_bytes = int(chunk_bytes)
        self.chunk_size = chunk_size  # queries per distance chunk; None = from chunk_bytes
        self.rerank_options = RerankOptions.of(rerank, k1, k2, lambda_value)
        self._add_cat_states("embeddings", "pids", "camids", "is_query", "indices")

    @property
    def rerank(self) -> bool:
        """Whether the metric also ranks by k-reciprocal re-ranked distances."""
        return self.rerank_options is not None

    def update(
        self, embeddings: Tensor, pids: Tensor, camids: Tensor, is_query: Tensor, indices: Tensor
    ) -> None:
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be [B, D], got shape {tuple(embeddings.shape)}")
        n = embeddings.shape[0]
        for name, t in (("pids", pids), ("camids", camids), ("is_query", is_query), ("indices", indices)):
            if t.dim() != 1 or t.numel() != n:
                raise ValueError(f"{name} must be [B] with B={n}, got shape {tuple(t.shape)}")
        # at least float32; float64 stays float64 (finite values beyond the float32 range are
        # scaled, not cast to inf, when the distances are computed)
        self.embeddings.append(at_least_float32(embeddings.detach()))
        self.pids.append(pids.detach().long())
        self.camids.append(camids.detach().long())
        self.is_query.append(is_query.detach().long())  # long: all_gather of bool is not portable
        self.indices.append(indices.detach().long())

    @property
    def result_names(self) -> tuple[str, ...]:
        """The keys of ``compute()``."""
        names = ["mAP", "mINP", *(f"rank{k}" for k in self.ranks)]
        names += [_branch_key(i) for i in range(1, len(self.prefix_dims or ()) + 1)]
        if self.rerank_options is not None:
            names += ["mAP_rerank", "mINP_rerank", *(f"rank{k}_rerank" for k in self.ranks)]
        return tuple(names)

    def _gathered(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        collected = self._collected()
        if collected is None:
            raise ValueError("ReIDRankMetric.compute() called before any update()")
        emb, pids, cams, isq, idx = collected
        # query and gallery may number their samples independently (two dataloaders)
        first = first_per_index(idx, isq)
        return emb[first], pids[first], cams[first], isq[first].bool(), idx[first]

    def embedding_set(self) -> EmbeddingSet:
        """This epoch's embeddings of every process, one per (query or gallery, dataset index).

        A collective when distributed (the states are gathered): call it on every process.
        """
        return self._once_per_epoch(self._synced_embedding_set)

    def _synced_embedding_set(self) -> EmbeddingSet:
        with self.sync_context(should_sync=True, should_unsync=True):
            if self._collected() is None:
                empty = torch.zeros(0, dtype=torch.long, device=self.device)
                return EmbeddingSet(torch.zeros(0, 0, device=self.device), empty, empty, empty,
                                    empty.bool(), self.distance)
            emb, pids, cams, isq, idx = self._gathered()
        return EmbeddingSet(emb, pids, idx, cams, isq, self.distance)

    def _rank_rows(self, rows: CatRows, qpos: Tensor, gpos: Tensor, labels: tuple[Tensor, ...],
                   dim: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`_evaluate` of the collected rows ``qpos`` (queries) against the rows ``gpos`` (the
        gallery, junk dropped) on their first ``dim`` features (None: all), as
        :func:`pairwise_distance` gives them: the overflow-safe scale of the queries and the gallery,
        then the gallery prepared once (:func:`prepare_rows`, :func:`squared_norms`) and each chunk's
        queries taken from ``rows`` and prepared alone (:func:`prepared_distance`)."""
        cut = (lambda x: x) if dim is None else (lambda x: x[:, :dim])
        row_max = rows.map_rows(lambda piece: max_abs(cut(piece), dim=1))
        both = torch.cat([row_max[qpos], row_max[gpos]])
        largest = both.amax() if both.numel() else both.new_zeros(())
        width = rows.shape[1] if dim is None else dim
        scale = scale_for(largest, width, torch.promote_types(torch.float32, rows.dtype))
        gallery = prepare_rows(cut(rows.take(gpos)), scale, self.distance)
        g_sq = None
        if self.distance == "euclidean":
            g_sq = squared_norms(gallery, self.chunk_bytes // max(1, 4 * width))

        def block(chunk: Tensor) -> Tensor:
            queries = prepare_rows(cut(rows.take(qpos[chunk])), scale, self.distance)
            return prepared_distance(queries, gallery, self.distance, y_sq=g_sq)

        bytes_per_row = gallery.shape[0] * (4 + 9)
        return _evaluate(block, *labels, self.max_rank, bytes_per_row, self.chunk_size, self.chunk_bytes,
                         gallery.device)

    def _rerank_features(self, qf: Tensor, gf: Tensor, qp: Tensor, gp: Tensor, qc: Tensor, gc: Tensor):
        dist = self.rerank_options.distances(qf, gf, self.distance, self.chunk_bytes)
        return evaluate_rank(dist, qp, gp, qc, gc, self.max_rank, return_minp=True,
                             chunk_size=self.chunk_size, chunk_bytes=self.chunk_bytes)

    def compute(self) -> dict[str, Tensor]:
        rows = self._collected_rows("embeddings")
        if rows is None:
            raise ValueError("ReIDRankMetric.compute() called before any update()")
        pids, cams, isq, idx = self._collected("pids", "camids", "is_query", "indices")
        first = first_per_index(idx, isq)  # one sample per (query or gallery, index), by index
        q = isq[first].bool()
        qpos, gpos = first[q], first[~q]  # positions in the collected rows
        if not qpos.numel() or not gpos.numel():
            raise ValueError(
                f"ReIDRankMetric needs query and gallery samples, got {qpos.numel()} queries and "
                f"{gpos.numel()} gallery samples (is_query flags wrong?)"
            )
        gpos = gpos[~is_junk(pids[gpos])]  # junk gallery samples are never ranked
        labels = (pids[qpos], pids[gpos], cams[qpos], cams[gpos])
        cmc, m_ap, m_inp = self._rank_rows(rows, qpos, gpos, labels)
        out: dict[str, Tensor] = {"mAP": m_ap.float(), "mINP": m_inp.float()}
        for k in self.ranks:
            out[f"rank{k}"] = cmc[k - 1].to(m_ap.device)
        if self.prefix_dims is not None:
            dim = rows.shape[1]
            for i, d in enumerate(self.prefix_dims, start=1):
                if d > dim:
                    raise ValueError(f"prefix_dims entry {d} exceeds the embedding dimension {dim}")
                if d == dim:
                    out[_branch_key(i)] = out["mAP"].clone()
                else:
                    out[_branch_key(i)] = self._rank_rows(rows, qpos, gpos, labels, d)[1].float()
        if self.rerank_options is not None:
            cmc, m_ap, m_inp = self._rerank_features(rows.take(qpos), rows.take(gpos), *labels)
            dev = out["mAP"].device
            out["mAP_rerank"] = torch.tensor(m_ap, dtype=torch.float32, device=dev)
            out["mINP_rerank"] = torch.tensor(m_inp, dtype=torch.float32, device=dev)
            for k in self.ranks:
                out[f"rank{k}_rerank"] = cmc[k - 1].to(dev)
        return out
