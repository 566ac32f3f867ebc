"""Explanations of whole models, as maps and pictures: used by the callbacks and ``explain.py``.

* :mod:`cama.viz.model_explainer` -- :class:`ModelExplainer`: every method's maps (per branch and summed) of any
  :class:`cama.protocols.EmbeddingModel` against a target (:mod:`cama.viz.targets`: a probe against
  its reference, against an embedding, against its own);
* :mod:`cama.viz.pictures` -- probe grids and ranking lists (cama-ram Fig. 4 / Fig. 8) as ``uint8``,
  laid out by :mod:`cama.viz.layout` (tiles, headers, captions) with the text and colour bar of
  :mod:`cama.viz.labels`;
* :mod:`cama.viz.figures` -- the explained pictures: the maps of images shown (:class:`~cama.viz.figures.Shown`)
  computed and drawn in one call (``probe_grid_picture``, ``ranking_picture``), for the callbacks and
  ``explain.py`` alike;
* :mod:`cama.viz.episodes` -- the few-shot maps and pictures.

No Lightning here: plain modules and tensors in, tensors out.

Explaining three probes of a 2-branch CAMA against their references (the maps of each branch and
their sum, at image size, in ``[0, 1]``; RAM shows each probe's own ``R_q^q``):

>>> import torch
>>> from cama.models import CAMA
>>> from cama.viz import ModelExplainer, ProbeAgainst
>>> explainer = ModelExplainer(CAMA(num_classes=4, backbone="resnet10", width=8, num_branches=2).eval())
>>> probes = explainer.features(torch.rand(3, 3, 64, 32))
>>> references = explainer.features(torch.rand(3, 3, 64, 32))
>>> for method in ("dist_cam", "ram", "fam"):
...     maps = explainer.explain(method, probes, ProbeAgainst(references.embedding))
...     print(method, tuple(maps.shape), 0 <= float(maps.min()) <= float(maps.max()) <= 1)
dist_cam (3, 3, 64, 32) True
ram (3, 3, 64, 32) True
fam (3, 3, 64, 32) True
"""

from cama.viz.model_explainer import (
    FORWARD_METHODS,
    GRADIENT_FREE_METHODS,
    GRADIENT_METHODS,
    LAYER_METHODS,
    METHODS,
    ModelExplainer,
    Features,
    check_methods,
    default_gradient_layers,
)
from cama.viz.targets import Against, Contrast, Own, ProbeAgainst, Target
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
    "Against",
    "Contrast",
    "Own",
    "ProbeAgainst",
    "Target",
    "FORWARD_METHODS",
    "GRADIENT_FREE_METHODS",
    "GRADIENT_METHODS",
    "LAYER_METHODS",
    "METHODS",
    "ModelExplainer",
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
