"""From raw maps to pictures: ``postprocess``, colour maps, overlays and grids.

``postprocess`` is the single normalisation step shared by every map of ``cama.explain``
(``docs/explanations.md#postprocess-and-render``: ReLU -> bilinear upsampling to image size ->
per-map min-max to ``[0, 1]``, a constant map becoming all zeros). The rendering helpers turn
normalised maps into ``uint8`` RGB tensors ``[B, 3, H, W]`` that TensorBoard's ``add_images`` or
``torchvision.io.write_png`` take as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid

from ._common import full_precision

__all__ = ["minmax_normalize", "postprocess", "colormap", "colorize", "draw_boxes", "overlay", "grid"]

Colormap = Literal["jet", "turbo"]
Size = int | tuple[int, int] | Sequence[int] | torch.Size


def minmax_normalize(maps: Tensor) -> Tensor:
    """Per-map min-max over the two last dimensions to ``[0, 1]``; a constant map gives zeros.

    NaN entries count as 0 and infinities as the largest finite values, so the result never
    holds a NaN.

    Args:
        maps: ``[..., h, w]``.

    Returns:
        ``[..., h, w]`` in ``[0, 1]``, float32 (float64 for float64 maps); computed in that dtype
        (half types would lose the small ranges of min-max).
    """
    with full_precision(maps) as (values,):
        values = torch.nan_to_num(values, nan=0.0)
        low = values.amin(dim=(-2, -1), keepdim=True)
        span = values.amax(dim=(-2, -1), keepdim=True) - low
        positive = span > 0
        scaled = (values - low) / torch.where(positive, span, torch.ones_like(span))
        scaled = torch.where(positive, scaled, torch.zeros_like(scaled))
        return torch.nan_to_num(scaled, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)


def _as_size(size: Size | None, default: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        return default
    if isinstance(size, int):
        return (size, size)
    height, width = (int(s) for s in tuple(size)[-2:])
    return (height, width)


def postprocess(
    maps: Tensor, size: Size | None = None, normalize: bool = True, rectify: bool = True
) -> Tensor:
    """ReLU -> bilinear upsampling to ``size`` -> per-map min-max to ``[0, 1]``.

    This is the display step the papers apply to their raw maps (dist-cam Sec. 3, cama-ram
    Sec. 3.4 "upsampling the RAMs", fam Eq. 13 ReLU + bilinear interpolation, ltgrad-cam Eq. 3
    ReLU and Eq. 7 ``bilinearUpscale(normalize(.))``). A constant map (all zeros after the ReLU
    included) becomes all zeros; the result never holds a NaN.

    Args:
        maps: raw maps ``[..., h, w]`` (e.g. ``[B, h, w]`` or ``[B, N_branches, h, w]``).
        size: output ``(H, W)`` (an int means square; a longer shape such as ``images.shape``
            uses its two last entries); ``None`` keeps ``(h, w)``.
        normalize: False skips the min-max and returns the upsampled ReLU map on its own scale
            (the terms of ltgrad-cam's literal layerization sum, Eq. 8).
        rectify: False skips the ReLU (Score-CAM's masks: each channel upsampled and min-max
            normalised as it is, Wang et al. 2020 Eq. 5).

    Returns:
        ``[..., H, W]`` in ``[0, 1]`` (``>= 0`` with ``normalize=False``), float32 (float64 for
        float64 maps): float16 / bfloat16 maps are upcast first and the whole step runs in float32
        without autocast.
    """
    if maps.ndim < 2:
        raise ValueError(f"maps must be [..., h, w], got shape {tuple(maps.shape)}")
    leading, (height, width) = maps.shape[:-2], maps.shape[-2:]
    out_size = _as_size(size, (height, width))
    with full_precision(maps) as (work,):
        work = torch.nan_to_num(work, nan=0.0)
        work = work.relu() if rectify else work
        work = work.reshape(-1, 1, height, width)
        # A constant map stays constant in exact arithmetic, but bilinear weights can add rounding
        # noise that min-max would blow up to [0, 1]: decide constancy before upsampling.
        constant = work.amax(dim=(-2, -1), keepdim=True) == work.amin(dim=(-2, -1), keepdim=True)
        if out_size != (height, width):
            work = F.interpolate(work, size=out_size, mode="bilinear", align_corners=False)
        if not normalize:
            return work.reshape(*leading, *out_size)
        normalized = torch.where(constant, torch.zeros_like(work), minmax_normalize(work))
        return normalized.reshape(*leading, *out_size)


# --------------------------------------------------------------------------------------------------
# colour maps
# --------------------------------------------------------------------------------------------------
# Google's polynomial approximation of Turbo (A. Mikhailov, 2019; degree-5 fit by R. Du).
_TURBO_COEFFICIENTS = (
    (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943),
    (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604),
    (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973),
)


def colormap(name: Colormap = "jet", levels: int = 256, device: torch.device | str | None = None) -> Tensor:
    """A colour lookup table ``[levels, 3]`` in ``[0, 1]`` computed in torch.

    ``"jet"``: the classic piecewise-linear MATLAB jet (dark blue -> cyan -> yellow -> dark red);
    ``"turbo"``: the polynomial approximation of Google's Turbo.
    """
    x = torch.linspace(0.0, 1.0, levels, device=device, dtype=torch.float32)
    if name == "jet":
        channels = [(1.5 - (4.0 * x - centre).abs()) for centre in (3.0, 2.0, 1.0)]
    elif name == "turbo":
        channels = []
        for coefficients in _TURBO_COEFFICIENTS:
            value = torch.zeros_like(x)
            for coefficient in reversed(coefficients):  # Horner
                value = value * x + coefficient
            channels.append(value)
    else:
        raise ValueError(f"colormap must be 'jet' or 'turbo', got {name!r}")
    return torch.stack(channels, dim=-1).clamp_(0.0, 1.0)


def colorize(maps: Tensor, name: Colormap = "jet") -> Tensor:
    """Normalised maps ``[B, H, W]`` in ``[0, 1]`` -> float RGB heat maps ``[B, 3, H, W]`` in ``[0, 1]``."""
    table = colormap(name, device=maps.device)
    index = (torch.nan_to_num(maps.float(), nan=0.0).clamp(0.0, 1.0) * (table.shape[0] - 1)).round().long()
    return table[index].movedim(-1, -3)


def _images_to_unit(images: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """Images ``[B, C, H, W]`` (uint8, float in [0, 1], or normalised) -> float RGB in [0, 1]."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [B, 1 or 3, H, W], got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        unit = images.float() / 255.0
    else:
        unit = images.float()
        if std is not None:
            unit = unit * torch.as_tensor(std, dtype=unit.dtype, device=unit.device)[None, :, None, None]
        if mean is not None:
            unit = unit + torch.as_tensor(mean, dtype=unit.dtype, device=unit.device)[None, :, None, None]
    unit = unit.expand(-1, 3, -1, -1) if unit.shape[1] == 1 else unit
    return unit.clamp(0.0, 1.0)


def overlay(
    images: Tensor,
    maps: Tensor,
    alpha: float = 0.5,
    colormap_name: Colormap = "jet",
    normalize: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    boxes: Tensor | Sequence[Tensor] | None = None,
    box_color: str | tuple[int, int, int] = "white",
) -> Tensor:
    """Heat-map overlays as ``uint8`` RGB images, ready for TensorBoard ``add_images`` or a PNG.

    ``out = (1 - alpha) * image + alpha * colormap(map)``, rounded to ``uint8``.

    Args:
        images: ``[B, 3, H, W]`` (or 1 channel) ``uint8``, or float in ``[0, 1]``; float images
            normalised with ``(x - mean) / std`` are restored when ``mean`` and ``std`` are given.
        maps: ``[B, h, w]`` maps of any size. With ``normalize=True`` (raw maps) they go through
            :func:`postprocess` to ``(H, W)``; with ``normalize=False`` they must already be in
            ``[0, 1]`` and are only resized (bilinear) and clamped.
        alpha: heat-map opacity in ``[0, 1]``.
        colormap_name: ``"jet"`` or ``"turbo"``.
        normalize: see ``maps``.
        mean, std: per-channel normalisation of float images to undo.
        boxes: optional ground-truth boxes drawn on top, 2 pixels wide (:func:`draw_boxes`): a
            ``[B, 4]`` or ``[B, n, 4]`` tensor or one ``[n_i, 4]`` tensor per image, in
            ``(x1, y1, x2, y2)`` pixels.
        box_color: colour of the boxes.

    Returns:
        ``uint8`` ``[B, 3, H, W]``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    unit_images = _images_to_unit(images, mean, std)
    size = tuple(unit_images.shape[-2:])
    if maps.ndim != 3 or maps.shape[0] != unit_images.shape[0]:
        raise ValueError(f"maps must be [B={unit_images.shape[0]}, h, w], got {tuple(maps.shape)}")
    if normalize:
        heat_values = postprocess(maps, size)
    else:
        heat_values = maps.float()
        if tuple(maps.shape[-2:]) != size:
            heat_values = F.interpolate(
                heat_values[:, None], size=size, mode="bilinear", align_corners=False
            )[:, 0]
        heat_values = torch.nan_to_num(heat_values, nan=0.0).clamp(0.0, 1.0)
    heat = colorize(heat_values.to(unit_images.device), colormap_name)
    blended = ((1.0 - alpha) * unit_images + alpha * heat).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    if boxes is None:
        return blended
    if not isinstance(boxes, Tensor):  # one [n_i, 4] per image: pad with empty boxes
        per_image = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
        if len(per_image) != blended.shape[0]:
            raise ValueError("need one box tensor per image")
        most = max([b.shape[0] for b in per_image] + [1])
        boxes = torch.zeros(len(per_image), most, 4)
        for i, b in enumerate(per_image):
            boxes[i, : b.shape[0]] = b
    color = _COLORS.get(box_color, box_color) if isinstance(box_color, str) else box_color
    return draw_boxes(blended, boxes, color, width=2)


_COLORS = {"white": (255, 255, 255), "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def draw_boxes(
    images: Tensor, boxes: Tensor, color: tuple[int, int, int] = (255, 255, 255), width: int = 1
) -> Tensor:
    """Outline boxes ``(x1, y1, x2, y2)`` (pixels, ``x2``/``y2`` exclusive) on ``uint8`` images.

    The one box-drawing path of the project. Hand-written rather than torchvision's
    ``draw_bounding_boxes`` because that one draws one image at a time through PIL on the CPU;
    this is one masked ``where`` for the whole batch, on the images' device.

    Args:
        images: ``uint8`` ``[B, 3, H, W]``.
        boxes: ``[B, 4]`` (one box per image) or ``[B, n, 4]``; empty boxes (``x2 <= x1`` or
            ``y2 <= y1``) are skipped.
        color: RGB of the outline.
        width: outline thickness in pixels, inside the box.
    """
    height, width_px = images.shape[-2:]
    boxes = boxes.to(images.device).float().round().long()
    boxes = boxes[:, None] if boxes.dim() == 2 else boxes  # [B, n, 4]
    x1, y1 = boxes[..., 0, None], boxes[..., 1, None]  # [B, n, 1]
    x2, y2 = boxes[..., 2, None] - 1, boxes[..., 3, None] - 1  # last covered column / row
    ys = torch.arange(height, device=images.device)
    xs = torch.arange(width_px, device=images.device)
    in_y, in_x = (ys >= y1) & (ys <= y2), (xs >= x1) & (xs <= x2)  # [B, n, H], [B, n, W]
    edge_y = in_y & ((ys - y1 < width) | (y2 - ys < width))
    edge_x = in_x & ((xs - x1 < width) | (x2 - xs < width))
    outline = (edge_y[..., :, None] & in_x[..., None, :]) | (in_y[..., :, None] & edge_x[..., None, :])
    outline &= ((boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1]))[..., None, None]
    value = torch.tensor(color, dtype=images.dtype, device=images.device)[None, :, None, None]
    return torch.where(outline.any(dim=1)[:, None], value, images)


def grid(
    images: Tensor | Sequence[Tensor],
    nrow: int = 8,
    padding: int = 2,
    pad_value: int = 255,
) -> Tensor:
    """Tile ``uint8`` images into one ``uint8`` picture ``[3, H', W']`` (``torchvision.utils.make_grid``).

    Typical use: one row per query, ``[query overlay, top-1 gallery overlay, ...]``: pass the
    rows concatenated (``torch.cat(rows)``) or as a list of ``[n_i, 3, H, W]`` tensors and set
    ``nrow`` to the row length.

    Args:
        images: ``[N, 3, H, W]`` ``uint8`` (float in ``[0, 1]`` is converted), or a sequence of such
            tensors (or single ``[3, H, W]`` images), all of one size.
        nrow: images per row.
        padding: pixels between images.
        pad_value: grey level of the padding, 0-255.

    Returns:
        ``uint8`` ``[3, H', W']``; write it with ``torchvision.io.write_png(grid.cpu(), path)`` or
        log it with ``SummaryWriter.add_image(tag, grid)``.
    """
    if not isinstance(images, Tensor):
        images = torch.cat([image[None] if image.ndim == 3 else image for image in images])
    if images.dtype != torch.uint8:
        images = images.float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
