"""Text and the colour bar of the pictures, drawn with Pillow into ``uint8`` tensors.

No font file ships with the project: :func:`load_font` takes Pillow's own scalable default font
(``ImageFont.load_default(size=...)``, Pillow >= 10.1 with FreeType), else DejaVu Sans from the
system, else Pillow's small bitmap font. Every function returns a ``uint8`` ``[3, h, w]`` band on a
white background, which :mod:`cama.viz.layout` stacks above, below and beside the tiles.

* :func:`text_band` -- labels, each centred (or left-aligned) in its ``[x0, x1)`` span of one band;
* :func:`colorbar` -- the colour map of the overlays from 0 to 1, labelled at both ends.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from cama.explain import colormap as colormap_table

__all__ = ["BACKGROUND", "TEXT", "Font", "load_font", "line_height", "fit_text", "text_band", "colorbar"]

BACKGROUND: tuple[int, int, int] = (255, 255, 255)
TEXT: tuple[int, int, int] = (0, 0, 0)
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
Span = tuple[int, int, str]  # [x0, x1) and the text drawn in it


def load_font(size: int) -> Font:
    """A font of ``size`` pixels: Pillow's default, DejaVu Sans, or Pillow's bitmap font (fixed size)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1, or built without FreeType
        pass
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default()


def line_height(font: Font) -> int:
    """Pixels of one text line (the font's ascent plus descent, and a little air)."""
    left, top, right, bottom = font.getbbox("Ag|(")
    return int(bottom - min(top, 0)) + max(2, int(bottom - top) // 4)


def fit_text(text: str, font: Font, width: int) -> str:
    """``text``, shortened with an ellipsis until it is at most ``width`` pixels wide."""
    if width <= 0 or font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…" if text else ""


def _to_tensor(image: Image.Image) -> Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def text_band(spans: Sequence[Span], width: int, height: int, font: Font, align: str = "center") -> Tensor:
    """A white ``uint8`` ``[3, height, width]`` band with each span's text (``\\n`` for more lines)
    in black, fitted into ``[x0, x1)``: centred, from ``x0`` (``align="left"``) or up to ``x1``
    (``align="right"``)."""
    image = Image.new("RGB", (max(1, width), max(1, height)), BACKGROUND)
    draw = ImageDraw.Draw(image)
    step = line_height(font)
    for x0, x1, text in spans:
        for row, line in enumerate(text.split("\n")):
            line = fit_text(line, font, x1 - x0)
            if not line:
                continue
            left, top, right, _ = draw.textbbox((0, 0), line, font=font)
            if align == "left":
                x = x0 - left
            elif align == "right":
                x = x1 - right
            else:
                x = x0 + (x1 - x0 - (right - left)) // 2 - left
            draw.text((x, row * step + max(0, -top)), line, fill=TEXT, font=font)
    return _to_tensor(image)


def colorbar(width: int, bar_height: int, font: Font, name: str = "jet", label: str = "map value") -> Tensor:
    """The colour map ``name`` from 0 (left) to 1 (right) as a band ``[3, h, width]``: a ``bar_height``
    bar over the middle half of the width, ``0`` and ``1`` at its ends, ``label`` after it.

    Column ``j`` of the bar is the overlays' colour of the value ``j / (n - 1)``
    (:func:`cama.explain.colormap`'s 256 levels, rounded as :func:`cama.explain.colorize` does).
    """
    step = line_height(font)
    height = max(bar_height, step)
    bar_width = max(2, width // 2)
    x0 = (width - bar_width) // 2
    gap = max(2, step // 3)
    band = torch.cat(
        [
            text_band([(0, x0 - gap, "0")], x0, height, font, align="right"),
            torch.full((3, height, bar_width), 255, dtype=torch.uint8),
            text_band([(gap, width - x0 - bar_width, f"1   {label}")], width - x0 - bar_width, height, font, "left"),
        ],
        dim=2,
    )
    table = colormap_table(name)  # [256, 3] in [0, 1]
    levels = torch.linspace(0.0, 1.0, bar_width)
    colors = table[(levels * (table.shape[0] - 1)).round().long()].mul(255).round().to(torch.uint8)  # [n, 3]
    top = (height - bar_height) // 2
    band[:, top : top + bar_height, x0 : x0 + bar_width] = colors.T[:, None, :]
    return band
