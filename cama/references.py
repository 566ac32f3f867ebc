"""What each task explains a probe against: its reference.

``docs/explanations.md#the-reference-of-each-task`` says which map uses which reference.

* re-ID (:class:`ReIDReferences`): a probe is a query with a true match in the gallery; its
  reference is its top-ranked gallery image under the Market-1501 protocol (same identity and
  camera, and junk, never ranked).
* retrieval (:class:`RetrievalReferences`): every image of the evaluation set is a probe against all
  the others; its reference is its nearest other image, a true match when it shares the class.
* few-shot (:func:`episode_references`): a query is explained against the prototype of its
  predicted class (dist-cam Eq. 7) and that class's supports.

The re-ID and retrieval providers read only labels from the evaluation set (``num_query``,
``pids``, ``camids``; or ``labels``); the embeddings come from the model's own validation loop
(:class:`cama.metrics.ranking.EmbeddingSet`). Nothing here draws from a global random generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cama.metrics.ranking import EmbeddingSet, is_junk, reid_excluded, top_k

__all__ = [
    "ReIDReferences",
    "RetrievalReferences",
    "EpisodeReferences",
    "episode_references",
    "class_prototypes",
    "choose_probes",
]


def choose_probes(candidates: Tensor, count: int, seed: int) -> list[int]:
    """``count`` of the ``candidates`` in a seeded random order (a private generator).

    ``choose_probes(c, n, s)`` is the prefix of ``choose_probes(c, m, s)`` for ``n <= m``, so a
    smaller set of probes (the pictures) is the start of a larger one (the scored samples).
    """
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(candidates.numel(), generator=generator)
    return candidates[order[: max(0, int(count))]].tolist()


class _GalleryReferences:
    """Shared by the two ranking tasks: the ranking of probes against an :class:`EmbeddingSet`."""

    _candidates: Tensor | None = None

    def probe_candidates(self) -> Tensor:
        """Dataset indices that can be probes (ascending): computed once, the labels do not change
        (a Market-1501-sized set takes ~0.15 s, and the callbacks ask several times an epoch)."""
        if self._candidates is None:
            self._candidates = self._find_candidates()
        return self._candidates

    def _find_candidates(self) -> Tensor:
        raise NotImplementedError

    def excluded(self, probes: Tensor, gallery: EmbeddingSet) -> Tensor:
        raise NotImplementedError

    def rank(
        self, gallery: EmbeddingSet, embeddings: Tensor, probes: Tensor, k: int, distances: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(references, matches)`` ``[P, k]``: the dataset indices of each probe's ``k`` nearest
        rankable gallery images (``-1`` past the end) and whether each is a true match.

        Args:
            gallery: the epoch's embeddings (:meth:`EmbeddingSet.gallery` is taken here).
            embeddings: ``[P, D]`` the probes' embeddings.
            probes: ``[P]`` the probes' dataset indices.
            k: list length.
            distances: optional ``[P, G]`` distances to the gallery rows to rank by instead of the
                embeddings' (e.g. re-ranked ones).
        """
        gallery = gallery.gallery().to(embeddings.device)
        probes = probes.to(embeddings.device).long()
        rows = top_k(embeddings, gallery.embeddings, k, gallery.distance, self.excluded(probes, gallery), distances)
        valid = rows >= 0
        safe = rows.clamp_min(0)
        labels = self.labels.to(embeddings.device)[probes]
        matches = valid & (gallery.labels[safe] == labels[:, None]) if len(gallery) else valid
        references = torch.where(valid, gallery.indices[safe], rows) if len(gallery) else rows
        return references, matches

    def first_true_match(
        self, gallery: EmbeddingSet, embeddings: Tensor, probes: Tensor, distances: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(rank, index)`` ``[P]``: the 0-based rank of each probe's first true match among its rankable
        gallery images (the whole gallery ranked, as :meth:`rank`) and its dataset index; ``-1`` where
        there is none."""
        references, matches = self.rank(gallery, embeddings, probes, len(gallery.gallery()), distances)
        rank = matches.int().argmax(dim=1)
        found = matches.any(dim=1)
        index = references.gather(1, rank[:, None])[:, 0]
        return torch.where(found, rank, -1), torch.where(found, index, -1)


@dataclass
class ReIDReferences(_GalleryReferences):
    """Re-ID: queries ``0 .. num_query - 1`` then the gallery; identity ``pids`` (0 distractor, -1
    junk) and camera ``camids`` of every item."""

    num_query: int
    pids: Tensor
    camids: Tensor

    @classmethod
    def from_dataset(cls, dataset: Any) -> ReIDReferences:
        """From an evaluation set with ``num_query``, ``pids`` and ``camids`` (e.g. the re-ID data
        module's ``eval_dataset``)."""
        return cls(
            int(dataset.num_query),
            torch.as_tensor(list(dataset.pids), dtype=torch.long),
            torch.as_tensor(list(dataset.camids), dtype=torch.long),
        )

    @property
    def labels(self) -> Tensor:
        return self.pids

    def _find_candidates(self) -> Tensor:
        """The queries with at least one true match in the gallery (ascending)."""
        q = self.num_query
        excluded = reid_excluded(self.pids[:q], self.camids[:q], self.pids[q:], self.camids[q:])
        match = (self.pids[:q, None] == self.pids[None, q:]) & ~excluded
        return (match.any(dim=1) & (self.pids[:q] != -1)).nonzero().squeeze(1)

    def excluded(self, probes: Tensor, gallery: EmbeddingSet) -> Tensor:
        pids, camids = self.pids.to(probes.device), self.camids.to(probes.device)
        cameras = gallery.cameras if gallery.cameras is not None else camids[gallery.indices]
        return reid_excluded(pids[probes], camids[probes], gallery.labels, cameras)


@dataclass
class RetrievalReferences(_GalleryReferences):
    """Retrieval: every image of the set, of class ``labels``, is ranked against all the others."""

    labels: Tensor

    @classmethod
    def from_dataset(cls, dataset: Any) -> RetrievalReferences:
        """From an evaluation set with ``labels``."""
        return cls(torch.as_tensor(list(dataset.labels), dtype=torch.long))

    def _find_candidates(self) -> Tensor:
        """The images whose class has at least one other image (ascending); label -1 is junk."""
        labels = self.labels
        if labels.numel() == 0:
            return labels.new_zeros(0)
        shifted = labels - labels.min()
        shared = torch.bincount(shifted)[shifted] > 1  # the class has another image
        return (shared & ~is_junk(labels)).nonzero().squeeze(1)

    def excluded(self, probes: Tensor, gallery: EmbeddingSet) -> Tensor:
        # an image is never its own neighbour; junk (label -1) is never ranked, as in re-ID
        return (probes[:, None] == gallery.indices[None, :]) | is_junk(gallery.labels)[None, :]


def class_prototypes(supports: Tensor, labels: Tensor, n_way: int | None = None) -> Tensor:
    """Prototypes ``[N, D]``: the mean of the support embeddings ``[S, D]`` of each class (dist-cam Eq. 7).

    ``labels`` ``[S]`` are the episode classes ``0..N-1`` of the supports; every class needs a support.
    """
    n_way = int(labels.max()) + 1 if n_way is None else int(n_way)
    # a one-hot matrix product, not index_add_: on CPU the latter costs ~50 ms a call with 2 threads
    one_hot = F.one_hot(labels, n_way).T.to(supports.dtype)  # [N, S]
    counts = one_hot.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError(f"every episode class needs a support; counts per class: {counts.long().tolist()}")
    return (one_hot @ supports) / counts[:, None]


@dataclass
class EpisodeReferences:
    """Every query of an episode batch with what explains it (:func:`episode_references`).

    Attributes:
        query_index: ``[Q]`` positions of the queries in the batch.
        query_maps: ``[Q, K, h, w]`` their feature maps.
        logits: ``[Q, N]``; prediction, target: ``[Q]`` predicted and true episode class.
        prototypes: ``[N, D]`` every class's prototype; prototype: ``[Q, D]`` the predicted one's.
        supports: ``[Q, S, D]`` the embeddings of the predicted class's supports.
        support_index: ``[Q, S]`` their positions in the batch.
        metric: ``"euclidean"`` or ``"cosine"``, how the logits compare.
    """

    query_index: Tensor
    query_maps: Tensor
    logits: Tensor
    prediction: Tensor
    target: Tensor
    prototypes: Tensor
    prototype: Tensor
    supports: Tensor
    support_index: Tensor
    metric: str


def episode_references(
    maps: Tensor,
    embeddings: Tensor,
    episode_labels: Tensor,
    is_query: Tensor,
    logits: Callable[[Tensor, Tensor], Tensor],
    metric: str,
) -> EpisodeReferences:
    """The references of every query of an episode (equal shots per class).

    Args:
        maps: ``[B, K, h, w]`` feature maps of the batch; embeddings: ``[B, D]`` their embeddings.
        episode_labels: ``[B]`` class in the episode; is_query: ``[B]`` bool.
        logits: ``(queries [Q, D], prototypes [N, D]) -> [Q, N]``, the model's classifier.
        metric: how ``logits`` compares (FAM's contribution, fam Eq. 11).
    """
    labels = episode_labels.to(embeddings.device)
    is_query = is_query.to(embeddings.device).bool()
    support_pos = (~is_query).nonzero().squeeze(1)
    query_pos = is_query.nonzero().squeeze(1)
    support_labels = labels[support_pos]
    n_way = int(support_labels.max()) + 1
    order = torch.sort(support_labels, stable=True).indices  # [N, S] positions, stable within a class
    per_class = torch.bincount(support_labels, minlength=n_way)
    if bool((per_class != per_class[0]).any()):
        raise ValueError(f"episode references need the same number of supports per class, got {per_class.tolist()}")
    by_class = support_pos[order].view(n_way, int(per_class[0]))
    prototypes = class_prototypes(embeddings[support_pos], support_labels, n_way)
    scores = logits(embeddings[query_pos], prototypes)
    prediction = scores.argmax(dim=1)
    return EpisodeReferences(
        query_index=query_pos,
        query_maps=maps[query_pos],
        logits=scores,
        prediction=prediction,
        target=labels[query_pos],
        prototypes=prototypes,
        prototype=prototypes[prediction],
        supports=embeddings[by_class[prediction]],
        support_index=by_class[prediction],
        metric=metric,
    )
