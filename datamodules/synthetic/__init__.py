"""Embedded, procedural person re-ID data with ground truth (person box and part masks).

No data set can be downloaded on the machines this project runs on, so :class:`SyntheticReID`
draws Market-1501-like pedestrian crops on the fly:

* a person is built from five parts, ``PART_NAMES = ("head", "upper", "lower", "shoes",
  "accessory")``; an *identity* is one attribute tuple per part (skin/hair colour/hair style;
  top colour/pattern/second colour/sleeves; trouser colour/style; shoe colour; accessory
  kind/colour);
* identities come in *families*: a base attribute set plus siblings that each change exactly one
  part, so most identities have a look-alike that differs in a single part and one cue is not
  enough to tell them apart;
* each camera has its own light (gain), colour cast, background style and colours, front/back view
  bias and noise level (the last of 6 cameras is low resolution, like Market's camera 6);
* every image has pose jitter (position, scale, width, stance, arm swing, lean), per-part colour
  jitter, background clutter, sensor noise and, with some probability, an occluding block;
* train and test identities are disjoint; the test side is split into a query set (one image per
  identity and camera, for ``query_cameras`` cameras) and a gallery with several images per
  identity in all its cameras, plus distractors (pid 0: background clutter or a tiny figure) and
  junk (pid -1: a heavily cut person).

Everything is deterministic per ``(seed, split, index)`` and drawn with a few dozen vectorised
array operations (NumPy, whose per-call overhead is lower than torch's on arrays this small):
the ellipse and trapezoid inequalities are evaluated on the coordinate grid of every shape at
once, stripes are parities of floor functions of the coordinates. About 1 ms (1000+ images/s)
per 128x64 image on one CPU core; images come out as uint8 torch tensors. :func:`write_reid_layout` writes the
data to disk in the Market-1501, DukeMTMC-reID, CUHK03-NP or MSMT17 layouts, which is how the real-data
loaders are tested.

The package also holds the object classes of the few-shot and retrieval data
(:class:`SyntheticClasses`). Modules:

* :mod:`.people`: part attributes, identities, the shapes of a person, clutter and occluders;
* :mod:`.canvas`: cameras, background, painting of the shape table into an image with ground truth;
* :mod:`.reid`: :class:`SyntheticReIDConfig`, :class:`SyntheticReID` (metadata and rendering) and
  :class:`SyntheticReIDDataset`;
* :mod:`.reid_writers`: :func:`write_reid_layout` (MSMT17's files and lists: :mod:`.msmt17_writer`);
* :mod:`.object_shapes`, :mod:`.objects`, :mod:`.class_writers`: the same for the object classes
  (:mod:`.cluttered`: their cluttered scene, classes defined by an arrangement of two shapes);
* :mod:`.common`: what both generators share (config overrides, noise bank, boxes, items);
* :mod:`.real_sizes`: generators that draw the real data sets' exact sizes (the layout writers'
  ``scale="real"``, the real-size rehearsal); no data module imports it.

The speed benchmark of both generators is ``bench/synthetic_data.py``.
"""

from . import class_writers, object_shapes, objects
from .canvas import Camera
from .class_writers import *  # noqa: F401,F403 - the object classes, listed in __all__ below
from .object_shapes import *  # noqa: F401,F403
from .objects import *  # noqa: F401,F403
from .people import (
    ACCESSORIES,
    ACCESSORY_COLOURS,
    HAIR_COLOURS,
    HAIR_STYLES,
    LOWER_COLOURS,
    LOWER_STYLES,
    PALETTE,
    PART_NAMES,
    SHOE_COLOURS,
    SKIN_TONES,
    SLEEVES,
    UPPER_COLOURS,
    UPPER_PATTERNS,
    Identity,
    differing_parts,
    discriminative_parts,
)
from .reid import SPLITS, RenderedSample, SampleInfo, SyntheticReID, SyntheticReIDConfig, SyntheticReIDDataset
from .reid_writers import LAYOUTS, write_reid_folders, write_reid_layout

__all__ = [
    "PART_NAMES",
    "SPLITS",
    "Identity",
    "SampleInfo",
    "SyntheticReIDConfig",
    "SyntheticReID",
    "SyntheticReIDDataset",
    "RenderedSample",
    "differing_parts",
    "discriminative_parts",
    "write_reid_layout",
    "write_reid_folders",
    "LAYOUTS",
    "Camera",
    "PALETTE",
    "SKIN_TONES",
    "HAIR_COLOURS",
    "HAIR_STYLES",
    "UPPER_COLOURS",
    "UPPER_PATTERNS",
    "SLEEVES",
    "LOWER_COLOURS",
    "LOWER_STYLES",
    "SHOE_COLOURS",
    "ACCESSORIES",
    "ACCESSORY_COLOURS",
    *object_shapes.__all__,
    *objects.__all__,
    *class_writers.__all__,
]
