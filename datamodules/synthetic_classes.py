"""Embedded, procedural object classes with ground truth (box and mask), for few-shot and retrieval.

No data set can be downloaded on the machines this project runs on, so :class:`SyntheticClasses`
draws miniImageNet / CUB-like labelled images on the fly
(``docs/evaluation.md#the-embedded-synthetic-data``):

* a *class* is one combination of a **shape** (:data:`SHAPES`, 10), a **texture** (:data:`TEXTURES`,
  6: solid, stripes, checker, dots, concentric rings, two-tone) and a **colour** (:data:`COLOURS`, 8):
  480 combinations, of which ``num_classes`` (100 by default) are drawn at random from the seed.
  Many classes differ from another one in a single attribute, so no one cue is enough, and the
  unseen (validation / test) classes are *new combinations* of attribute values seen in training:
  a network that learned shape, texture and colour generalises to them;
* every image has one object of its class at a random place, size, aspect ratio and rotation (the
  texture turns with the object), with per-image colour jitter, on clutter: a two-colour background
  with a gradient and a low-frequency wave, and small shapes of random attributes (any colour,
  class colours included) behind the object; light varies (gain, colour cast, an illumination
  gradient) and there is sensor noise;
* per-image ground truth: the object's tight bounding box (``x1, y1, x2, y2`` pixel edges, the
  object is never occluded, so box and mask agree) and its mask.

Splits (:meth:`SyntheticClasses.split_classes`): few-shot ``train`` / ``val`` / ``test`` by class,
64 / 16 / 20 with the default 100 classes (miniImageNet's proportions); retrieval ``train`` /
``test`` = first half / second half of the classes (the CUB-200-2011 convention).

Everything is deterministic per ``(seed, class, index)`` (and the config): scalars are drawn with
:class:`random.Random`, pixels with a few dozen vectorised NumPy operations on the bounding window of
each shape; noise is a window of a per-generator noise bank. About 0.5-1 ms per 84x84 image on one
CPU core. It writes itself to disk in the real layouts (:func:`write_classes_layout`):
CUB-200-2011, miniImageNet CSV and one folder per class under split folders, which is how the real
loaders are tested.

The code lives in :mod:`datamodules.synthetic` (``object_shapes``, ``objects``, ``class_layouts``);
this module keeps the import path ``datamodules.synthetic_classes``.
"""

from .synthetic import class_layouts, object_shapes, objects
from .synthetic.class_layouts import *  # noqa: F401,F403 - the names of __all__
from .synthetic.object_shapes import *  # noqa: F401,F403
from .synthetic.objects import *  # noqa: F401,F403

__all__ = [*object_shapes.__all__, *objects.__all__, *class_layouts.__all__]
