"""Explained pictures: the maps of images shown, computed and drawn in one call.

The callbacks and ``explain.py`` show the same two pictures (cama-ram Fig. 4 / Fig. 8): a probe grid
(each probe against its reference and the reference against the probe) and a ranking list (a query
against its top-ranked image, each ranked image against the query). :class:`Shown` bundles what
such a picture needs of its images -- the features the maps come from, the ``uint8`` pictures, the
captions, the boxes -- and :func:`probe_grid_picture` and :func:`ranking_picture` compute the maps
with a :class:`~cama.viz.ModelExplainer` and lay them out with :mod:`cama.viz.pictures`.

A ranking list may end with a contrastive row (``ranking_picture(..., contrastive=True)``): when its
first false match ``g-`` comes before its first true match ``g+``, :func:`contrastive_maps` draws
the summed map of ``s(q, g-) - s(q, g+)`` on the query, ``g-`` and ``g+``
(:mod:`cama.explain.contrastive`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cama.explain import contrastive_ranks, signed_display
from cama.viz.methods import CLASS_METHODS, LAYER_METHODS
from cama.viz.model_explainer import Features, ModelExplainer
from cama.viz.pictures import CONTRAST_LEGEND, CONTRAST_LEGEND_LAYER, ContrastRow, probe_grid, ranking_figure
from cama.viz.targets import Contrast, ProbeAgainst

__all__ = [
    "Shown", "contrast_row", "contrastive_maps", "probe_grid_maps", "probe_grid_picture", "ranking_picture",
    "summed_contrast_map",
]


@dataclass
class Shown:
    """Images as one picture shows them.

    Attributes:
        features: their :class:`~cama.viz.Features` (``B`` rows), the source of their maps.
        pictures: ``uint8`` ``[B, 3, H, W]`` (:func:`cama.viz.to_uint8`).
        labels: the caption under each image (``id 3``, ``class 7``), or None.
        boxes: ``[B, 4]`` ground-truth boxes drawn on the overlays, or None.
    """

    features: Features
    pictures: Tensor
    labels: list[str] | None = None
    boxes: Tensor | None = None

    def __len__(self) -> int:
        return int(self.pictures.shape[0])

    def select(self, rows: Sequence[int]) -> Shown:
        """The images ``rows`` (positions), in that order."""
        rows = list(rows)
        return Shown(
            features=self.features.select(rows),
            pictures=self.pictures[rows],
            labels=[self.labels[r] for r in rows] if self.labels is not None else None,
            boxes=self.boxes[rows] if self.boxes is not None else None,
        )


def probe_grid_maps(
    explainer: ModelExplainer, method: str, probes: Shown, references: Shown
) -> tuple[Tensor, Tensor]:
    """``method``'s maps ``[P, M, H, W]`` of a probe grid: each probe against its reference (row ``i``
    of ``references``; RAM: the probe's own ``R_q^q``), and each reference against its probe."""
    probe_maps = explainer.explain(method, probes.features, ProbeAgainst(references.features.embedding))
    return probe_maps, explainer.explain(method, references.features, probes.features.embedding)


