"""The scores the gradient CAMs differentiate (:func:`cama.explain.gradient_cam`'s ``score_fn``):
a classifier's logit of a class (ltgrad-cam Eq. 1) or a metric model's similarity to a reference
(cama-ram Eq. 9, fam Eq. 14)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["logit_score", "similarity_score"]


def _normal_tensor(tensor: Tensor) -> Tensor:
    """A tensor autograd can save: inference tensors are cloned (we are outside inference mode here)."""
    return tensor.clone() if tensor.is_inference() else tensor


def logit_score(classes: Tensor | Sequence[int]) -> Callable[[Tensor], Tensor]:
    """``score_fn`` for a classifier: the logit ``y^c`` (ltgrad-cam Eq. 1) of each sample's class.

    Args:
        classes: class index per sample ``[B]``.
    """
    classes_t = torch.as_tensor(classes, dtype=torch.long)

    def score(logits: Tensor) -> Tensor:
        index = _normal_tensor(classes_t).to(logits.device)
        return logits.gather(1, index.view(-1, 1)).squeeze(1)

    return score


def similarity_score(
    reference: Tensor,
    metric: Literal["cosine", "dot", "euclidean"] = "cosine",
    embed: Callable[[Any], Tensor] | None = None,
) -> Callable[[Any], Tensor]:
    """``score_fn`` for a metric model: the similarity of each embedding to a reference embedding.

    ``cosine`` (cama-ram Eq. 9, fam Eq. 14), ``dot`` (inner product) or ``euclidean``
    (``-||e - r||``, larger = more similar).

    Args:
        reference: reference embeddings ``[B, D]`` (gallery image, class prototype, ...). It may
            be an inference tensor (it is cloned when the score is computed).
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        embed: optional function from the model's output to the ``[B, D]`` embedding.
    """

    def score(output: Any) -> Tensor:
        embedding = embed(output) if embed is not None else output
        target = _normal_tensor(reference).to(device=embedding.device, dtype=embedding.dtype)
        if metric == "cosine":
            return F.cosine_similarity(embedding, target, dim=-1)
        if metric == "dot":
            return (embedding * target).sum(dim=-1)
        if metric == "euclidean":
            return -(embedding - target).norm(dim=-1)
        raise ValueError(f"metric must be 'cosine', 'dot' or 'euclidean', got {metric!r}")

    return score
