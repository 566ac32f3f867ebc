"""Contrastive ranking maps: why a false match outranked the true match.

A probe ``q`` whose first false match ``g-`` is ranked before its first true match ``g+`` lost
because ``s(q, g-) > s(q, g+)``. The contrastive map is the map of the score difference
``ds = s(q, g-) - s(q, g+)`` on each of the three images: on the probe, which of its positions
resemble ``g-`` more than ``g+``; on ``g-``, what raised ``s(q, g-)``; on ``g+``, what its
positions add to ``-s(q, g+)`` (``ds`` does not depend on ``g+``'s pixels through ``g-``, and the
other way round). No paper draws it for a ranking; our reading of the idea of contrastive
explanations for the papers' maps (``docs/explanations.md#contrastive-ranking-maps``):

* RAM (cama-ram Eq. 10) is linear in its target embedding, so the RAM of a difference of two
  similarities is exactly the difference of two RAMs (:func:`contrastive_ram`), and its pixels sum
  to ``h w`` times the difference of the similarities (Eq. 9-10);
* the gradient CAMs differentiate a score: :func:`contrast_score` is ``ds`` itself, the difference
  of two :func:`~cama.explain.similarity_score` s, so ``gradient_cam(..., contrast_score(g-, g+))``
  is the map of ``ds`` for every method, linear in the gradient or not;
* Dist-CAM and FAM are not linear in their reference: their contrastive map is the difference of
  the two maps (:class:`cama.viz.ModelExplainer` with a :class:`cama.viz.targets.Contrast`).

:func:`contrastive_ranks` finds the probes to draw in ranked lists' match flags, and
:func:`signed_display` brings a row of signed maps to ``[0, 1]`` on one scale, ``0.5`` meaning 0.

The same maps explain a misclassified few-shot query (:mod:`cama.viz.episode_contrast`): with the
prototypes ``p_c-`` of the predicted and ``p_c+`` of the true class as ``g-`` and ``g+``, the map on
the query of ``s(q, p_c-) - s(q, p_c+)``, why class ``c-`` beat the true class.

Pure, batched tensor functions; computed in float32 (float64 stays float64) like the other maps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import check_maps, full_precision
from .gradient_scores import SimilarityScore, similarity_score
from .maps import ram
from .render import Size, _as_size

__all__ = ["ContrastScore", "contrast_score", "contrastive_ram", "contrastive_ranks", "signed_display"]

METRICS = ("cosine", "dot", "euclidean")


def contrastive_ranks(matches: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Which probes a false match outranks, and where: from ranked lists' match flags.

    Args:
        matches: ``[P, k]`` bool, whether each listed image (in rank order) is a true match.
        valid: ``[P, k]`` bool, which entries are listed images (False past the end of a short
            list); default all.

    Returns:
        ``(chosen, negative, positive)``, each ``[P]``: ``chosen`` is True where the first false
        match comes before the first true match and a true match is in the list; ``negative`` and
        ``positive`` are the 0-based positions of the first false and the first true match (``k``
        where there is none).

    >>> contrastive_ranks(torch.tensor([[False, True], [True, False], [False, False]]))
    (tensor([ True, False, False]), tensor([0, 1, 0]), tensor([1, 0, 2]))
    """
    if matches.ndim != 2:
        raise ValueError(f"matches must be [P, k], got shape {tuple(matches.shape)}")
    matches = matches.bool()
    valid = torch.ones_like(matches) if valid is None else valid.to(matches.device).bool()
    if valid.shape != matches.shape:
        raise ValueError(f"valid {tuple(valid.shape)} must have the shape of matches {tuple(matches.shape)}")
    count, length = matches.shape
    if length == 0:
        none = torch.zeros(count, dtype=torch.long, device=matches.device)
        return none.bool(), none, none
    positions = torch.arange(length, device=matches.device).expand(count, -1)
    past = torch.full_like(positions, length)
    positive = torch.where(matches & valid, positions, past).amin(dim=1)
    negative = torch.where(~matches & valid, positions, past).amin(dim=1)
    return (negative < positive) & (positive < length), negative, positive