def probe_grid_picture(
    explainer: ModelExplainer,
    method: str,
    probes: Shown,
    references: Shown,
    matches: Tensor | None,
    distances: Tensor | None,
    title: str | None,
    alpha: float = 0.5,
    colormap: str = "jet",
    maps: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """A :func:`~cama.viz.probe_grid` of ``method``'s maps (:func:`probe_grid_maps`).

    Args:
        matches: ``[P]`` bool, whether each reference is a true match (the frames), or None.
        distances: ``[P]`` probe-to-reference distances (captions), or None.
        maps: the :func:`probe_grid_maps` already computed, or None.

    Returns:
        ``uint8`` ``[3, H', W']``.
    """
    if maps is None:
        maps = probe_grid_maps(explainer, method, probes, references)
    probe_maps, reference_maps = maps
    return probe_grid(
        probes.pictures,
        references.pictures,
        probe_maps,
        reference_maps,
        matches,
        alpha,
        colormap,
        probes.boxes,
        references.boxes,
        title=title,
        probe_labels=probes.labels,
        reference_labels=references.labels,
        distances=distances,
    )


def ranking_picture(
    explainer: ModelExplainer,
    method: str,
    query: Shown,
    listed: Shown,
    matches: Tensor | None,
    distances: Tensor | None,
    title: str | None,
    alpha: float = 0.5,
    colormap: str = "jet",
    contrastive: bool = False,
    ranks: Sequence[int] | None = None,
) -> Tensor:
    """A :func:`~cama.viz.ranking_figure` of ``method``'s maps: the query (one row) against its
    top-ranked image (``listed``'s first; RAM: its own ``R_q^q``), each listed image against the query
    (RAM: ``R_g^q``).

    Args:
        query: one image; its caption is ``query.labels[0]`` (none: no caption).
        listed: the ranked images, in rank order.
        matches: ``[k]`` bool true / false matches (frames), or None.
        distances: ``[k]`` query-to-image distances (captions), or None.
        contrastive: add the row *why rank r beat the true match* (:func:`contrast_row`) when the
            first false match comes before the first true match of the list (needs ``matches``; never
            for ``cam``, which explains a class). A caller whose top-k holds no true match may append
            the first true match to ``listed`` (with its rank in ``ranks``).
        ranks: each listed image's rank (1-based), default ``1 .. k`` (:func:`~cama.viz.ranking_figure`).

    Returns:
        ``uint8`` ``[3, H', W']``.
    """
    query_maps = explainer.explain(method, query.features, ProbeAgainst(listed.features.embedding[:1]))[0]
    listed_maps = explainer.explain(method, listed.features, query.features.embedding.expand(len(listed), -1))
    contrast = None
    if contrastive and matches is not None and method not in CLASS_METHODS:
        contrast = contrast_row(explainer, method, query, listed, torch.as_tensor(matches, dtype=torch.bool))
    return ranking_figure(
        query.pictures[0],
        listed.pictures,
        matches,
        query_maps,
        listed_maps,
        alpha,
        colormap,
        title=title,
        query_label=query.labels[0] if query.labels else "",
        gallery_labels=listed.labels,
        distances=distances,
        contrast=contrast,
        ranks=ranks,
    )


def contrastive_maps(
    explainer: ModelExplainer, method: str, query: Features, negative: Features, positive: Features,
    size: Sequence[int] | None = None,
) -> Tensor:
    """The summed maps ``[3, H, W]`` of ``s(q, g-) - s(q, g+)`` on the query, on the false match ``g-``
    and on the true match ``g+`` (one image each), in ``[0, 1]`` on signed scales
    (:func:`cama.explain.signed_display`: ``0.5`` is 0, above favours ``g-``): the query's map on its
    own, the two gallery maps on one scale (they are the two terms of the difference).

    The targets are :class:`~cama.viz.targets.Contrast` s: ``(g-, g+)`` on the query, ``(q, -)`` on
    ``g-``, ``(-, q)`` on ``g+``. The forward-only methods' raw maps are signed (RAM: the map of the
    difference, exact); a gradient method's map is its ``[0, 1]`` map of the difference (ReLU'd by the
    method: never below ``0.5``). ``size``: default the query's image size.
    """
    sides = (
        (query, Contrast(negative.embedding, positive.embedding)),
        (negative, Contrast(query.embedding, None)),
        (positive, Contrast(None, query.embedding)),
    )
    maps = [summed_contrast_map(explainer, method, features, target) for features, target in sides]
    size = tuple(size) if size is not None else tuple(query.images.shape[-2:])
    return torch.cat([signed_display(maps[0], size), signed_display(torch.cat(maps[1:]), size)])


def summed_contrast_map(
    explainer: ModelExplainer, method: str, features: Features, contrast: Contrast
) -> Tensor:
    """``method``'s summed map ``[B, h, w]`` of ``s(x, negative) - s(x, positive)`` on ``features``'
    images: a forward-only method's raw signed map summed over the branches (feature resolution), a
    layer method's ``[0, 1]`` map of the difference at image size (:meth:`ModelExplainer.gradient_maps`)."""
    if method in LAYER_METHODS:
        return explainer.gradient_maps(method, features, contrast, branches=False)[:, 0]
    return explainer.raw_maps(method, features, contrast).sum(dim=1)


def contrast_row(
    explainer: ModelExplainer, method: str, query: Shown, listed: Shown, matches: Tensor
) -> ContrastRow | None:
    """The :class:`~cama.viz.pictures.ContrastRow` of a ranking list (``matches`` ``[k]`` of
    ``listed``), or None when no false match comes before the first true match in the list
    (:func:`cama.explain.contrastive_ranks`)."""
    chosen, negative, positive = (int(v[0]) for v in contrastive_ranks(matches.reshape(1, -1)))
    if not chosen:
        return None
    pair = listed.features.select([negative, positive])
    maps = contrastive_maps(explainer, method, query.features, pair.select([0]), pair.select([1]),
                            tuple(query.pictures.shape[-2:]))
    similarities = F.cosine_similarity(query.features.embedding.float(), pair.embedding.float(), dim=1)
    legend = CONTRAST_LEGEND_LAYER if method in LAYER_METHODS else CONTRAST_LEGEND
    return ContrastRow(maps, negative, positive, (float(similarities[0]), float(similarities[1])), legend)
