"""Image retrieval metrics: Recall@K and MAP@R over a whole split, by pytorch-metric-learning.

Protocol (``docs/evaluation.md#retrieval``; the MS-loss paper and fam Sec. V-D): every image of the test
split is a query and the *other* test images are its references (query = reference set, the query
itself excluded from its own neighbours: ``AccuracyCalculator.get_accuracy`` with the reference
omitted, i.e. ``ref_includes_query=True``).

* ``recall@K``: the fraction of queries with at least one image of their class among their K
  nearest neighbours; ``recall@1`` is pytorch-metric-learning's ``precision_at_1``;
* ``map@r``: pytorch-metric-learning's ``mean_average_precision_at_r`` (Musgrave et al., "A metric
  learning reality check"): with R the number of other images of the query's class,
  ``(1/R) sum_{i<=R} P@i [neighbour i is of the class]``.

Queries whose class has no other image are left out (pytorch-metric-learning's "lone" queries).
Neighbours are found with faiss when it is installed (``IndexFlatL2``, what ``AccuracyCalculator``
uses by default) and otherwise, or with ``knn="torch"``, with an exact batched torch k-NN on the
same (Euclidean) distance -- pytorch-metric-learning itself does not fall back: its default
``FaissKNN`` fails without faiss. For L2-normalised embeddings the Euclidean and the cosine
rankings are the same.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator, try_getting_not_lone_labels
from pytorch_metric_learning.utils.inference import CustomKNN, FaissKNN, return_results
from torch import Tensor

from cama.explain.precision import at_least_float32
from cama.metrics.distances import overflow_safe_float32
from cama.metrics.ranking import EmbeddingSet, first_per_index
from cama.metrics.rerank import RerankOptions
from cama.metrics.rerank_self import re_ranked_self_neighbours
from cama.metrics.rerank_steps import CHUNK_BYTES
from cama.metrics.states import CollectedSamples

__all__ = [
    "RECALL_KS", "RerankedKNN", "faiss_available", "retrieval_knn", "retrieval_metrics", "RetrievalMetric",
]

RECALL_KS = (1, 2, 4, 8)
KNN_BACKENDS = ("auto", "faiss", "torch")
# queries per block of the torch k-NN: bounds the distance temporaries to block x references floats
_KNN_BLOCK = 1024


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def retrieval_knn(knn: Literal["auto", "faiss", "torch"] = "auto"):
    """The k-NN function for ``AccuracyCalculator``: faiss (``"auto"`` when installed) or exact torch."""
    if knn not in KNN_BACKENDS:
        raise ValueError(f"knn must be one of {KNN_BACKENDS}, got {knn!r}")
    if knn == "faiss" or (knn == "auto" and faiss_available()):
        if not faiss_available():
            raise ImportError(
                "knn='faiss' needs the faiss package (faiss-cpu or faiss-gpu); use knn='torch' or 'auto'"
            )
        return FaissKNN()
    return CustomKNN(LpDistance(normalize_embeddings=False, p=2, power=1), batch_size=_KNN_BLOCK)


class _RecallAccuracyCalculator(AccuracyCalculator):
    """``AccuracyCalculator`` plus ``recall_at_ks``: Recall@K for every K of ``recall_ks``."""

    def __init__(self, recall_ks: Sequence[int], **kwargs: Any) -> None:
        self.recall_ks = tuple(int(k) for k in recall_ks)
        super().__init__(**kwargs)

    def requires_knn(self) -> list[str]:
        return super().requires_knn() + ["recall_at_ks"]

    def calculate_recall_at_ks(self, knn_labels, query_labels, not_lone_query_mask, **kwargs) -> list[float]:
        knn_labels, query_labels = try_getting_not_lone_labels(knn_labels, query_labels, not_lone_query_mask)
        if knn_labels is None:
            return [float("nan")] * len(self.recall_ks)
        hits = knn_labels == query_labels[:, None]  # [Q, k] in neighbour order
        return [hits[:, :k].any(dim=1).double().mean().item() for k in self.recall_ks]


class PrecomputedKNN:
    """A ``knn_func`` for ``AccuracyCalculator`` that reads neighbours off a distance matrix ``[N, N]``
    of the split against itself (e.g. k-reciprocal re-ranked distances), ties in index order."""

    def __init__(self, distances: Tensor) -> None:
        self.distances = distances

    def __call__(self, query: Tensor, k: int, reference: Tensor, ref_includes_query: bool = False):
        distances = self.distances.to(query.device).float().clone()
        if ref_includes_query:  # each query first in its own list; pml drops that first column
            k = k + 1
            distances.fill_diagonal_(float("-inf"))
        values, indices = torch.sort(distances, dim=1, stable=True)
        return return_results(values[:, :k], indices[:, :k], ref_includes_query)


class RerankedKNN:
    """A ``knn_func`` for ``AccuracyCalculator`` on a split against itself (the reference omitted):
    each query's ``k`` nearest other samples by the k-reciprocal re-ranked distances of the split
    against itself (:func:`cama.metrics.rerank_self.re_ranked_self_neighbours`: the first ``k`` of
    each row of ``re_ranking(d, d, d)``, the query's own copy left out, ties in index order), computed
    a few rows at a time: no ``[N, N]`` matrix."""

    def __init__(self, options: RerankOptions, distance: str = "euclidean",
                 chunk_bytes: int = CHUNK_BYTES) -> None:
        self.options = options
        self.distance = distance
        self.chunk_bytes = int(chunk_bytes)

    def __call__(self, query: Tensor, k: int, reference: Tensor, ref_includes_query: bool = False):
        if not ref_includes_query or reference.shape != query.shape:
            raise ValueError("RerankedKNN ranks a set against itself: call get_accuracy without a reference")
        o = self.options
        return re_ranked_self_neighbours(query, k, self.distance, o.k1, o.k2, o.lambda_value,
                                         self.chunk_bytes)


def _same_label(a: Tensor, b: Tensor) -> Tensor:
    """``a == b``. Given to ``AccuracyCalculator`` as a comparison of its own, it makes it count the
    class sizes one class at a time: with its default (``torch.eq``) it compares every class with every
    label at once, a ``[classes, N]`` int64 temporary (5.5 GB for Stanford Online Products' test split)."""
    return a == b


def _check_inputs(embeddings: Tensor, labels: Tensor) -> None:
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {tuple(embeddings.shape)}")
    if labels.dim() != 1 or labels.numel() != embeddings.shape[0]:
        raise ValueError(f"labels must be [N] with N={embeddings.shape[0]}, got shape {tuple(labels.shape)}")
    if labels.is_floating_point():
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if embeddings.shape[0] < 2:
        raise ValueError(
            f"retrieval needs at least 2 samples (a query and a reference), got {embeddings.shape[0]}"
        )
    if not bool(torch.isfinite(embeddings).all()):
        raise ValueError("embeddings contain NaN or infinite values")


def retrieval_metrics(
    embeddings: Tensor,
    labels: Tensor,
    recall_ks: Sequence[int] = RECALL_KS,
    knn: Literal["auto", "faiss", "torch"] = "auto",
    distances: Tensor | None = None,
    rerank: RerankOptions | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict[str, Tensor]:
    """Recall@K and MAP@R of a split against itself, the query excluded (module docstring).

    Args:
        embeddings: ``[N, D]`` float embeddings (ranked by Euclidean distance).
        labels: ``[N]`` integer classes.
        recall_ks: the K of Recall@K (each >= 1).
        knn: ``"auto"`` (faiss when installed, else torch), ``"faiss"`` or ``"torch"``.
        distances: optional ``[N, N]`` distances to rank by instead of the embeddings'.
        rerank: rank by the k-reciprocal re-ranked distances of the split against itself with these
            options instead (:class:`RerankedKNN`; no ``[N, N]`` matrix); excludes ``distances``.
        chunk_bytes: with ``rerank``, the budget of the temporaries of one chunk; it changes no number.

    Returns:
        ``{"recall@K": ..., "map@r": ...}``, 0-d float tensors in [0, 1] (NaN when no query has
        another image of its class) on the embeddings' device.
    """
    _check_inputs(embeddings, labels)
    if distances is not None and rerank is not None:
        raise ValueError("retrieval_metrics: give distances or rerank, not both")
    recall_ks = tuple(int(k) for k in recall_ks)
    if not recall_ks or min(recall_ks) < 1:
        raise ValueError(f"recall_ks must be positive integers, got {recall_ks}")
    # float32, divided by a common power of two if large enough to overflow the squared distances
    # (same ranking; cama.metrics.distances)
    (embeddings,) = overflow_safe_float32(embeddings.detach())
    labels = labels.detach().long()
    n = embeddings.shape[0]
    # enough neighbours for the largest K and for MAP@R (R = the query's class size - 1); asking for
    # the class size itself keeps AccuracyCalculator from warning; None = all N - 1 other samples
    largest_class = int(torch.bincount(labels - labels.min()).max())
    k: int | None = max(max(recall_ks), largest_class)
    if k >= n - 1:
        k = None
    calculator = _RecallAccuracyCalculator(
        recall_ks,
        include=("precision_at_1", "mean_average_precision_at_r", "recall_at_ks"),
        k=k,
        label_comparison_fn=_same_label,
        device=embeddings.device,
        knn_func=(RerankedKNN(rerank, chunk_bytes=chunk_bytes) if rerank is not None
                  else retrieval_knn(knn) if distances is None else PrecomputedKNN(distances)),
    )
    raw = calculator.get_accuracy(embeddings, labels)  # reference omitted: query = reference, self excluded
    out = {f"recall@{kk}": raw["recall_at_ks"][i] for i, kk in enumerate(recall_ks)}
    if 1 in recall_ks:
        out["recall@1"] = raw["precision_at_1"]
    out["map@r"] = raw["mean_average_precision_at_r"]
    device = embeddings.device
    return {key: torch.tensor(float(v), dtype=torch.float32, device=device) for key, v in out.items()}


class RetrievalMetric(CollectedSamples):
    """Recall@K and MAP@R of the embeddings of a whole split (:func:`retrieval_metrics`).

    ``update(embeddings [B, D], labels [B], indices [B])`` collects samples; ``indices`` are the
    samples' dataset indices. ``compute()`` (after torchmetrics has all-gathered the ``"cat"`` states
    of every process) keeps one sample per index, the first, ordered by index, so the samples that
    ``DistributedSampler`` repeats to pad the last batch are dropped and 1 and N processes give the
    same numbers. It returns ``{"recall@1", "recall@2", ..., "map@r"}`` (0-d float tensors), and
    with ``rerank`` the same names with ``_rerank``, ranked by k-reciprocal re-ranked distances
    (:func:`cama.metrics.rerank.re_ranking` with ``k1``, ``k2``, ``lambda_value``; the split is the
    probe and the gallery set at once: ``re_ranking(d, d, d)``), of which each query's nearest
    neighbours are computed a few queries at a time (:class:`RerankedKNN`): no ``[N, N]`` matrix;
    ``chunk_bytes`` bounds the temporaries of one chunk.

    Call ``update`` per batch and ``compute`` once per epoch (``forward`` would rank each batch alone).
    """

    embeddings: list[Tensor]
    labels: list[Tensor]
    indices: list[Tensor]

    def __init__(
        self,
        recall_ks: Sequence[int] = RECALL_KS,
        knn: Literal["auto", "faiss", "torch"] = "auto",
        rerank: bool = False,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        chunk_bytes: int = CHUNK_BYTES,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.rerank_options = RerankOptions.of(rerank, k1, k2, lambda_value)
        self.chunk_bytes = int(chunk_bytes)
        recall_ks = tuple(int(k) for k in recall_ks)
        if not recall_ks or min(recall_ks) < 1:
            raise ValueError(f"recall_ks must be positive integers, got {recall_ks}")
        retrieval_knn(knn)  # fail early on a bad or unavailable backend
        self.recall_ks = recall_ks
        self.knn = knn
        self._add_cat_states("embeddings", "labels", "indices")

    @property
    def rerank(self) -> bool:
        """Whether the metric also ranks by k-reciprocal re-ranked distances."""
        return self.rerank_options is not None

    def update(self, embeddings: Tensor, labels: Tensor, indices: Tensor) -> None:
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be [B, D], got shape {tuple(embeddings.shape)}")
        n = embeddings.shape[0]
        for name, t in (("labels", labels), ("indices", indices)):
            if t.dim() != 1 or t.numel() != n:
                raise ValueError(f"{name} must be [B] with B={n}, got shape {tuple(t.shape)}")
        # at least float32; float64 stays float64 (finite values beyond the float32 range are
        # scaled, not cast to inf, when the distances are computed)
        self.embeddings.append(at_least_float32(embeddings.detach()))
        self.labels.append(labels.detach().long())
        self.indices.append(indices.detach().long())

    @property
    def result_names(self) -> tuple[str, ...]:
        """The keys of ``compute()``."""
        names = (*(f"recall@{k}" for k in self.recall_ks), "map@r")
        return names + tuple(f"{n}_rerank" for n in names) if self.rerank_options is not None else names

    def _gathered(self) -> tuple[Tensor, Tensor, Tensor]:
        collected = self._collected()
        if collected is None:
            raise ValueError("RetrievalMetric.compute() called before any update()")
        emb, labels, idx = collected
        first = first_per_index(idx)  # ordered by index
        return emb[first], labels[first], idx[first]

    def embedding_set(self) -> EmbeddingSet:
        """This epoch's embeddings of every process, one per dataset index (a collective)."""
        return self._once_per_epoch(self._synced_embedding_set)

    def _synced_embedding_set(self) -> EmbeddingSet:
        with self.sync_context(should_sync=True, should_unsync=True):
            if self._collected() is None:
                empty = torch.zeros(0, dtype=torch.long, device=self.device)
                return EmbeddingSet(torch.zeros(0, 0, device=self.device), empty, empty)
            emb, labels, idx = self._gathered()
        return EmbeddingSet(emb, labels, idx, distance="euclidean")

    def compute(self) -> dict[str, Tensor]:
        embeddings, labels, _ = self._gathered()
        out = retrieval_metrics(embeddings, labels, self.recall_ks, self.knn)
        if self.rerank_options is not None:  # every image a query against the others: re_ranking(d, d, d)
            out.update({f"{k}_rerank": v for k, v in retrieval_metrics(
                embeddings, labels, self.recall_ks, self.knn, rerank=self.rerank_options,
                chunk_bytes=self.chunk_bytes).items()})
        return out
