"""The cluttered scene of the synthetic classes: classes defined by an arrangement of two shapes.

In ``scene="cluttered"`` (:class:`~datamodules.synthetic.SyntheticClassesConfig`) a class is a pair of
shapes in a fixed relative position (the second shape right of, below or diagonally below-right of
the first: :data:`RELATIONS`), never a colour or a texture: every part of every image draws its colour
and texture at random from the shared palette (:data:`~datamodules.synthetic.object_shapes.COLOURS`,
:data:`~datamodules.synthetic.object_shapes.TEXTURES`). Beside the object the background holds
``distractors`` objects of any shape (the parts of the classes' arrangements among them), of the
same palette and the same size as the object's parts, never touching the object -- half of them pairs
of shapes in one of the relations, but never two shapes that a class pairs; the box and the mask
are the arrangement only. The object's area is a drawn fraction of the image (``object_area``), the
radius of its parts computed from the exact unit areas of their shapes (:func:`unit_area`); an
arrangement too wide or too tall for the image shrinks until it fits.

The background (``background``) is the generator's two muted colours along a gradient
(``"gradient"``), or Voronoi cells of the same palette (:func:`paint_patchwork`): ``"cells"``, 2-4
solid cells of palette colours, and ``"patchwork"``, 3-6 cells each with a palette colour and a
texture at the parts' scale. On either, colour does not tell the object from the background: the
network-free map ``|pixel - border colour|`` lights whole cells (its Otsu mIoU on 360 images of
seed 0: gradient 0.688, cells 0.458, patchwork 0.358), so the object is found by its shapes. The
patchwork was too hard for the classifier with 60 training images a class and 40 epochs (seed 0: test
accuracy 0.108, chance 0.083); ``configs/classifier_cluttered.yaml`` draws ``"cells"``.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from dataclasses import dataclass

import numpy as np

from .object_shapes import _DARK, _EXTENT, COLOURS, SHAPES, TEXTURES, _shape_mask, _texture_mask, paint_shape

__all__ = ["RELATIONS", "BACKGROUNDS", "ArrangementSpec", "arrangement_table", "unit_area",
           "paint_arrangement", "paint_patchwork"]

#: the cluttered scene's backgrounds (module docstring)
BACKGROUNDS: tuple[str, ...] = ("gradient", "patchwork", "cells")
# the cells ("cells": fewer, solid) and their textures' scale (a fraction of the shorter side)
_CELLS, _SOLID_CELLS, _CELL_TEXTURE = (3, 6), (2, 4), (0.10, 0.18)

#: where the second shape sits, as a unit direction from the first one's centre
RELATIONS: dict[str, tuple[float, float]] = {
    "right": (1.0, 0.0), "below": (0.0, 1.0), "diagonal": (math.sqrt(0.5), math.sqrt(0.5)),
}
# the parts' radius jitter around the radius that gives the drawn area, and the distractors'
_PART_JITTER = (0.85, 1.15)
# the gap between the two parts' extents, as a fraction of their summed extents
_GAP = 0.06
# tries at placing one distractor before it shrinks, and how many times it shrinks
_TRIES, _SHRINKS = 40, 8


@dataclass(frozen=True)
class ArrangementSpec:
    """One class of the cluttered scene: ``second`` placed ``relation`` of ``first``."""

    label: int
    first: str
    second: str
    relation: str

    @property
    def name(self) -> str:
        return f"{self.first}_{self.relation}_{self.second}"

    def attributes(self) -> tuple[str, str, str]:
        return (self.first, self.second, self.relation)


def max_arrangements() -> int:
    """Classes the cluttered scene can draw: one per unordered pair of distinct shapes."""
    return len(SHAPES) * (len(SHAPES) - 1) // 2


def arrangement_table(rng: random.Random, num_classes: int) -> list[ArrangementSpec]:
    """``num_classes`` classes, each a different unordered pair of shapes, in a random order and relation."""
    pairs = rng.sample(list(itertools.combinations(SHAPES, 2)), num_classes)
    out = []
    for label, (a, b) in enumerate(pairs):
        if rng.random() < 0.5:
            a, b = b, a
        out.append(ArrangementSpec(label, a, b, rng.choice(tuple(RELATIONS))))
    return out


@functools.lru_cache(maxsize=None)
def unit_area(shape: str) -> float:
    """The area of ``shape`` in its unit frame (``rx = ry = 1``), on a 1201 x 1201 grid."""
    grid = np.linspace(-1.2, 1.2, 1201, dtype=np.float64)
    u, v = grid.reshape(1, -1), grid.reshape(-1, 1)
    step = grid[1] - grid[0]
    return float(_shape_mask(shape, u, v).sum() * step * step)


def _random_colours(rng: random.Random, jitter: float) -> tuple[np.ndarray, np.ndarray, str]:
    """A palette colour (jittered), its dark shade and a texture, drawn at random."""
    name = rng.choice(tuple(COLOURS))
    c1 = np.clip(np.array(COLOURS[name], np.float32)
                 + np.array([rng.uniform(-jitter, jitter) for _ in range(3)], np.float32), 0.0, 1.0)
    c2 = c1 * np.float32(_DARK * rng.uniform(0.8, 1.2))
    return c1, c2, rng.choice(TEXTURES)


def paint_patchwork(rng: random.Random, xs: np.ndarray, ys: np.ndarray, colour_jitter: float,
                    textured: bool = True) -> np.ndarray:
    """A background of Voronoi cells of the shared palette: float [3, H, W] in [0, 1] (module docstring).

    Each cell draws a colour (jittered), its dark shade and a texture as a part does
    (:func:`_random_colours`), the texture laid out in the cell's own rotated frame at a part's scale;
    ``textured=False`` (``background="cells"``): fewer cells, each one solid colour.
    """
    H, W = len(ys), len(xs)
    side = min(H, W)
    count = rng.randint(*(_CELLS if textured else _SOLID_CELLS))
    sites = np.array([[rng.uniform(0, W), rng.uniform(0, H)] for _ in range(count)], np.float32)
    dx = xs.reshape(1, 1, W) - sites[:, 0].reshape(-1, 1, 1)  # [C, 1, W]
    dy = ys.reshape(1, H, 1) - sites[:, 1].reshape(-1, 1, 1)  # [C, H, 1]
    cell = (dx * dx + dy * dy).argmin(0)  # [H, W]
    canvas = np.empty((3, H, W), np.float32)
    for c in range(count):  # a few cells, each painted with whole-image array operations
        c1, c2, texture = _random_colours(rng, colour_jitter)
        theta, scale = rng.uniform(0, 2 * math.pi), rng.uniform(*_CELL_TEXTURE) * side
        cos, sin = np.float32(math.cos(theta) / scale), np.float32(math.sin(theta) / scale)
        u, v = dx[c] * cos + dy[c] * sin, dy[c] * cos - dx[c] * sin  # [H, W]
        dark = _texture_mask(texture if textured else "solid", u, v)
        colour = c1.reshape(3, 1, 1) if dark is None else np.where(dark[None], c2.reshape(3, 1, 1),
                                                                     c1.reshape(3, 1, 1))
        np.copyto(canvas, np.broadcast_to(colour, canvas.shape), where=(cell == c)[None])
    return canvas


def _part(rng: random.Random, radius: float, aspect: tuple[float, float]) -> tuple[float, float, float]:
    """``(rx, ry, reach)`` of a part of ``radius`` with a drawn aspect ratio."""
    a = math.sqrt(rng.uniform(*aspect))
    rx, ry = radius * a, radius / a
    return rx, ry, _EXTENT * max(rx, ry)


def paint_arrangement(
    canvas: np.ndarray, xs: np.ndarray, ys: np.ndarray, rng: random.Random, spec: ArrangementSpec,
    object_area: tuple[float, float], distractors: tuple[int, int], aspect: tuple[float, float],
    rotation: float, colour_jitter: float, pair_share: float = 0.5, classes: frozenset = frozenset(),
) -> tuple[np.ndarray, np.ndarray]:
    """Paint the class's arrangement and the distractors over ``canvas`` [3, H, W] (module docstring):
    a distractor is a pair of shapes with probability ``pair_share``, its shapes never a pair of
    ``classes`` (frozensets of two shapes).

    Returns:
        ``(mask, distractor_mask)``: bool [H, W], the arrangement's pixels and the distractors'.
    """
    H, W = canvas.shape[-2:]
    j1, j2 = rng.uniform(*_PART_JITTER), rng.uniform(*_PART_JITTER)
    area = rng.uniform(*object_area) * H * W
    radius = math.sqrt(area / (j1 * j1 * unit_area(spec.first) + j2 * j2 * unit_area(spec.second)))
    rx1, ry1, reach1 = _part(rng, radius * j1, aspect)
    rx2, ry2, reach2 = _part(rng, radius * j2, aspect)
    dx, dy = RELATIONS[spec.relation]
    # the parts' extents (the shapes reach 1.1 of their radius at most) plus a gap
    distance = (1.0 + _GAP) * 1.1 * (max(rx1, ry1) + max(rx2, ry2))
    ox, oy = distance * dx, distance * dy  # the second centre, from the first
    # an arrangement wider or taller than the image shrinks to fit (its area stays above 7% at 128x128)
    span_x = max(reach1, reach2 - ox) + max(reach1, reach2 + ox) + 2.0
    span_y = max(reach1, reach2 - oy) + max(reach1, reach2 + oy) + 2.0
    scale = min(1.0, (W - 0.5) / span_x, (H - 0.5) / span_y)
    if scale < 1.0:
        radius, ox, oy = radius * scale, ox * scale, oy * scale
        rx1, ry1, reach1, rx2, ry2, reach2 = (v * scale for v in (rx1, ry1, reach1, rx2, ry2, reach2))
    lo_x, hi_x = max(reach1, reach2 - ox) + 1.0, min(W - reach1, W - reach2 - ox) - 1.0
    lo_y, hi_y = max(reach1, reach2 - oy) + 1.0, min(H - reach1, H - reach2 - oy) - 1.0
    cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    parts = [(spec.first, cx, cy, rx1, ry1, reach1), (spec.second, cx + ox, cy + oy, rx2, ry2, reach2)]
    mask = np.zeros((H, W), dtype=bool)
    for shape, px, py, rx, ry, _ in parts:
        c1, c2, texture = _random_colours(rng, colour_jitter)
        theta = rng.uniform(-rotation, rotation)
        paint_shape(canvas, xs, ys, shape, texture, c1, c2, px, py, rx, ry, theta, mask)

    # the distractors: single shapes or pairs of shapes that no class arranges, of the parts' size, clear
    # of the object and of each other
    taken = [(px, py, reach) for _, px, py, _, _, reach in parts]
    others = np.zeros((H, W), dtype=bool)
    for _ in range(rng.randint(*distractors)):
        if rng.random() < pair_share:
            free = [p for p in itertools.combinations(SHAPES, 2) if frozenset(p) not in classes]
            shapes = list(rng.choice(free))
        else:
            shapes = [rng.choice(SHAPES)]
        pieces = [_part(rng, radius * rng.uniform(*_PART_JITTER), aspect) for _ in shapes]
        offsets = [(0.0, 0.0)]
        if len(shapes) == 2:
            ddx, ddy = RELATIONS[rng.choice(tuple(RELATIONS))]
            gap = (1.0 + _GAP) * 1.1 * sum(max(rx, ry) for rx, ry, _ in pieces)
            offsets.append((gap * ddx, gap * ddy))
        for _shrink in range(_SHRINKS):
            circles = [(ox, oy, reach) for (ox, oy), (_, _, reach) in zip(offsets, pieces)]
            place = _place(rng, taken, circles, W, H)
            if place is not None:
                break
            pieces = [(0.8 * rx, 0.8 * ry, 0.8 * reach) for rx, ry, reach in pieces]
            offsets = [(0.8 * ox, 0.8 * oy) for ox, oy in offsets]
        if place is None:
            continue
        for shape, (rx, ry, reach), (ox, oy) in zip(shapes, pieces, offsets):
            taken.append((place[0] + ox, place[1] + oy, reach))
            c1, c2, texture = _random_colours(rng, colour_jitter)
            paint_shape(canvas, xs, ys, shape, texture, c1, c2, place[0] + ox, place[1] + oy, rx, ry,
                        rng.uniform(-rotation, rotation), others)
    return mask, others


def _place(rng: random.Random, taken: list[tuple[float, float, float]],
           circles: list[tuple[float, float, float]], W: int, H: int) -> tuple[float, float] | None:
    """An anchor at which every circle ``(dx, dy, reach)`` lies inside the image, 2 px clear of the
    ``taken`` circles ``(x, y, reach)``; ``None`` after a number of random tries."""
    lo_x = max(reach - dx for dx, _, reach in circles) + 1.0
    hi_x = min(W - reach - dx for dx, _, reach in circles) - 1.0
    lo_y = max(reach - dy for _, dy, reach in circles) + 1.0
    hi_y = min(H - reach - dy for _, dy, reach in circles) - 1.0
    if lo_x >= hi_x or lo_y >= hi_y:
        return None
    for _try in range(_TRIES):
        x, y = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
        if all((x + dx - tx) ** 2 + (y + dy - ty) ** 2 >= (reach + tr + 2.0) ** 2
               for dx, dy, reach in circles for tx, ty, tr in taken):
            return x, y
    return None
