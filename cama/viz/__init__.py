"""Explanations of whole models, as maps and pictures: used by the callbacks and ``explain.py``.

* :mod:`cama.viz.explainer` -- :class:`Explainer`: every method's maps (per branch and summed) of any
  :class:`cama.protocols.EmbeddingModel` against a target embedding.
* :mod:`cama.viz.pictures` -- probe grids and ranking lists (cama-ram Fig. 4 / Fig. 8) as ``uint8``,
  laid out by :mod:`cama.viz.layout` (tiles, headers, captions) with the text and colour bar of
  :mod:`cama.viz.labels`;
* :mod:`cama.viz.episodes` -- the few-shot maps and pictures.

No Lightning here: plain modules and tensors in, tensors out.
"""

from cama.viz.explainer import (
    FORWARD_METHODS,
    GRADIENT_METHODS,
    METHODS,
    Explainer,
    Features,
    check_methods,
    default_gradient_layers,
)
from cama.viz.pictures import (
    GREEN,
    RED,
    frame,
    heat_overlays,
    map_labels,
    picture_title,
    probe_grid,
    probe_grid_legend,
    ranking_figure,
    ranking_legend,
    to_uint8,
)

__all__ = [
    "FORWARD_METHODS",
    "GRADIENT_METHODS",
    "METHODS",
    "Explainer",
    "Features",
    "check_methods",
    "default_gradient_layers",
    "GREEN",
    "RED",
    "frame",
    "heat_overlays",
    "map_labels",
    "picture_title",
    "probe_grid",
    "probe_grid_legend",
    "ranking_figure",
    "ranking_legend",
    "to_uint8",
]