def contrastive_ram(
    maps: Tensor, negative: Tensor | None = None, positive: Tensor | None = None, eps: float = 1e-12
) -> Tensor:
    """The RAM of ``s(x, negative) - s(x, positive)`` on the image whose feature maps are ``F``.

    cama-ram Eq. 10 is linear in its target ``t``, ``R(x, y) = <t, F(x, y)> / ||f||`` with
    ``f = GAP(F)`` (:func:`cama.explain.ram`), so the map of the difference is the difference of
    the maps::

        C(x, y) = <t- - t+, F(x, y)> / ||f|| = ram(t-, F) - ram(t+, F)
        sum_{x,y} C(x, y) = h w (<t-, f> - <t+, f>) / ||f||

    With L2-normalised targets the sum is ``h w (cos(f, t-) - cos(f, t+))``: ``h w`` times the
    difference of the cosine similarities (Eq. 9) the ranking compares. The three maps of a
    contrastive ranking picture (module docstring), ``f_q, f_g-, f_g+`` the embeddings:

    * on the probe: ``contrastive_ram(F_q, f_g-, f_g+)`` (the probe's RAM against ``g-`` minus its
      RAM against ``g+``);
    * on the false match: ``contrastive_ram(F_g-, f_q)`` = ``ram(f_q, F_g-)``, ``R_g-^q``;
    * on the true match: ``contrastive_ram(F_g+, None, f_q)`` = ``-R_g+^q``.

    With unit-norm embeddings that are the GAP of their maps (CAMA's test feature per branch), the
    probe's map and the two gallery maps together each sum to ``h w (s(q, g-) - s(q, g+))``.

    Args:
        maps: ``F`` ``[B, K, h, w]``.
        negative, positive: ``t-``, ``t+`` ``[B, K]`` (either may be None: no term, not both).
        eps: lower bound on ``||f||`` (:func:`cama.explain.ram`).

    Returns:
        The raw, signed map ``[B, h, w]``, float32 (float64 for float64 maps).
    """
    check_maps(maps)
    if negative is None and positive is None:
        raise ValueError("contrastive_ram needs a negative or a positive target embedding, got neither")
    for name, target in (("negative", negative), ("positive", positive)):
        if target is not None and target.shape != maps.shape[:2]:
            raise ValueError(
                f"{name} {tuple(target.shape)} does not match maps {tuple(maps.shape)} (need [B, K])"
            )
    with full_precision(maps, negative, positive) as (maps, negative, positive):
        target = negative if positive is None else (-positive if negative is None else negative - positive)
        return ram(target, maps, eps=eps)


def contrast_score(
    negative: Tensor | None,
    positive: Tensor | None,
    metric: Literal["cosine", "dot", "euclidean"] = "cosine",
    embed: Callable[[Any], Tensor] | None = None,
) -> ContrastScore:
    """``score_fn`` of :func:`cama.explain.gradient_cam`: ``s(e, negative) - s(e, positive)`` per sample.

    The difference of two :func:`cama.explain.similarity_score` s (cama-ram Eq. 9 for ``cosine``),
    either term left out when its embedding is None, so the gradient is the gradient of the
    difference (for every method, whatever it does with the gradient).

    Args:
        negative, positive: ``[B, D]`` reference embeddings (not both None).
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"`` (:func:`~cama.explain.similarity_score`).
        embed: optional function from the model's output to the ``[B, D]`` embedding.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    if negative is None and positive is None:
        raise ValueError("contrast_score needs a negative or a positive embedding, got neither")
    terms = (None if t is None else similarity_score(t, metric, embed) for t in (negative, positive))
    return ContrastScore(*terms)


@dataclass(frozen=True)
class ContrastScore:
    """``s(e, negative) - s(e, positive)`` per sample (:func:`contrast_score`), either term None when
    left out; a :class:`~cama.explain.gradient_scores.RowScore`, so Score-CAM and Ablation-CAM can
    score their masked / ablated rows against each sample's own pair of references."""

    negative: SimilarityScore | None
    positive: SimilarityScore | None

    def __call__(self, output: Any) -> Tensor:
        if self.negative is None:
            return -self.positive(output)
        if self.positive is None:
            return self.negative(output)
        return self.negative(output) - self.positive(output)

    def rows(self, index: Tensor) -> ContrastScore:
        return ContrastScore(*(None if s is None else s.rows(index) for s in (self.negative, self.positive)))


def signed_display(maps: Tensor, size: Size | None = None, shared: bool = True) -> Tensor:
    """Signed maps ``[..., h, w]`` -> ``[..., H, W]`` in ``[0, 1]`` on one scale, ``0.5`` meaning 0.

    Bilinear upsampling to ``size``, then ``0.5 + 0.5 m / max |m|`` with one maximum over **all**
    the maps given (a contrastive row: its maps are terms of the same difference, so their colours
    compare across the images); ``shared=False``: each ``[h, w]`` map over its own maximum (the
    few-shot contrast rows: one query each). No ReLU, so the negative part shows below ``0.5``.
    All-zero maps give ``0.5``; NaN counts as 0.

    Returns:
        float32 (float64 for float64 maps).
    """
    if maps.ndim < 2:
        raise ValueError(f"maps must be [..., h, w], got shape {tuple(maps.shape)}")
    leading, (height, width) = maps.shape[:-2], maps.shape[-2:]
    out_size = _as_size(size, (height, width))
    with full_precision(maps) as (work,):
        work = torch.nan_to_num(work, nan=0.0).reshape(-1, 1, height, width)
        if out_size != (height, width):
            work = F.interpolate(work, size=out_size, mode="bilinear", align_corners=False)
        scale = work.abs().amax() if shared else work.abs().amax(dim=(1, 2, 3), keepdim=True)
        work = work / torch.where(scale > 0, scale, torch.ones_like(scale))
        return (0.5 + 0.5 * work).clamp_(0.0, 1.0).reshape(*leading, *out_size)
