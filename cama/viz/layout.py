"""The sheet every picture is laid out on: tiles in rows and columns, with their text.

:func:`display_scale` sizes a picture for TensorBoard's image cards, which show a picture at about
40% of its size: tiles are upscaled by a whole factor to at least :data:`MIN_TILE_HEIGHT` pixels
high, and the frames, box lines, gaps and font grow with the tile, so that a 0.4x view still shows
them. :func:`sheet` lays out upscaled tiles ``[R, C, 3, h, w]``, from top to bottom:

* a title line (e.g. ``epoch 7 · val · ram``);
* group headers spanning several columns (e.g. ``maps on the probe``), then one header per column;
* each row of tiles, with a label on its left (optional) and a caption band under it (optional,
  one text per tile, ``\\n`` for more lines);
* a colour bar of the overlays' colour map (:func:`cama.viz.labels.colorbar`);
* a one-line legend (optional: what the frames, boxes and numbers mean).

Wider background-coloured gaps follow the columns listed in ``gaps_after`` (the query of a ranking
list, the probe and reference of a probe grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cama.viz.labels import BACKGROUND, colorbar, line_height, load_font, text_band

__all__ = ["MIN_TILE_HEIGHT", "Scale", "display_scale", "upscale", "sheet"]

MIN_TILE_HEIGHT = 128
MIN_LEGEND_FONT = 9  # pixels: the legend's font shrinks down to this size to fit on one line
Group = tuple[int, int, str]  # columns [c0, c1) and their common header


@dataclass(frozen=True)
class Scale:
    """Display sizes of a picture whose images are ``height x width`` pixels.

    Attributes:
        factor: whole upscaling factor of the images.
        height, width: tile size after upscaling.
        frame: match-frame width; box: ground-truth box line width; padding: space between tiles;
        gap: the wider gap after some columns; font_size: text size in pixels.
    """

    factor: int
    height: int
    width: int
    frame: int
    box: int
    padding: int
    gap: int
    font_size: int


def display_scale(height: int, width: int, min_height: int = MIN_TILE_HEIGHT) -> Scale:
    """The :class:`Scale` of ``height x width`` images: tiles at least ``min_height`` high.

    A frame is a 20th of the tile height (6 pixels at 128: still 2 full pixels in a 0.4x view), a
    box line a 32nd, the font a 9th of the height (at most a 4.5th of the width, for the captions).
    """
    factor = max(1, math.ceil(min_height / max(1, int(height))))
    h, w = int(height) * factor, int(width) * factor
    padding = max(2, h // 32)
    return Scale(
        factor=factor, height=h, width=w, frame=max(2, round(h / 20)), box=max(1, round(h / 24)),
        padding=padding, gap=max(3 * padding, w // 4), font_size=max(10, min(round(h / 9), round(w / 4.5))),
    )


def upscale(images: Tensor, factor: int) -> Tensor:
    """Nearest-neighbour upscaling of ``[..., H, W]`` by a whole ``factor`` (exact, any dtype)."""
    if factor == 1:
        return images
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def _background(height: int, width: int) -> Tensor:
    return torch.tensor(BACKGROUND, dtype=torch.uint8)[:, None, None].expand(3, height, width).clone()


def sheet(
    tiles: Tensor,
    scale: Scale,
    headers: Sequence[str] = (),
    groups: Sequence[Group] = (),
    captions: Sequence[Sequence[str]] | None = None,
    row_labels: Sequence[str] = (),
    title: str | None = None,
    gaps_after: Sequence[int] = (),
    colormap: str | None = "jet",
    legend: str = "",
) -> Tensor:
    """Lay out ``uint8`` tiles ``[R, C, 3, h, w]`` (already at display size) as one ``uint8`` picture.

    Args:
        tiles: the pictures, row by row.
        scale: the sizes (:func:`display_scale`).
        headers: one header per column (empty: no header band).
        groups: headers spanning columns ``[c0, c1)``, on a band above ``headers``.
        captions: ``[R][C]`` texts under the tiles ('' for none); rows whose texts are all empty
            get no caption band.
        row_labels: one label per row, left of it (empty: no label column; ``\n`` for more lines).
        title: the first line.
        gaps_after: columns followed by a gap of ``scale.gap`` instead of ``scale.padding``.
        colormap: the colour bar's colour map (None: no colour bar).
        legend: one line of text at the very bottom (empty: none), in a smaller font where the
            picture's does not fit its width; the picture above it is the same pixels as without it.

    Returns:
        ``uint8`` ``[3, H', W']``.
    """
    rows, columns, _, h, w = tiles.shape
    font = load_font(scale.font_size)
    line, pad = line_height(font), scale.padding
    label_width = (
        int(max(font.getlength(text) for label in row_labels for text in label.split("\n"))) + 2 * pad
        if any(row_labels) else 0
    )
    extra = torch.zeros(columns, dtype=torch.long)
    for c in gaps_after:
        if 0 <= c < columns - 1:
            extra[c + 1 :] += scale.gap - pad
    x = (label_width + pad + torch.arange(columns) * (w + pad) + extra).tolist()
    width = x[-1] + w + pad

    def spans(texts: Sequence[str]) -> list[tuple[int, int, str]]:
        return [(x[c], x[c] + w, t) for c, t in enumerate(texts) if t]

    bands: list[Tensor] = [_background(pad, width)]
    if title:
        bands.append(text_band([(pad, width - pad, title)], width, line, font, align="left"))
    if groups:
        bands.append(text_band([(x[c0], x[c1 - 1] + w, t) for c0, c1, t in groups], width, line, font))
    if any(headers):
        bands.append(text_band(spans(headers), width, line, font))
    for r in range(rows):
        band = _background(h, width)
        for c in range(columns):
            band[:, :, x[c] : x[c] + w] = tiles[r, c]
        if label_width and row_labels[r]:
            high = line * (row_labels[r].count("\n") + 1)
            span = [(pad, label_width - pad, row_labels[r])]
            label = text_band(span, label_width, high, font, align="left")
            top = max(0, (h - high) // 2)
            band[:, top : top + high, :label_width] = label[:, : h - top]
        bands.append(band)
        texts = captions[r] if captions is not None else ()
        if any(texts):
            lines = max(t.count("\n") + 1 for t in texts)
            bands.append(text_band(spans(texts), width, lines * line, font))
        bands.append(_background(pad, width))
    if colormap is not None:
        bands.append(colorbar(width, max(4, line * 2 // 3), font, colormap))
        bands.append(_background(pad, width))
    if legend:  # in the largest font up to the picture's in which it fits the width
        size = scale.font_size
        small = font
        while size > MIN_LEGEND_FONT and small.getlength(legend) > width - 2 * pad:
            size -= 1
            small = load_font(size)
        bands.append(text_band([(pad, width - pad, legend)], width, line_height(small), small, align="left"))
        bands.append(_background(pad, width))
    return torch.cat(bands, dim=1)
