"""The contracts between models, tasks and the explanation code: one module, read it first.

Every model that can be explained is an :class:`EmbeddingModel`. What else it can do is said by
the optional capabilities below, checked with ``isinstance`` on these runtime-checkable protocols
(never by model class, never by a private attribute):

========================  =======================================  ==============================
protocol                  what the model offers                    who uses it
========================  =======================================  ==============================
:class:`EmbeddingModel`   ``feature_maps``, ``embed_maps``         every map, every callback
:class:`HasClassifier`    ``classifier_weights()`` (CAM weights)   CAM (dist-cam Eq. 3)
:class:`HasProjection`    ``embedding_projection()`` (FC ``W``)    FAM Eq. 16-18
:class:`HasBranchLayers`  ``explanation_layers()`` per branch      the gradient CAMs' default layers
:class:`HasTokenLayers`   ``token_grid(size)``: tokens -> maps      the gradient CAMs of a transformer
:class:`HasOverlapPenalty` ``overlap_topk()`` (OAP's k, Eq. 5)     the branch-overlap score
:class:`HasRandomizationBlocks` ``randomization_blocks()``         the sanity checks (Adebayo et al.)
:class:`RankingTask`      ``evaluation_embeddings()``,             re-ID / retrieval callbacks
                          ``reference_provider(dataset)``
:class:`EpisodeTask`      ``episode_references(batch, maps)``,     few-shot callbacks
                          ``logits(queries, prototypes)``
========================  =======================================  ==============================

The evaluation steps hand their work to the callbacks through Lightning's hook ``outputs``: a
``validation_step`` returns an :data:`EvaluationOutputs` mapping (the feature maps it computed, so
no callback forwards the same images again), never by patching a model method.

The data side: a data module that can show its images offers :class:`ShowsImages`
(``denormalize``); its ``eval_dataset`` is the evaluation set the reference providers read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypedDict, runtime_checkable

from torch import Tensor, nn

__all__ = [
    "EmbeddingModel",
    "HasClassifier",
    "HasProjection",
    "HasBranchLayers",
    "HasTokenLayers",
    "HasOverlapPenalty",
    "HasRandomizationBlocks",
    "ReferenceProvider",
    "RankingTask",
    "EpisodeTask",
    "HasHeadlineMetrics",
    "EvaluationOutputs",
    "ShowsImages",
]


@runtime_checkable
class EmbeddingModel(Protocol):
    """A model whose embedding is pooled from feature maps.

    ``docs/architecture.md#the-contracts-camaprotocolspy`` lists this protocol and the optional ones.
    """

    def feature_maps(self, images: Tensor) -> list[Tensor]:
        """One ``[B, K_i, h, w]`` per branch: the maps pooled into the embedding."""
        ...

    def embed_maps(self, maps: list[Tensor]) -> Tensor:
        """``[B, D]``: the embedding that ranks or classifies, from :meth:`feature_maps`'s output."""
        ...


@runtime_checkable
class HasClassifier(Protocol):
    """A model with a softmax classifier on its pooled features: the CAM weights of each branch."""

    def classifier_weights(self) -> list[Tensor]:
        """``[C, K_i]`` per branch."""
        ...


@runtime_checkable
class HasProjection(Protocol):
    """A single-branch model whose embedding is a projection ``e = W g`` of its pooled features."""

    def embedding_projection(self) -> Tensor | None:
        """``W`` ``[D, K]``, or None when the embedding is the pooled feature itself."""
        ...


@runtime_checkable
class HasBranchLayers(Protocol):
    """A model that names the layers its gradient explanations use by default, per branch."""

    def explanation_layers(self) -> list[list[str]]:
        """Submodule names (``model.get_submodule``) per branch, e.g. ``[["backbone.branches.0"], ...]``."""
        ...


