"""The objects of the synthetic classes: shapes, textures and colours, and the painting of one object.

A shape and its texture are masks in the object's local frame ``(u, v)``, the object filling the
unit disc; :func:`paint_shape` evaluates them on the bounding window of a rotated, scaled object.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SHAPES", "TEXTURES", "COLOURS", "paint_shape"]

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "diamond", "cross", "star", "hexagon", "ring", "crescent", "half_disc",
)
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "dots", "rings", "two_tone")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.13, 0.12), "orange": (0.97, 0.56, 0.10),
    "yellow": (0.95, 0.88, 0.20), "green": (0.18, 0.68, 0.22),
    "cyan": (0.15, 0.78, 0.84), "blue": (0.16, 0.30, 0.90),
    "purple": (0.56, 0.20, 0.72), "pink": (0.97, 0.55, 0.76),
}

# second colour of the textured classes: a dark shade of the first one
_DARK = 0.28
# a shape fits in the unit disc of its local frame (triangle: up to 1.1)
_EXTENT = 1.12


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "circle":
        return u * u + v * v <= 0.81
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.78
    if shape == "triangle":  # equilateral, apex up, circumradius 1.1
        return (v >= -0.55) & (v * 0.5 - u * 0.8660254 <= 0.55) & (v * 0.5 + u * 0.8660254 <= 0.55)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.32) & (av <= 0.95)) | ((av <= 0.32) & (au <= 0.95))
    if shape == "star":  # five rounded points, radius 0.3 .. 0.96
        r = np.sqrt(u * u + v * v)
        return r <= 0.63 + 0.33 * np.cos(5.0 * np.arctan2(u, -v))
    if shape == "hexagon":
        au = np.abs(u)
        return (np.abs(v) <= 0.85) & (0.8660254 * au + 0.5 * np.abs(v) <= 0.85 * 0.8660254 * 1.1547)
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 0.88) & (r2 >= 0.25)
    if shape == "crescent":
        return (u * u + v * v <= 0.85) & ((u - 0.45) ** 2 + v * v > 0.5)
    if shape == "half_disc":
        return (u * u + v * v <= 0.85) & (v >= -0.12)
    raise ValueError(f"unknown shape {shape!r}")


def _texture_mask(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """Where the second (dark) colour goes; ``None`` for a solid object."""
    if texture == "solid":
        return None
    if texture == "stripes":
        return np.floor(u * 3.2) % 2 > 0.5
    if texture == "checker":
        return (np.floor(u * 2.6) + np.floor(v * 2.6)) % 2 > 0.5
    if texture == "dots":
        fu, fv = u * 3.0, v * 3.0
        return (fu - np.round(fu)) ** 2 + (fv - np.round(fv)) ** 2 < 0.09
    if texture == "rings":
        return np.floor(np.sqrt(u * u + v * v) * 4.5) % 2 > 0.5
    if texture == "two_tone":
        return v > 0.0
    raise ValueError(f"unknown texture {texture!r}")


def paint_shape(
    canvas: np.ndarray, xs: np.ndarray, ys: np.ndarray, shape: str, texture: str, c1: np.ndarray,
    c2: np.ndarray, cx: float, cy: float, rx: float, ry: float, theta: float, mask: np.ndarray | None = None,
) -> None:
    """Paint one shape over ``canvas`` [3, H, W] on its bounding window; fill ``mask`` [H, W] if given.

    ``xs`` / ``ys``: the pixel-centre coordinates of the columns / rows."""
    H, W = canvas.shape[-2:]
    reach = _EXTENT * max(rx, ry)
    x0, x1 = max(0, int(cx - reach)), min(W, int(cx + reach) + 1)
    y0, y1 = max(0, int(cy - reach)), min(H, int(cy + reach) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    dx = (xs[x0:x1] - np.float32(cx)).reshape(1, -1)
    dy = (ys[y0:y1] - np.float32(cy)).reshape(-1, 1)
    c, s = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    u = (dx * c + dy * s) * np.float32(1.0 / rx)
    v = (dy * c - dx * s) * np.float32(1.0 / ry)
    inside = _shape_mask(shape, u, v)
    dark = _texture_mask(texture, u, v)
    window = canvas[:, y0:y1, x0:x1]
    if dark is None:
        colour = np.broadcast_to(c1.reshape(3, 1, 1), window.shape)
    else:
        colour = np.where(dark[None], c2.reshape(3, 1, 1), c1.reshape(3, 1, 1))
    np.copyto(window, colour, where=inside[None])
    if mask is not None:
        mask[y0:y1, x0:x1] |= inside
