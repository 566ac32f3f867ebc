"""The scores the layer CAMs explain (:func:`cama.explain.gradient_cam`'s ``score_fn``):
a classifier's logit of a class (ltgrad-cam Eq. 1) or a metric model's similarity to a reference
(cama-ram Eq. 9, fam Eq. 14).

Both are :class:`RowScore`: besides scoring a batch, ``rows(index)`` gives the score of a batch
whose row ``r`` is a version of sample ``index[r]`` -- Score-CAM's masked images and Ablation-CAM's
ablated forwards, flattened over (image, channel), are scored against each image's own class or
reference that way. The reference embedding stays the one given: it is never recomputed from the
masked images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LogitScore", "RowScore", "SimilarityScore", "logit_score", "similarity_score"]


def _normal_tensor(tensor: Tensor) -> Tensor:
    """A tensor autograd can save: inference tensors are cloned (we are outside inference mode here)."""
    return tensor.clone() if tensor.is_inference() else tensor


@runtime_checkable
class RowScore(Protocol):
    """A score per sample that can be taken for other rows: what Score-CAM and Ablation-CAM need."""

    def __call__(self, output: Any) -> Tensor:
        """The model's output for the batch -> one score per sample ``[B]``."""
        ...

    def rows(self, index: Tensor) -> "RowScore":
        """The score of a batch whose row ``r`` is a version of sample ``index[r]`` (``[N]``, long)."""
        ...


@dataclass(frozen=True)
class LogitScore:
    """The logit ``y^c`` of each sample's class ``classes`` ``[B]`` (:func:`logit_score`)."""

    classes: Tensor

    def __call__(self, logits: Tensor) -> Tensor:
        index = _normal_tensor(self.classes).to(logits.device)
        return logits.gather(1, index.view(-1, 1)).squeeze(1)

    def rows(self, index: Tensor) -> LogitScore:
        return LogitScore(self.classes[index.to(self.classes.device)])


@dataclass(frozen=True)
class SimilarityScore:
    """The similarity of each embedding to its reference ``[B, D]`` (:func:`similarity_score`)."""

    reference: Tensor
    metric: Literal["cosine", "dot", "euclidean"] = "cosine"
    embed: Callable[[Any], Tensor] | None = None

    def __call__(self, output: Any) -> Tensor:
        embedding = self.embed(output) if self.embed is not None else output
        target = _normal_tensor(self.reference).to(device=embedding.device, dtype=embedding.dtype)
        if self.metric == "cosine":
            return F.cosine_similarity(embedding, target, dim=-1)
        if self.metric == "dot":
            return (embedding * target).sum(dim=-1)
        if self.metric == "euclidean":
            return -(embedding - target).norm(dim=-1)
        raise ValueError(f"metric must be 'cosine', 'dot' or 'euclidean', got {self.metric!r}")

    def rows(self, index: Tensor) -> SimilarityScore:
        if self.reference.shape[0] == 1:  # one reference for every sample
            return self
        return SimilarityScore(self.reference[index.to(self.reference.device)], self.metric, self.embed)


def logit_score(classes: Tensor | Sequence[int]) -> LogitScore:
    """``score_fn`` for a classifier: the logit ``y^c`` (ltgrad-cam Eq. 1) of each sample's class.

    Args:
        classes: class index per sample ``[B]``.
    """
    return LogitScore(torch.as_tensor(classes, dtype=torch.long))


def similarity_score(
    reference: Tensor,
    metric: Literal["cosine", "dot", "euclidean"] = "cosine",
    embed: Callable[[Any], Tensor] | None = None,
) -> SimilarityScore:
    """``score_fn`` for a metric model: the similarity of each embedding to a reference embedding.

    ``cosine`` (cama-ram Eq. 9, fam Eq. 14), ``dot`` (inner product) or ``euclidean``
    (``-||e - r||``, larger = more similar).

    Args:
        reference: reference embeddings ``[B, D]`` (gallery image, class prototype, ...). It may
            be an inference tensor (it is cloned when the score is computed).
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        embed: optional function from the model's output to the ``[B, D]`` embedding.
    """
    return SimilarityScore(reference, metric, embed)
