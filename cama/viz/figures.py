"""Explained pictures: the maps of images shown, computed and drawn in one call.

The callbacks and ``explain.py`` show the same two pictures (cama-ram Fig. 4 / Fig. 8): a probe grid
(each probe against its reference and the reference against the probe) and a ranking list (a query
against its top-ranked image, each ranked image against the query). :class:`Shown` bundles what
such a picture needs of its images -- the features the maps come from, the ``uint8`` pictures, the
captions, the boxes -- and :func:`probe_grid_picture` and :func:`ranking_picture` compute the maps
with a :class:`~cama.viz.ModelExplainer` and lay them out with :mod:`cama.viz.pictures`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from cama.viz.model_explainer import Features, ModelExplainer
from cama.viz.pictures import probe_grid, ranking_figure
from cama.viz.targets import ProbeAgainst

__all__ = ["Shown", "probe_grid_picture", "ranking_picture"]


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
) -> Tensor:
    """A :func:`~cama.viz.probe_grid` of ``method``'s maps: each probe against its reference (row
    ``i`` of ``references``; RAM: the probe's own ``R_q^q``) and each reference against its probe.

    Args:
        matches: ``[P]`` bool, whether each reference is a true match (the frames), or None.
        distances: ``[P]`` probe-to-reference distances (captions), or None.

    Returns:
        ``uint8`` ``[3, H', W']``.
    """
    probe_maps = explainer.explain(method, probes.features, ProbeAgainst(references.features.embedding))
    reference_maps = explainer.explain(method, references.features, probes.features.embedding)
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
) -> Tensor:
    """A :func:`~cama.viz.ranking_figure` of ``method``'s maps: the query (one row) against its
    top-ranked image (``listed``'s first; RAM: its own ``R_q^q``), each listed image against the query
    (RAM: ``R_g^q``).

    Args:
        query: one image; its caption is ``query.labels[0]`` (none: no caption).
        listed: the ranked images, in rank order.
        matches: ``[k]`` bool true / false matches (frames), or None.
        distances: ``[k]`` query-to-image distances (captions), or None.

    Returns:
        ``uint8`` ``[3, H', W']``.
    """
    query_maps = explainer.explain(method, query.features, ProbeAgainst(listed.features.embedding[:1]))[0]
    listed_maps = explainer.explain(method, listed.features, query.features.embedding.expand(len(listed), -1))
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
    )
