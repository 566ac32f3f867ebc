"""Pictures of explanations (probe grids, ranking lists) and where they go (TensorBoard or PNG).

Every picture is a ``uint8`` ``[3, H', W']`` tensor built with :func:`cama.explain.overlay` and
:func:`cama.explain.grid`:

* :func:`probe_grid` -- one row per probe: the probe, its reference (framed green for a true
  match, red for a false one), the maps on the probe (each branch, then summed), the maps on the
  reference (the same);
* :func:`ranking_figure` -- cama-ram Fig. 4 / Fig. 8: the query and its top-k gallery images
  (framed green / red) on the first row, then one row per branch and one for the summed map, the
  query's own map (RAM ``R_q^q``) first and each gallery image's map (``R_g^q``) after it.

:class:`ImageSink` sends them to every ``TensorBoardLogger`` of the trainer (``add_image``) or, when
there is none (CSV logger, no logger) or ``save_png`` is set, writes
``<log_dir>/explanations/epoch_XXX/<name>.png``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchvision.io import decode_png, encode_png

from cama.explain import grid, overlay

__all__ = [
    "GREEN",
    "RED",
    "to_uint8",
    "frame",
    "draw_boxes",
    "heat_overlays",
    "probe_grid",
    "ranking_figure",
    "logging_step",
    "ImageSink",
]

GREEN: tuple[int, int, int] = (0, 200, 0)
RED: tuple[int, int, int] = (230, 0, 0)
Color = tuple[int, int, int]


def to_uint8(images: Tensor, datamodule: Any = None) -> Tensor:
    """Network inputs ``[B, 3, H, W]`` -> displayable ``uint8`` (undoing the data module's normalisation).

    Uses ``datamodule.denormalize(images, as_uint8=True)`` when it exists, else its ``mean``/``std``,
    else takes the images as ``[0, 1]`` pictures.
    """
    if images.dtype == torch.uint8:
        return images
    denormalize = getattr(datamodule, "denormalize", None)
    if callable(denormalize):
        return denormalize(images.float(), as_uint8=True)
    mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
    unit = images.float()
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        unit = unit * torch.as_tensor(std, device=unit.device).view(shape) + torch.as_tensor(
            mean, device=unit.device
        ).view(shape)
    return unit.clamp(0, 1).mul(255).round().to(torch.uint8)


def frame(images: Tensor, colors: Sequence[Color | None], width: int = 3) -> Tensor:
    """Draw a coloured frame of ``width`` pixels inside each ``uint8`` image (None: no frame)."""
    out = images.clone()
    for image, color in zip(out, colors):
        if color is None:
            continue
        value = torch.tensor(color, dtype=torch.uint8, device=image.device)[:, None, None]
        image[:, :width, :] = value
        image[:, -width:, :] = value
        image[:, :, :width] = value
        image[:, :, -width:] = value
    return out


def draw_boxes(images: Tensor, boxes: Tensor, color: Color = (255, 255, 255), width: int = 1) -> Tensor:
    """Outline one ``(x1, y1, x2, y2)`` box per ``uint8`` image, vectorised (empty boxes are skipped)."""
    height, width_px = images.shape[-2:]
    boxes = boxes.to(images.device).float().round().long()
    x1, y1 = boxes[:, 0, None], boxes[:, 1, None]
    x2, y2 = boxes[:, 2, None] - 1, boxes[:, 3, None] - 1  # last covered column / row
    ys = torch.arange(height, device=images.device)[None]
    xs = torch.arange(width_px, device=images.device)[None]
    in_y, in_x = (ys >= y1) & (ys <= y2), (xs >= x1) & (xs <= x2)  # [B, H], [B, W]
    edge_y = in_y & ((ys - y1 < width) | (y2 - ys < width))
    edge_x = in_x & ((xs - x1 < width) | (x2 - xs < width))
    outline = (edge_y[:, :, None] & in_x[:, None, :]) | (in_y[:, :, None] & edge_x[:, None, :])
    outline &= ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))[:, None, None]
    value = torch.tensor(color, dtype=images.dtype, device=images.device)[None, :, None, None]
    return torch.where(outline[:, None], value, images)


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


def logging_step(trainer: pl.Trainer) -> int:
    """The step Lightning logs this epoch's scalars at, so that images and scalars line up.

    Lightning logs epoch-end metrics at its count of optimizer steps taken so far
    (``fit_loop.epoch_loop._batches_that_stepped``, one less than ``global_step`` during the
    validation that ends a training epoch); ``global_step`` when that counter is not there.
    """
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(getattr(loop, "_batches_that_stepped", trainer.global_step))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+\-]", "_", name)


def _encode_png(image: Tensor) -> bytes:
    """``uint8`` ``[3, H, W]`` -> PNG bytes at zlib level 1 (about 2.5x faster than level 6)."""
    return encode_png(image.contiguous(), compression_level=1).numpy().tobytes()


def _tensorboard_image(
    logger: TensorBoardLogger, tag: str, png: bytes, shape: Sequence[int], step: int
) -> None:
    """Add an already encoded PNG to a TensorBoard logger.

    ``SummaryWriter.add_image`` would encode the picture again with PIL at zlib level 6 (~0.1 s
    for a 500x500 grid, 4x our level-1 encoding), so the summary is written directly through the
    writer's file writer; ``add_image`` is the fallback when that writer API is not there.
    """
    writer = logger.experiment
    get_file_writer = getattr(writer, "_get_file_writer", None)
    if get_file_writer is None:
        writer.add_image(
            tag, decode_png(torch.frombuffer(bytearray(png), dtype=torch.uint8)), global_step=step
        )
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    height, width = int(shape[-2]), int(shape[-1])
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)
    get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


class ImageSink:
    """Where the pictures of one evaluation epoch go.

    Build it with :meth:`from_trainer` on **every** process (``trainer.log_dir`` is a broadcast);
    call :meth:`write` on rank zero only. Each picture is encoded once (PNG, zlib level 1) for
    TensorBoard and the files alike.
    """

    def __init__(self, loggers: list[TensorBoardLogger], directory: Path | None) -> None:
        self.loggers = loggers
        self.directory = directory

    @classmethod
    def from_trainer(
        cls, trainer: pl.Trainer, save_png: bool = False, folder: str = "explanations"
    ) -> ImageSink:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        directory = None
        if save_png or not loggers:
            log_dir = trainer.log_dir or trainer.default_root_dir  # collective: every rank
            directory = Path(log_dir) / folder
        return cls(loggers, directory)

    def write(
        self, name: str, image: Tensor, step: int, epoch: int, prefix: str = "explanations"
    ) -> list[str]:
        """Log ``image`` (``uint8`` ``[3, H, W]``) as ``<prefix>/<name>``; returns the PNG paths written."""
        image = image.detach().cpu()
        png = _encode_png(image)
        for logger in self.loggers:
            _tensorboard_image(logger, f"{prefix}/{name}", png, image.shape, step)
        written = []
        if self.directory is not None:
            parts = [_safe_name(p) for p in name.split("/") if p]
            path = self.directory.joinpath(f"epoch_{epoch:03d}", *parts[:-1], f"{parts[-1]}.png")
            os.makedirs(path.parent, exist_ok=True)
            path.write_bytes(png)
            written.append(str(path))
        return written
