"""Line plots of the deletion / insertion curves (:mod:`cama.metrics.deletion`), drawn with Pillow.

The project ships no plotting library: :func:`curve_panels` draws panels side by side and in rows
(``explain.py``: deletion | insertion, one row per score), each with its axes, ticks at 0, 0.5 and 1
of the fraction of pixels removed / inserted and at the ends and the middle of its curves' range
(their minimum and maximum, a twentieth of it added on both sides), one line per map
in a fixed palette, and a legend naming each map with its area under the curve. Returns ``uint8``
``[3, H, W]`` like every picture of :mod:`cama.viz`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from cama.viz.labels import BACKGROUND, TEXT, line_height, load_font

__all__ = ["PALETTE", "curve_panels"]

#: line colours, in the order of the maps (methods first, then the reference maps)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
    (140, 86, 75), (227, 119, 194), (23, 190, 207), (188, 189, 34), (127, 127, 127),
    (0, 0, 0), (0, 0, 128), (128, 0, 0), (0, 128, 128), (255, 215, 0),  # 15: every method and both references
)
GREY = (190, 190, 190)
Panel = tuple[str, Mapping[str, Tensor], str]  # title, {map: curve [steps + 1]}, x-axis label


def _range(curves: Mapping[str, Tensor]) -> tuple[float, float]:
    values = torch.cat([c.float().reshape(-1) for c in curves.values()])
    values = values[torch.isfinite(values)]
    low, high = (float(values.min()), float(values.max())) if values.numel() else (0.0, 1.0)
    if high - low < 1e-6:
        return low - 0.5, high + 0.5
    margin = (high - low) / 20
    return low - margin, high + margin


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], panel: Panel, font, aucs: bool) -> None:
    """One panel in ``box`` (x0, y0, x1, y1): title, axes, ticks, lines, legend."""
    title, curves, x_label = panel
    x0, y0, x1, y1 = box
    line = line_height(font)
    draw.text((x0, y0), title, fill=TEXT, font=font)
    tick = max(40, int(font.getlength("-0.00")) + 8)
    legend_rows = len(curves)
    left, top = x0 + tick, y0 + line + line // 2
    right, bottom = x1 - line, y1 - 2 * line - legend_rows * line
    low, high = _range(curves)

    def at(fraction: float, value: float) -> tuple[float, float]:
        return left + fraction * (right - left), bottom - (value - low) / (high - low) * (bottom - top)

    draw.rectangle((left, top, right, bottom), outline=TEXT, width=1)
    for fraction in (0.0, 0.5, 1.0):
        x, _ = at(fraction, low)
        draw.line((x, bottom, x, bottom + 4), fill=TEXT)
        label = f"{fraction:g}"
        draw.text((x - font.getlength(label) / 2, bottom + 5), label, fill=TEXT, font=font)
    for value in (low, (low + high) / 2, high):
        _, y = at(0.0, value)
        draw.line((left - 4, y, left, y), fill=TEXT)
        if value not in (low, high):
            draw.line((left + 1, y, right - 1, y), fill=GREY)
        label = f"{value:.3g}"
        draw.text((left - 6 - font.getlength(label), y - line / 2), label, fill=TEXT, font=font)
    x_text = left + (right - left - font.getlength(x_label)) / 2
    draw.text((x_text, bottom + 5 + line), x_label, fill=TEXT, font=font)
    legend_top = bottom + 5 + 2 * line
    for index, (name, curve) in enumerate(curves.items()):
        colour = PALETTE[index % len(PALETTE)]
        points = curve.float().reshape(-1)
        steps = max(1, points.numel() - 1)
        xy = [at(k / steps, float(v)) for k, v in enumerate(points.tolist())]
        draw.line(xy, fill=colour, width=3, joint="curve")
        y = legend_top + index * line
        draw.line((left, y + line / 2, left + 2 * line, y + line / 2), fill=colour, width=3)
        text = name
        if aucs:
            area = float(torch.trapezoid(points, dx=1.0 / steps))
            text = f"{name}  (AUC {area:.3f})"
        draw.text((left + 2 * line + 6, y), text, fill=TEXT, font=font)


def curve_panels(
    rows: Sequence[Sequence[Panel]], title: str = "", panel_size: tuple[int, int] = (420, 300),
    font_size: int = 13, aucs: bool = True,
) -> Tensor:
    """Panels ``rows[r][c]`` = ``(title, {map: curve [steps + 1]}, x label)`` drawn in a grid, each
    curve over the fractions ``k / steps`` of ``[0, 1]``, a legend with each map's trapezoidal AUC
    (``aucs``); ``title`` on top. Returns ``uint8`` ``[3, H, W]``."""
    if not rows or not all(rows):
        raise ValueError("curve_panels needs at least one row of panels")
    font = load_font(font_size)
    line = line_height(font)
    most = max(len(curves) for row in rows for _, curves, _ in row)
    width, height = panel_size
    height += most * line
    columns = max(len(row) for row in rows)
    top = line + line // 2 if title else 0
    image = Image.new("RGB", (columns * width, top + len(rows) * height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((8, line // 4), title, fill=TEXT, font=font)
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            box = (c * width + 8, top + r * height + 4, (c + 1) * width - 4, top + (r + 1) * height - 4)
            _panel(draw, box, panel, font, aucs)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