@runtime_checkable
class HasTokenLayers(Protocol):
    """A model whose gradient layers may output tokens ``[B, N, K]`` (a vision transformer)."""

    def token_grid(self, size: tuple[int, int]) -> Callable[[Tensor], Tensor] | None:
        """For images of ``size`` ``(H, W)``: the ``reshape`` of :func:`cama.explain.gradient_cam` that
        turns the layers' tokens into ``[B, K, h, w]`` maps, or None when the layers output maps."""
        ...


@runtime_checkable
class HasOverlapPenalty(Protocol):
    """A multi-branch model trained to keep its branches apart (cama-ram's OAP, Eq. 5-6)."""

    def overlap_topk(self) -> float | int:
        """The penalty's k (a fraction of the feature grid, or a count): the top-k masks it compares."""
        ...


@runtime_checkable
class HasRandomizationBlocks(Protocol):
    """A model that lists its blocks for the cascading randomization of Adebayo et al. 2018
    ("Sanity Checks for Saliency Maps", Sec. 3; :mod:`cama.explain.sanity`)."""

    def randomization_blocks(self) -> list[tuple[str, nn.Module]]:
        """``(name, block)`` pairs, top (output) first, covering every layer that computes the
        feature maps and the embedding (e.g. ``[("head", ...), ("conv5", ...), ..., ("conv1", ...)]``)."""
        ...


@runtime_checkable
class ReferenceProvider(Protocol):
    """A task's answer to "what is this probe explained against?" (:mod:`cama.references`)."""

    def probe_candidates(self) -> Tensor:
        """Dataset indices that can be probes (ascending): they have a true match to find."""
        ...

    def rank(
        self, gallery: Any, embeddings: Tensor, probes: Tensor, k: int, distances: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(references [P, k], matches [P, k])``: dataset indices (-1: none) and true-match flags."""
        ...


@runtime_checkable
class RankingTask(Protocol):
    """A model that ranks an evaluation set (re-ID, retrieval)."""

    def evaluation_embeddings(self) -> Any:
        """This validation epoch's :class:`cama.metrics.ranking.EmbeddingSet` (a collective)."""
        ...

    def reference_provider(self, dataset: Any) -> ReferenceProvider:
        """The task's reference provider over ``dataset`` (the evaluation set)."""
        ...


@runtime_checkable
class EpisodeTask(Protocol):
    """A model that classifies the queries of few-shot episodes against class prototypes."""

    def episode_references(self, batch: dict[str, Tensor], maps: list[Tensor]) -> Any:
        """:class:`cama.references.EpisodeReferences` of the batch's queries."""
        ...

    def logits(self, queries: Tensor, prototypes: Tensor) -> Tensor:
        """``[Q, N]`` class scores of query embeddings against prototypes (the softmax of AD/IC)."""
        ...


@runtime_checkable
class HasHeadlineMetrics(Protocol):
    """A model that names the few validation metrics a researcher looks at first."""

    def headline_metrics(self) -> list[str]:
        """Their logged names (e.g. ``["Val/mAP", "Val/rank1", "Val/mINP"]``)."""
        ...


class EvaluationOutputs(TypedDict, total=False):
    """What an explained model's ``validation_step`` returns (Lightning passes it to the callbacks'
    ``on_validation_batch_end`` as ``outputs``)."""

    feature_maps: list[Tensor]  # the batch's maps, one [B, K_i, h, w] per branch (detached)
    # with feature_maps of part of the batch only (a model that embeds each evaluation image once per
    # epoch forwards the images it has not seen yet): the ``index`` of each of their rows. Absent:
    # feature_maps holds every row of the batch, in order.
    map_index: Tensor


@runtime_checkable
class ShowsImages(Protocol):
    """A data module that can turn its network inputs back into pictures (and mask them, fam Eq. 21)."""

    mean: Sequence[float]  # the per-channel normalisation of the inputs: (x - mean) / std
    std: Sequence[float]

    def denormalize(self, images: Tensor, as_uint8: bool = False) -> Tensor:
        """Undo the input normalisation: ``[0, 1]`` floats, or ``uint8`` with ``as_uint8``."""
        ...
