"""The people of the synthetic re-ID set: part attributes, identities, and the shapes that draw them.

A person is five parts (:data:`PART_NAMES`); an identity is one attribute tuple per part. Drawing
appends rows to a shape table (one row per ellipse or trapezoid, see
:mod:`datamodules.synthetic.canvas`): the person, the background clutter and the occluders.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .canvas import Camera

__all__ = [
    "PART_NAMES",
    "Identity",
    "differing_parts",
    "discriminative_parts",
    "draw_clutter",
    "draw_occluder",
    "draw_person",
    "ellipse",
    "trap",
]

PART_NAMES: tuple[str, ...] = ("head", "upper", "lower", "shoes", "accessory")
HEAD, UPPER, LOWER, SHOES, ACCESSORY = range(5)
_NOT_PERSON = -1

# ----------------------------------------------------------------------------------------------
# Attribute vocabularies
# ----------------------------------------------------------------------------------------------

PALETTE: dict[str, tuple[float, float, float]] = {
    "black": (0.08, 0.08, 0.09),
    "white": (0.93, 0.93, 0.90),
    "grey": (0.52, 0.52, 0.54),
    "dark_grey": (0.30, 0.30, 0.32),
    "red": (0.82, 0.12, 0.12),
    "maroon": (0.45, 0.07, 0.10),
    "orange": (0.95, 0.52, 0.10),
    "yellow": (0.95, 0.86, 0.20),
    "green": (0.20, 0.66, 0.25),
    "dark_green": (0.08, 0.34, 0.14),
    "cyan": (0.20, 0.76, 0.80),
    "blue": (0.15, 0.30, 0.86),
    "navy": (0.10, 0.12, 0.40),
    "purple": (0.50, 0.20, 0.66),
    "pink": (0.96, 0.56, 0.72),
    "brown": (0.46, 0.28, 0.14),
    "beige": (0.86, 0.76, 0.55),
    "light_blue": (0.56, 0.72, 0.92),
}
SKIN_TONES: dict[str, tuple[float, float, float]] = {
    "light": (0.96, 0.80, 0.68), "tan": (0.84, 0.64, 0.46),
    "brown": (0.60, 0.42, 0.28), "dark": (0.36, 0.24, 0.16),
}
HAIR_COLOURS: dict[str, tuple[float, float, float]] = {
    "black": (0.06, 0.05, 0.05), "brown": (0.36, 0.22, 0.10), "blond": (0.88, 0.74, 0.38),
    "grey": (0.72, 0.72, 0.72), "auburn": (0.62, 0.24, 0.10),
}
HAIR_STYLES = ("short", "long", "bald")
UPPER_COLOURS = tuple(PALETTE)
UPPER_PATTERNS = ("solid", "hstripes", "vstripes", "two_tone", "logo")
SLEEVES = ("long", "short")
LOWER_COLOURS = ("black", "navy", "blue", "light_blue", "grey", "dark_grey", "beige", "brown",
                 "white", "red", "dark_green", "maroon")
LOWER_STYLES = ("trousers", "shorts", "skirt")
SHOE_COLOURS = ("black", "white", "brown", "red", "blue", "grey")
ACCESSORIES = ("none", "backpack", "bag", "hat")
ACCESSORY_COLOURS = ("black", "red", "blue", "yellow", "green", "orange", "purple", "beige", "grey", "pink")


@dataclass(frozen=True)
class Identity:
    """One person: an attribute tuple per part (see :data:`PART_NAMES`)."""

    pid: int
    family: int
    head: tuple  # (skin, hair colour, hair style)
    upper: tuple  # (colour, pattern, second colour, sleeves)
    lower: tuple  # (colour, style)
    shoes: tuple  # (colour,)
    accessory: tuple  # (kind, colour); colour "" when kind == "none"

    def parts(self) -> tuple[tuple, ...]:
        return (self.head, self.upper, self.lower, self.shoes, self.accessory)


def differing_parts(a: Identity, b: Identity) -> tuple[str, ...]:
    """Names of the parts whose attributes differ between two identities."""
    return tuple(name for name, pa, pb in zip(PART_NAMES, a.parts(), b.parts()) if pa != pb)


def discriminative_parts(identities: Sequence[Identity], sole: bool = False) -> torch.Tensor:
    """The parts that tell each identity from its siblings: bool ``[len(identities), P]``.

    Siblings are the other identities of the same ``family`` in ``identities``. With ``sole=False``
    part ``p`` of identity ``i`` is set when ``i`` differs in ``p`` from at least one sibling (the
    union of :func:`differing_parts` over the siblings); with ``sole=True`` only when ``p`` is the
    *only* part in which ``i`` differs from some sibling, i.e. a part without which ``i`` cannot be
    told from that sibling. An identity without siblings has no part set.

    The attribute tuples are coded as integers once (one dictionary per part); the comparison is
    then one tensor op over ``[families, members, members, P]``.
    """
    count, num_parts = len(identities), len(PART_NAMES)
    if count == 0:
        return torch.zeros(0, num_parts, dtype=torch.bool)
    tables: list[dict[tuple, int]] = [{} for _ in range(num_parts)]
    codes = torch.tensor([[table.setdefault(attrs, len(table)) for table, attrs in zip(tables, ident.parts())]
                          for ident in identities])  # [n, P]
    _, family, sizes = torch.unique(torch.tensor([ident.family for ident in identities]),
                                    return_inverse=True, return_counts=True)
    order = torch.argsort(family, stable=True)
    group = family[order]
    slot = torch.arange(count) - (sizes.cumsum(0) - sizes)[group]  # position within the family
    members = int(sizes.max())
    grid = torch.zeros(len(sizes), members, num_parts, dtype=torch.long)
    present = torch.zeros(len(sizes), members, dtype=torch.bool)
    grid[group, slot] = codes[order]
    present[group, slot] = True
    differ = grid[:, :, None] != grid[:, None, :]  # [F, S, S, P]
    pairs = present[:, :, None] & present[:, None, :] & ~torch.eye(members, dtype=torch.bool)
    if sole:
        differ &= differ.sum(-1, keepdim=True) == 1
    found = (differ & pairs[..., None]).any(2)  # [F, S, P]
    out = torch.empty(count, num_parts, dtype=torch.bool)
    out[order] = found[group, slot]
    return out


def _sample_part(rng: random.Random, part: int) -> tuple:
    if part == HEAD:
        return (rng.choice(tuple(SKIN_TONES)), rng.choice(tuple(HAIR_COLOURS)),
                rng.choices(HAIR_STYLES, weights=(5, 3, 1))[0])
    if part == UPPER:
        colour = rng.choice(UPPER_COLOURS)
        pattern = rng.choices(UPPER_PATTERNS, weights=(4, 2, 2, 2, 2))[0]
        colour2 = "" if pattern == "solid" else rng.choice([c for c in UPPER_COLOURS if c != colour])
        return (colour, pattern, colour2, rng.choice(SLEEVES))
    if part == LOWER:
        return (rng.choice(LOWER_COLOURS), rng.choices(LOWER_STYLES, weights=(5, 2, 2))[0])
    if part == SHOES:
        return (rng.choice(SHOE_COLOURS),)
    kind = rng.choices(ACCESSORIES, weights=(3, 2, 2, 2))[0]
    return (kind, "" if kind == "none" else rng.choice(ACCESSORY_COLOURS))


def _sample_parts(rng: random.Random) -> list[tuple]:
    return [_sample_part(rng, p) for p in range(len(PART_NAMES))]


def muted(rng: random.Random, lo: float = 0.2, hi: float = 0.85) -> tuple[float, float, float]:
    base = rng.uniform(lo, hi)
    return tuple(min(1.0, max(0.0, base + rng.uniform(-0.18, 0.18))) for _ in range(3))



# ----------------------------------------------------------------------------------------------
# Shapes: each appends one row
# ----------------------------------------------------------------------------------------------


def ellipse(rows, cx, cy, rx, ry, c1, part, c2=None, pattern=(0.0, 0.0, 0.0, 0.0)):
    rows.append([0.0, cx, cy, max(rx, 0.3), max(ry, 0.3), 0.0, 0.0, *c1, *(c2 or c1), *pattern,
                 float(part)])


def trap(rows, y0, y1, c0, c1, a0, a1, col, part, col2=None, pattern=(0.0, 0.0, 0.0, 0.0)):
    rows.append([1.0, y0, max(y1, y0 + 0.5), c0, c1, a0, a1, *col, *(col2 or col), *pattern, float(part)])


def draw_clutter(rng: random.Random, rows, cam: Camera, H: int, W: int) -> None:
    col = muted(rng, 0.1, 0.95)
    if rng.random() < 0.5:  # the scene's own colours
        ref = cam.bg_a if rng.random() < 0.5 else cam.bg_b
        col = tuple(0.35 * c + 0.65 * r * rng.uniform(0.6, 1.3) for c, r in zip(col, ref))
    if rng.random() < 0.5:
        y0 = rng.uniform(-0.1, 0.9) * H
        h = rng.uniform(0.06, 0.35) * H
        c = rng.uniform(0, W)
        a = rng.uniform(0.05, 0.3) * W
        trap(rows, y0, y0 + h, c, c + rng.uniform(-0.1, 0.1) * W, a, a, col, _NOT_PERSON)
    else:
        ellipse(rows, rng.uniform(0, W), rng.uniform(0, H), rng.uniform(0.05, 0.3) * W,
                rng.uniform(0.03, 0.2) * H, col, _NOT_PERSON)


def draw_occluder(rng: random.Random, rows, cx, y0, ph, H, W) -> None:
    col = muted(rng, 0.1, 0.9)
    if rng.random() < 0.6:  # a block in front of the legs (car, bench, bin)
        top = y0 + ph * rng.uniform(0.62, 0.82)
        c = cx + rng.uniform(-0.3, 0.3) * W
        a = rng.uniform(0.35, 0.7) * W
        trap(rows, top, H + 1.0, c, c, a, a, col, _NOT_PERSON)
    else:  # a block from one side (pole, passer-by)
        side = rng.choice((-1, 1))
        edge = cx + side * rng.uniform(-0.02, 0.1) * ph
        a = W
        c = edge + side * a
        top = rng.uniform(-0.1, 0.5) * H
        trap(rows, top, top + rng.uniform(0.5, 1.1) * H, c, c, a, a, col, _NOT_PERSON)


def draw_person(rng: random.Random, rows, parts, cx, y0, ph, front: bool) -> None:
    (skin, hair_c, hair_s), (up_c, up_p, up_c2, sleeves), (lo_c, lo_s), (shoe_c,), (acc, acc_c) = parts

    def jit(c: tuple[float, float, float], a: float = 0.05) -> tuple[float, ...]:
        return tuple(min(1.0, max(0.0, v + rng.uniform(-a, a))) for v in c)

    skin_rgb = jit(SKIN_TONES[skin], 0.03)
    hair_rgb = jit(HAIR_COLOURS[hair_c])
    up1, up2 = jit(PALETTE[up_c]), jit(PALETTE[up_c2]) if up_c2 else None
    lo_rgb = jit(PALETTE[lo_c])
    shoe_rgb = jit(PALETTE[shoe_c])
    acc_rgb = jit(PALETTE[acc_c]) if acc_c else None

    ws = ph * rng.uniform(0.85, 1.15)  # horizontal unit (body width)
    stance = rng.uniform(-0.01, 0.06)
    swing = rng.uniform(-0.02, 0.04)
    lean = rng.uniform(-0.025, 0.025) * ws

    def Y(v: float) -> float:
        return y0 + v * ph

    def X(u: float, v: float = 0.5) -> float:  # lean: top of the body shifted by `lean`
        return cx + u * ws + lean * (0.5 - v) * 2

    # back layers: long hair, backpack seen from the front (sticks out at the sides)
    if hair_s == "long":
        ellipse(rows, X(0, 0.12), Y(0.12), 0.07 * ws, 0.125 * ph, hair_rgb, HEAD)
    if acc == "backpack" and front:
        trap(rows, Y(0.17), Y(0.44), X(0, 0.17), X(0, 0.44), 0.15 * ws, 0.15 * ws,
             acc_rgb, ACCESSORY)

    # legs and lower body
    hip_top, knee, foot = 0.49, 0.69, 0.925
    for side in (-1, 1):
        lc0, lc1 = X(side * 0.05, hip_top), X(side * (0.05 + stance), foot)
        leg_col = lo_rgb if lo_s == "trousers" else skin_rgb
        trap(rows, Y(hip_top), Y(foot), lc0, lc1, 0.052 * ws, 0.042 * ws, leg_col, LOWER)
        if lo_s == "shorts":
            t = (knee - hip_top) / (foot - hip_top)
            trap(rows, Y(hip_top), Y(knee), lc0, lc0 + (lc1 - lc0) * t, 0.056 * ws, 0.05 * ws,
                 lo_rgb, LOWER)
    if lo_s == "skirt":
        trap(rows, Y(0.47), Y(0.73), X(0, 0.47), X(0, 0.73), 0.105 * ws, 0.16 * ws, lo_rgb, LOWER)
    else:
        trap(rows, Y(0.47), Y(0.56), X(0, 0.47), X(0, 0.56), 0.105 * ws, 0.108 * ws, lo_rgb, LOWER)
    # shoes
    for side in (-1, 1):
        ellipse(rows, X(side * (0.05 + stance) + side * 0.012, foot), Y(foot + 0.012),
                0.052 * ws, 0.03 * ph, shoe_rgb, SHOES)

    # upper body: arms then torso, with the top's pattern
    if up_p == "hstripes":
        pattern = (1.0 / (0.055 * ph), Y(0.15), 0.0, 0.0)
    elif up_p == "vstripes":
        pattern = (0.0, 0.0, 1.0 / (0.045 * ws), X(0) + 0.0225 * ws)
    elif up_p == "two_tone":
        pattern = (1.0 / (0.5 * ph), Y(0.32) - 0.5 * ph, 0.0, 0.0)
    else:
        pattern = (0.0, 0.0, 0.0, 0.0)
    col2 = up2 if up_p in ("hstripes", "vstripes", "two_tone") else None
    for side in (-1, 1):
        a0 = X(side * 0.145, 0.16)
        a1 = X(side * (0.155 + swing), 0.5)
        if sleeves == "long":
            trap(rows, Y(0.16), Y(0.50), a0, a1, 0.036 * ws, 0.03 * ws, up1, UPPER, col2, pattern)
        else:
            trap(rows, Y(0.16), Y(0.50), a0, a1, 0.03 * ws, 0.026 * ws, skin_rgb, UPPER)
            t = 0.14 / 0.34
            trap(rows, Y(0.16), Y(0.30), a0, a0 + (a1 - a0) * t, 0.038 * ws, 0.036 * ws,
                 up1, UPPER, col2, pattern)
        ellipse(rows, a1, Y(0.515), 0.03 * ws, 0.025 * ph, skin_rgb, UPPER)
    trap(rows, Y(0.15), Y(0.52), X(0, 0.15), X(0, 0.52), 0.125 * ws, 0.105 * ws,
         up1, UPPER, col2, pattern)
    if up_p == "logo" and front:
        trap(rows, Y(0.23), Y(0.31), X(0.02, 0.23), X(0.02, 0.31), 0.04 * ws, 0.04 * ws, up2, UPPER)
    if up_p == "logo" and not front:
        trap(rows, Y(0.2), Y(0.24), X(0, 0.2), X(0, 0.24), 0.1 * ws, 0.1 * ws, up2, UPPER)

    # accessories over the body
    if acc == "backpack":
        if front:  # straps
            for side in (-1, 1):
                trap(rows, Y(0.15), Y(0.36), X(side * 0.075, 0.15), X(side * 0.08, 0.36),
                     0.014 * ws, 0.014 * ws, acc_rgb, ACCESSORY)
        else:
            trap(rows, Y(0.18), Y(0.46), X(0, 0.18), X(0, 0.46), 0.11 * ws, 0.115 * ws,
                 acc_rgb, ACCESSORY)
    elif acc == "bag":
        side = rng.choice((-1, 1))
        trap(rows, Y(0.15), Y(0.46), X(-side * 0.09, 0.15), X(side * 0.12, 0.46),
             0.013 * ws, 0.013 * ws, acc_rgb, ACCESSORY)
        trap(rows, Y(0.42), Y(0.58), X(side * 0.15, 0.42), X(side * 0.15, 0.58),
             0.06 * ws, 0.065 * ws, acc_rgb, ACCESSORY)

    # head: hair cap, face (front) or hair (back)
    if hair_s != "bald":
        ellipse(rows, X(0, 0.07), Y(0.07), 0.056 * ws, 0.07 * ph, hair_rgb, HEAD)
        face_rgb = skin_rgb if front else hair_rgb
        ellipse(rows, X(0, 0.09), Y(0.092), 0.048 * ws, 0.055 * ph, face_rgb, HEAD)
    else:
        ellipse(rows, X(0, 0.08), Y(0.08), 0.052 * ws, 0.068 * ph, skin_rgb, HEAD)
    if acc == "hat":
        trap(rows, Y(-0.005), Y(0.04), X(0, 0.0), X(0, 0.04), 0.045 * ws, 0.058 * ws,
             acc_rgb, ACCESSORY)
        trap(rows, Y(0.035), Y(0.05), X(0.01, 0.035), X(0.01, 0.05), 0.075 * ws, 0.075 * ws,
             acc_rgb, ACCESSORY)
