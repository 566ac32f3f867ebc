"""Pictures of explanations: probe grids and ranking lists, ``uint8`` tensors ready for a PNG.

Every picture is a ``uint8`` ``[3, H', W']`` tensor built with :func:`cama.explain.overlay` and
:func:`cama.explain.grid`:

* :func:`probe_grid` -- one row per probe: the probe, its reference (framed green for a true
  match, red for a false one), the maps on the probe (each branch, then summed), the maps on the
  reference (the same);
* :func:`ranking_figure` -- cama-ram Fig. 4 / Fig. 8: the query and its top-k gallery images
  (framed green / red) on the first row, then one row per branch and one for the summed map, the
  query's own map (RAM ``R_q^q``) first and each gallery image's map (``R_g^q``) after it.

Where they go (TensorBoard, PNG files) is the caller's business (``callbacks.image_sink``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from cama.explain import draw_boxes, grid, overlay
from cama.protocols import ShowsImages

__all__ = [
    "GREEN",
    "RED",
    "to_uint8",
    "frame",
    "draw_boxes",
    "heat_overlays",
    "probe_grid",
    "ranking_figure",
]

GREEN: tuple[int, int, int] = (0, 200, 0)
RED: tuple[int, int, int] = (230, 0, 0)
Color = tuple[int, int, int]


def to_uint8(images: Tensor, datamodule: Any = None) -> Tensor:
    """Network inputs ``[B, 3, H, W]`` -> displayable ``uint8``.

    A data module that offers ``denormalize`` (:class:`~cama.protocols.ShowsImages`) undoes its own
    normalisation; without one the images are taken as ``[0, 1]`` pictures.
    """
    if images.dtype == torch.uint8:
        return images
    if isinstance(datamodule, ShowsImages):
        return datamodule.denormalize(images.float(), as_uint8=True)
    return images.float().clamp(0, 1).mul(255).round().to(torch.uint8)


def frame(images: Tensor, colors: Sequence[Color | None], width: int = 3) -> Tensor:
    """Draw a coloured frame of ``width`` pixels inside each ``uint8`` image (None: no frame)."""
    height, width_px = images.shape[-2:]
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width_px, device=images.device)
    border = ((rows < width) | (rows >= height - width))[:, None] | ((cols < width) | (cols >= width_px - width))[None]
    framed = torch.tensor([c is not None for c in colors], dtype=torch.bool, device=images.device)
    values = torch.tensor([c or (0, 0, 0) for c in colors], dtype=images.dtype, device=images.device).reshape(-1, 3)
    return torch.where(border & framed[:, None, None, None], values[:, :, None, None], images)


def heat_overlays(
    images: Tensor,
    maps: Tensor,
    alpha: float = 0.5,
    colormap: str = "jet",
    boxes: Tensor | None = None,
) -> Tensor:
    """``uint8`` overlays of maps in ``[0, 1]`` ``[B, H, W]`` on ``uint8`` images ``[B, 3, H, W]``,
    with an optional white ground-truth box ``[B, 4]`` per image."""
    out = overlay(images, maps, alpha=alpha, colormap_name=colormap, normalize=False)  # type: ignore
    return out if boxes is None else draw_boxes(out, boxes)


def _match_colors(matches: Tensor | None, count: int) -> list[Color | None]:
    if matches is None:
        return [None] * count
    return [GREEN if bool(m) else RED for m in matches]


def probe_grid(
    probes: Tensor,
    references: Tensor,
    probe_maps: Tensor,
    reference_maps: Tensor,
    matches: Tensor | None = None,
    alpha: float = 0.5,
    colormap: str = "jet",
    probe_boxes: Tensor | None = None,
    reference_boxes: Tensor | None = None,
) -> Tensor:
    """One row per probe: probe | reference (framed) | maps on the probe | maps on the reference.

    Args:
        probes, references: ``uint8`` ``[P, 3, H, W]``.
        probe_maps, reference_maps: ``[P, M, H, W]`` in ``[0, 1]`` (M maps: branches then summed).
        matches: ``[P]`` bool, whether each reference is a true match (green / red frame).
        probe_boxes, reference_boxes: optional ground-truth boxes ``[P, 4]`` drawn on the overlays.

    Returns:
        ``uint8`` ``[3, H', W']``.
    """
    count, num_maps = probe_maps.shape[:2]

    def overlays(pictures: Tensor, maps: Tensor, boxes: Tensor | None) -> Tensor:  # [P, M, 3, H, W], one call
        repeated = pictures[:, None].expand(-1, num_maps, -1, -1, -1).flatten(0, 1)
        box_rows = None if boxes is None else boxes[:, None].expand(-1, num_maps, -1).flatten(0, 1)
        out = heat_overlays(repeated, maps.flatten(0, 1), alpha, colormap, box_rows)
        return out.reshape(count, num_maps, *out.shape[1:]).cpu()

    rows = torch.cat(
        [
            probes[:, None].cpu(),
            frame(references, _match_colors(matches, count))[:, None].cpu(),
            overlays(probes, probe_maps, probe_boxes),
            overlays(references, reference_maps, reference_boxes),
        ],
        dim=1,
    )  # [P, 2 + 2M, 3, H, W]
    return grid(rows.flatten(0, 1), nrow=rows.shape[1])


def ranking_figure(
    query: Tensor,
    gallery: Tensor,
    matches: Tensor | None,
    query_maps: Tensor,
    gallery_maps: Tensor,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> Tensor:
    """A ranking list with a row of maps per branch (cama-ram Fig. 4 and Fig. 8).

    Args:
        query: ``uint8`` ``[3, H, W]``.
        gallery: ``uint8`` ``[k, 3, H, W]``, the top-k in rank order.
        matches: ``[k]`` bool, true / false matches (green / red frames); None draws no frames.
        query_maps: ``[M, H, W]`` in ``[0, 1]``: the query's maps (branches, then summed).
        gallery_maps: ``[k, M, H, W]`` in ``[0, 1]``.

    Returns:
        ``uint8`` ``[3, H', W']``: ``M + 1`` rows of ``k + 1`` images.
    """
    count, num_maps = gallery.shape[0], query_maps.shape[0]
    header = torch.cat([query[None].cpu(), frame(gallery, _match_colors(matches, count)).cpu()])
    pictures = torch.cat([query[None], gallery])  # [k + 1, 3, H, W]
    maps = torch.cat([query_maps[None], gallery_maps]).transpose(0, 1)  # [M, k + 1, H, W]
    repeated = pictures[None].expand(num_maps, -1, -1, -1, -1).flatten(0, 1)
    overlays = heat_overlays(repeated, maps.flatten(0, 1).to(pictures.device), alpha, colormap).cpu()
    return grid(torch.cat([header, overlays]), nrow=count + 1)
