"""The scene of a synthetic re-ID image: cameras, background, and the painting of the shape table.

:class:`Canvas` holds the pixel grid of one image size; :meth:`Canvas.compose` paints a table of
shapes (rows written by :mod:`datamodules.synthetic.people`) over a camera's background, with its
light, colour cast and sensor noise, and returns the image, the part masks and the person's box.
The ellipse and trapezoid inequalities are evaluated on the coordinate grid of every shape at once,
stripes are parities of floor functions of the coordinates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..seeding import mix_seed
from .common import mask_box, noise_bank
from .people import _NOT_PERSON, PART_NAMES, muted

__all__ = ["Camera", "Canvas", "make_camera", "ROW"]


# One row per drawn shape: kind (0 ellipse, 1 trapezoid), six geometry numbers, colour 1, colour 2,
# stripe pattern (fy, oy, fx, ox: parity of floor((y-oy)*fy) + floor((x-ox)*fx) picks colour 2), part.
ROW = 1 + 6 + 3 + 3 + 4 + 1


@dataclass(frozen=True)
class Camera:
    gain: tuple[float, float, float]
    offset: float
    style: int
    bg_a: tuple[float, float, float]
    bg_b: tuple[float, float, float]
    period: float
    horizon: float
    front_prob: float
    noise: float
    lowres: bool


def make_camera(seed: int, c: int, config: Any) -> Camera:
    """Camera ``c`` of a :class:`~datamodules.synthetic.SyntheticReIDConfig` (``num_cameras``, ``noise_std``)."""
    rng = random.Random(mix_seed(seed, 7, c))
    n = config.num_cameras
    # spread the light over the cameras so that they really differ, then shuffle the order
    order = list(range(n))
    random.Random(mix_seed(seed, 8)).shuffle(order)
    brightness = 0.7 + 0.5 * (order[c] / max(1, n - 1))
    cast = [1.0 + rng.uniform(-0.13, 0.13) for _ in range(3)]
    gain = tuple(brightness * x for x in cast)
    return Camera(
        gain=gain,
        offset=rng.uniform(-0.04, 0.06),
        style=c % 4 if n >= 4 else rng.randrange(4),
        bg_a=muted(rng),
        bg_b=muted(rng),
        period=rng.uniform(6.0, 16.0),
        horizon=rng.uniform(0.55, 0.78),
        front_prob=rng.uniform(0.25, 0.75),
        noise=rng.uniform(*config.noise_std),
        lowres=(n >= 6 and c == n - 1),
    )


class Canvas:
    """The drawing grid of ``height`` x ``width`` images and the noise bank of a data seed."""

    def __init__(self, height: int, width: int, seed: int) -> None:
        H, W = height, width
        self.height, self.width = H, W
        # pixel-centre coordinates and index helpers of the drawing grid
        self._ys_np = np.arange(H, dtype=np.float32) + np.float32(0.5)
        self._xs_np = np.arange(W, dtype=np.float32) + np.float32(0.5)
        self._row_of_pixel = np.repeat(np.arange(H), W)  # [H*W]
        self._col_of_pixel = np.tile(np.arange(W), H)
        self._row_start = (np.arange(H) * W).reshape(1, H)
        self._shade = (1.0 - 0.22 * ((self._xs_np - W / 2) / (0.6 * W)) ** 2).astype(np.float32).reshape(1, W)
        self._noise_bank = noise_bank(seed, H, W)

    def background(self, rng: random.Random, cam: Camera) -> np.ndarray:
        H, W = self.height, self.width
        ys, xs = self._ys_np.reshape(H, 1), self._xs_np.reshape(1, W)
        a = np.array([min(1.0, max(0.0, v + rng.uniform(-0.05, 0.05))) for v in cam.bg_a], np.float32)
        b = np.array([min(1.0, max(0.0, v + rng.uniform(-0.05, 0.05))) for v in cam.bg_b], np.float32)
        period = cam.period * rng.uniform(0.85, 1.15)
        horizon = (cam.horizon + rng.uniform(-0.06, 0.06)) * H
        if cam.style == 0:  # wall / floor
            f = np.broadcast_to((ys > horizon) * np.float32(0.9) + ys * np.float32(0.1 / H), (H, W))
        elif cam.style == 1:  # vertical gradient
            f = np.broadcast_to(ys * np.float32(1.0 / H), (H, W))
        elif cam.style == 2:  # horizontal bands (building)
            f = np.broadcast_to(np.floor((ys + np.float32(rng.uniform(0, period))) / np.float32(period)) % 2, (H, W))
        else:  # columns over a floor
            cols = np.floor((xs + np.float32(rng.uniform(0, period))) / np.float32(period)) % 2 * np.float32(0.7)
            f = np.where(ys > horizon, np.float32(1.0), cols)
        return a.reshape(3, 1, 1) + (b - a).reshape(3, 1, 1) * f  # [3, H, W]

    def paint(self, top: np.ndarray, t: np.ndarray, offset: int) -> None:
        """Paint the 1-based level (+ ``offset``) of each shape of rows ``t`` into ``top`` [H*W] (max wins).

        Ellipses ``((x-cx)/rx)^2 + ((y-cy)/ry)^2 <= 1`` and trapezoids ``y0 <= y < y1, |x - c(y)| <= a(y)``
        (centre and half width linear in y) are both, row by row, an interval ``|x - c(y)| <= a(y)``:
        the inequalities are evaluated on the row coordinates of all shapes at once, and the covered
        column intervals are scattered into the image, so the cost is the covered area, not shapes x pixels.
        """
        H, W = self.height, self.width
        n = t.shape[0]
        ys = self._ys_np.reshape(1, H)
        g = t[:, 1:7].T[:, :, None]  # [6, n, 1]
        is_ell = (t[:, 0] == 0)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            e = 1.0 - np.square((ys - g[1]) / g[3])
            e_half = np.where(e < 0, -1.0, g[2] * np.sqrt(np.maximum(e, 0.0)))
            tt = np.clip((ys - g[0]) / (g[1] - g[0]), 0.0, 1.0)
        t_centre = g[2] + (g[3] - g[2]) * tt
        t_half = np.where((ys < g[0]) | (ys >= g[1]), -1.0, g[4] + (g[5] - g[4]) * tt)
        centre = np.where(is_ell, g[0], t_centre)
        half = np.where(is_ell, e_half, t_half)
        # pixel j (centre j + 0.5) is inside when c - a <= j + 0.5 <= c + a
        lo = np.maximum(np.ceil(centre - half - 0.5), 0.0)
        hi = np.minimum(np.floor(centre + half - 0.5), W - 1.0)
        lens = np.where(half < 0, 0.0, np.maximum(hi - lo + 1.0, 0.0)).astype(np.int64).ravel()  # [n*H]
        total = int(lens.sum())
        if total == 0:
            return
        starts = (lo.astype(np.int64) + self._row_start).ravel()
        first = np.cumsum(lens) - lens
        idx = np.arange(total) + np.repeat(starts - first, lens)
        level = np.repeat(np.repeat(np.arange(offset + 1, offset + 1 + n), H), lens)
        # shapes are listed bottom to top, so the highest level wins
        np.maximum.at(top, idx, level)

    def compose(
        self, rng: random.Random, rows: list, first_person: int, last_person: int, cam: Camera
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Paint the shape ``rows`` over the background: ``(image uint8 [3,H,W], masks bool [P,H,W], box [4])``.

        Rows ``first_person:last_person`` are the person (its full mask gives the box), later rows occlude it.
        """
        H, W = self.height, self.width
        P = len(PART_NAMES)
        bg = self.background(rng, cam)
        L = len(rows)
        full = None
        if L:
            t = np.array(rows, dtype=np.float32)  # [L, ROW]
            top = np.zeros(H * W, dtype=np.int64)
            self.paint(top, t[:last_person], 0)
            if last_person > first_person:
                # the person's shapes come after the clutter: its full (unoccluded) mask
                full = (top > first_person).reshape(H, W)
            if L > last_person:  # occluders over the person
                self.paint(top, t[last_person:], last_person)
            tab = np.concatenate([np.zeros((1, ROW), np.float32), t])  # row 0 = background
            colours = np.concatenate([tab[:, 7:10], tab[:, 10:13]]).T  # [3, 2(L+1)]
            if tab[:, 13].any() or tab[:, 15].any():
                # stripe patterns: parity of floor((y-oy) fy) + floor((x-ox) fx) of the top shape
                py = np.floor((self._ys_np.reshape(1, H) - tab[:, 14:15]) * tab[:, 13:14])  # [L+1, H]
                px = np.floor((self._xs_np.reshape(1, W) - tab[:, 16:17]) * tab[:, 15:16])  # [L+1, W]
                parity = py.ravel()[top * H + self._row_of_pixel] + px.ravel()[top * W + self._col_of_pixel]
                sel = top + (parity % 2 > 0.5) * (L + 1)
            else:
                sel = top
            colour = colours[:, sel].reshape(3, H, W)
            img = np.where((top > 0).reshape(1, H, W), colour, bg)
            part_lut = tab[:, 17].astype(np.int64)
            part_lut[0] = _NOT_PERSON
            partmap = part_lut[top].reshape(H, W)
        else:
            img = bg
            partmap = np.full((H, W), _NOT_PERSON, dtype=np.int64)

        # soft body shading, camera light and cast, per-image exposure, sensor noise, to uint8
        exposure = rng.uniform(0.9, 1.1)
        gain = np.array([255.0 * gch * exposure for gch in cam.gain], np.float32).reshape(3, 1, 1)
        img = img * (np.where(partmap >= 0, self._shade, np.float32(1.0)) * gain)
        oy, ox = rng.randrange(H), rng.randrange(W)
        noise_std = 255.0 * cam.noise * rng.uniform(0.7, 1.3)
        img += self._noise_bank[:, oy:oy + H, ox:ox + W] * np.float32(noise_std) + np.float32(255.0 * cam.offset + 0.5)
        if cam.lowres:
            img = img.reshape(3, H // 2, 2, W // 2, 2).mean((2, 4)).repeat(2, 1).repeat(2, 2)
        image = torch.from_numpy(np.clip(img, 0.0, 255.0).astype(np.uint8))

        masks_out = torch.from_numpy(partmap[None] == np.arange(P).reshape(P, 1, 1))
        return image, masks_out, mask_box(full) if full is not None else torch.zeros(4)

