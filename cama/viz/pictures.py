"""Pictures of explanations: probe grids and ranking lists, ``uint8`` tensors ready for a PNG.

Every picture is a ``uint8`` ``[3, H', W']`` tensor laid out by :func:`cama.viz.layout.sheet`: the
images upscaled to tiles at least 128 pixels high (:func:`cama.viz.layout.display_scale`), frames
and ground-truth boxes as wide as the tile size asks, a title line (e.g. the epoch), column headers,
captions under the tiles, a colour bar of the overlays' colour map (0 to 1) and a one-line legend
(:func:`legend_line`: the frames' colours, the boxes, ``d``, the maps' normalisation) at the bottom:

* :func:`probe_grid` -- one row per probe: the probe, its reference (framed green for a true
  match, red for a false one), then -- after a gap -- the maps on the probe (each branch, then
  summed), then the maps on the reference (the same). Captions: the probe's identity, the
  reference's distance and identity. Few-shot: a row *why class c beat the true class* under each
  misclassified query (:mod:`cama.viz.episode_contrast`).
* :func:`ranking_figure` -- cama-ram Fig. 4 / Fig. 8: the query, a gap, and its top-k gallery
  images (``rank 1`` ... headers, framed green / red, distance and identity under each) on the
  first row, then one row per branch and one for the summed map (labelled on the left), the
  query's own map (RAM ``R_q^q``) first and each gallery image's map (``R_g^q``) after it; with a
  :class:`ContrastRow`, a last row ``why rank r beat the true match``: the contrastive maps of
  ``s(q, g-) - s(q, g+)`` (:mod:`cama.explain.contrastive`) under the query, the false match ``g-``
  and the true match ``g+``, the other columns empty.

Where they go (TensorBoard, PNG files) is the caller's business (``callbacks.image_sink``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from cama.explain import draw_boxes, overlay
from cama.protocols import ShowsImages
from cama.viz.layout import Scale, display_scale, sheet, upscale

if TYPE_CHECKING:
    from cama.viz.episode_contrast import EpisodeContrastRows

__all__ = [
    "CONTRAST_LEGEND",
    "CONTRAST_LEGEND_LAYER",
    "ContrastRow",
    "GREEN",
    "RED",
    "to_uint8",
    "frame",
    "draw_boxes",
    "heat_overlays",
    "legend_line",
    "map_labels",
    "picture_title",
    "probe_grid",
    "probe_grid_legend",
    "ranking_figure",
    "ranking_legend",
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
    scale: Scale | None = None,
) -> Tensor:
    """``uint8`` overlays of maps in ``[0, 1]`` ``[B, H, W]`` on ``uint8`` images ``[B, 3, H, W]``,
    with an optional white ground-truth box ``[B, 4]`` per image.

    With a ``scale`` the overlays are upscaled by ``scale.factor`` (nearest) and the boxes drawn on
    the upscaled tiles with lines ``scale.box`` wide; without one, at the images' size, 1 pixel wide.
    """
    out = overlay(images, maps, alpha=alpha, colormap_name=colormap, normalize=False)  # type: ignore
    factor, width = (scale.factor, scale.box) if scale is not None else (1, 1)
    out = upscale(out, factor)
    return out if boxes is None else draw_boxes(out, boxes.float() * factor, width=width)


def _match_colors(matches: Tensor | None, count: int) -> list[Color | None]:
    if matches is None:
        return [None] * count
    return [GREEN if bool(m) else RED for m in matches]


def map_labels(count: int) -> list[str]:
    """Headers of ``count`` map columns: ``branch 1 .. branch N`` then ``sum`` (one map: ``map``)."""
    return ["map"] if count == 1 else [f"branch {i + 1}" for i in range(count - 1)] + ["sum"]


def picture_title(method: str, epoch: int | None = None, stage: str = "val", subject: str = "") -> str:
    """The title line: ``epoch 7 · val · ram`` (and `` · subject``); without an epoch, ``ram · subject``."""
    parts = ([f"epoch {epoch}", stage] if epoch is not None else []) + [method] + ([subject] if subject else [])
    return " · ".join(parts)


def _distance_caption(distance: Tensor | None, label: str) -> str:
    text = f"d {float(distance):.3g}" if distance is not None else ""
    return "\n".join(t for t in (text, label) if t)


def legend_line(matches: bool, boxes: bool, distances: bool, normalised: bool = True) -> str:
    """The one-line legend drawn under a picture: what its frames, boxes and numbers are, only
    those it shows (``matches``: green / red frames; ``boxes``: white ground-truth boxes;
    ``distances``: ``d`` captions), and that each map is min-max normalised to 0-1."""
    parts = (["frame green/red: true/false match"] if matches else []) + (
        ["white box: ground truth"] if boxes else []) + (["d: distance"] if distances else []) + (
        ["each map min-max normalised (0-1)"] if normalised else [])
    return " · ".join(parts)


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
    *,
    title: str | None = None,
    names: tuple[str, str] = ("probe", "reference"),
    probe_labels: Sequence[str] | None = None,
    reference_labels: Sequence[str] | None = None,
    distances: Tensor | None = None,
    legend: bool = True,
    contrast: EpisodeContrastRows | None = None,
) -> Tensor:
    """One row per probe: probe | reference (framed) | maps on the probe | maps on the reference.

    Args:
        probes, references: ``uint8`` ``[P, 3, H, W]``.
        probe_maps, reference_maps: ``[P, M, H, W]`` in ``[0, 1]`` (M maps: branches then summed).
        matches: ``[P]`` bool, whether each reference is a true match (green / red frame).
        probe_boxes, reference_boxes: optional ground-truth boxes ``[P, 4]`` drawn on the overlays.
        title: the first line (e.g. :func:`picture_title`).
        names: what the two image columns are (headers, and group headers ``maps on the <name>``; with
            one map each, the map columns are headed ``<name> map``).
        probe_labels, reference_labels: ``[P]`` identity / class texts under the images.
        distances: ``[P]`` probe-to-reference distances, under the reference.
        legend: draw the one-line legend (:func:`legend_line`) at the bottom.
        contrast: few-shot: a row under each misclassified query, why its class beat the true class
            (:class:`cama.viz.episode_contrast.EpisodeContrastRows`), or None.

    Returns:
        ``uint8`` ``[3, H', W']``.
    """
    count, num_maps = probe_maps.shape[:2]
    scale = display_scale(*probes.shape[-2:])

    def overlays(pictures: Tensor, maps: Tensor, boxes: Tensor | None) -> Tensor:  # [P, M, 3, h, w], one call
        repeated = pictures[:, None].expand(-1, num_maps, -1, -1, -1).flatten(0, 1)
        box_rows = None if boxes is None else boxes[:, None].expand(-1, num_maps, -1).flatten(0, 1)
        out = heat_overlays(repeated, maps.flatten(0, 1), alpha, colormap, box_rows, scale)
        return out.reshape(count, num_maps, *out.shape[1:]).cpu()

    framed = frame(upscale(references, scale.factor), _match_colors(matches, count), scale.frame)
    tiles = torch.cat(
        [
            upscale(probes, scale.factor)[:, None].cpu(),
            framed[:, None].cpu(),
            overlays(probes, probe_maps, probe_boxes),
            overlays(references, reference_maps, reference_boxes),
        ],
        dim=1,
    )  # [P, 2 + 2M, 3, h, w]
    labels = map_labels(num_maps)
    captions = [
        [
            probe_labels[i] if probe_labels is not None else "",
            _distance_caption(distances[i] if distances is not None else None,
                              reference_labels[i] if reference_labels is not None else ""),
            *[""] * (2 * num_maps),
        ]
        for i in range(count)
    ]
    if num_maps == 1:  # one map each: "<name> map" headers, no group headers
        headers, groups = [*names, *(f"{name} map" for name in names)], []
    else:
        headers = [*names, *labels, *labels]
        groups = [(2 + i * num_maps, 2 + (i + 1) * num_maps, f"maps on the {name}") for i, name in enumerate(names)]
    boxes = probe_boxes is not None or reference_boxes is not None
    text = legend_line(matches is not None, boxes, distances is not None)
    row_labels: list[str] = []
    if contrast is not None:
        tiles, captions, row_labels = contrast.insert(tiles, captions, probes, alpha, colormap, scale)
        text = f"{text} · {contrast.legend}"
    return sheet(
        tiles, scale, headers=headers, groups=groups, captions=captions, title=title,
        gaps_after=[1, 1 + num_maps], colormap=colormap, row_labels=row_labels, legend=text if legend else "",
    )


def ranking_figure(
    query: Tensor,
    gallery: Tensor,
    matches: Tensor | None,
    query_maps: Tensor,
    gallery_maps: Tensor,
    alpha: float = 0.5,
    colormap: str = "jet",
    *,
    title: str | None = None,
    query_label: str = "",
    gallery_labels: Sequence[str] | None = None,
    distances: Tensor | None = None,
    legend: bool = True,
    contrast: ContrastRow | None = None,
    ranks: Sequence[int] | None = None,
) -> Tensor:
    """A ranking list with a row of maps per branch (cama-ram Fig. 4 and Fig. 8).

    Args:
        query: ``uint8`` ``[3, H, W]``.
        gallery: ``uint8`` ``[k, 3, H, W]``, the top-k in rank order.
        matches: ``[k]`` bool, true / false matches (green / red frames); None draws no frames.
        query_maps: ``[M, H, W]`` in ``[0, 1]``: the query's maps (branches, then summed).
        gallery_maps: ``[k, M, H, W]`` in ``[0, 1]``.
        title: the first line (e.g. :func:`picture_title`).
        query_label, gallery_labels: identity / class texts under the query and each gallery image.
        distances: ``[k]`` query-to-gallery distances, under each gallery image.
        legend: draw the one-line legend (:func:`legend_line`) at the bottom.
        contrast: a last row, why a false match beat the true match (:class:`ContrastRow`), or None.
        ranks: each gallery image's rank (1-based; headers ``rank r``, a gap where they skip, e.g. the
            first true match appended after the top-k), default ``1 .. k``.

    Returns:
        ``uint8`` ``[3, H', W']``: a title, ``rank`` headers, ``M + 1`` labelled rows of ``k + 1``
        tiles (a gap after the query; ``M + 2`` with a contrast row), the captions under the first row,
        a colour bar.
    """
    count, num_maps = gallery.shape[0], query_maps.shape[0]
    scale = display_scale(*query.shape[-2:])
    pictures = torch.cat([query[None], gallery.to(query.device)])  # [k + 1, 3, H, W]
    images = upscale(pictures, scale.factor).cpu()
    images = torch.cat([images[:1], frame(images[1:], _match_colors(matches, count), scale.frame)])
    maps = torch.cat([query_maps[None], gallery_maps.to(query_maps.device)]).transpose(0, 1)  # [M, k + 1, H, W]
    repeated = pictures[None].expand(num_maps, -1, -1, -1, -1).flatten(0, 1)
    overlays = heat_overlays(repeated, maps.flatten(0, 1).to(pictures.device), alpha, colormap, scale=scale).cpu()
    tiles = torch.cat([images[None], overlays.reshape(num_maps, count + 1, *overlays.shape[1:])])
    captions = [query_label] + [
        _distance_caption(distances[j] if distances is not None else None,
                          gallery_labels[j] if gallery_labels is not None else "")
        for j in range(count)
    ]
    captions, labels = [captions] + [[""] * (count + 1)] * num_maps, ["images", *map_labels(num_maps)]
    text = legend_line(matches is not None, False, distances is not None)
    if contrast is not None:
        tiles = torch.cat([tiles, contrast.tiles(pictures, alpha, colormap, scale)[None]])
        captions, labels = captions + [contrast.captions(count)], labels + [contrast.label()]
        text = f"{text} · {contrast.legend}"
    ranks = list(ranks) if ranks is not None else list(range(1, count + 1))
    skips = [j + 1 for j in range(count - 1) if ranks[j + 1] != ranks[j] + 1]  # the column before a skip
    return sheet(
        tiles, scale, headers=["query", *[f"rank {r}" for r in ranks]], captions=captions,
        row_labels=labels, title=title, gaps_after=[0, *skips], colormap=colormap,
        legend=text if legend else "",
    )


#: what a contrastive row's colours mean (appended to a ranking list's one-line legend): the
#: forward-only maps (signed, one scale for the two gallery maps) and the layer CAMs' (their own
#: [0, 1] maps of the difference, positive part, each on its own scale)
CONTRAST_LEGEND = "last row: s(q,g-) - s(q,g+), 0.5 = 0"
CONTRAST_LEGEND_LAYER = "last row: map of s(q,g-) - s(q,g+), each on its own scale"


@dataclass(frozen=True)
class ContrastRow:
    """The row of a ranking list that says why rank ``negative + 1`` beat the true match.

    Attributes:
        maps: ``[3, H, W]`` in ``[0, 1]``, the contrastive maps on the query, the false match and the
            true match (:func:`cama.viz.figures.contrastive_maps`: signed, ``0.5`` is 0).
        negative, positive: the list positions (0-based) of the false and the true match.
        similarities: ``(s(q, g-), s(q, g+))``, the cosine similarities drawn under the two, or None.
    """

    maps: Tensor
    negative: int
    positive: int
    similarities: tuple[float, float] | None = None
    legend: str = CONTRAST_LEGEND

    def label(self) -> str:
        return f"why rank {self.negative + 1} beat\nthe true match"

    def tiles(self, pictures: Tensor, alpha: float, colormap: str, scale: Scale) -> Tensor:
        """``[k + 1, 3, h, w]``: the overlays in the query's, ``g-``'s and ``g+``'s columns of a list whose
        pictures (query first) are ``pictures``; background elsewhere."""
        columns = [0, self.negative + 1, self.positive + 1]
        maps = self.maps.to(pictures.device)
        drawn = heat_overlays(pictures[columns], maps, alpha, colormap, scale=scale).cpu()
        out = torch.full((pictures.shape[0], *drawn.shape[1:]), 255, dtype=torch.uint8)
        out[columns] = drawn
        return out

    def captions(self, count: int) -> list[str]:
        """The texts under the row's ``count + 1`` tiles: ``s`` under the two gallery images."""
        texts = [""] * (count + 1)
        if self.similarities is not None:
            texts[self.negative + 1], texts[self.positive + 1] = (f"s {s:.3f}" for s in self.similarities)
        return texts


def probe_grid_legend(names: tuple[str, str] = ("probe", "reference"), reference: str = "", branches: bool = True) -> str:
    """What a :func:`probe_grid` shows, in Markdown (the TensorBoard text of the callbacks);
    ``branches=False``: one map per image, no branches."""
    probe, ref = names
    maps = (
        f"*maps on the {probe}*: one per branch (`branch i`), then their `sum` | *maps on the {ref}*: the same"
        if branches else f"`{probe} map`: the map on the {probe} | `{ref} map`: the map on the {ref}"
    )
    return (
        f"One row per {probe}. Columns: **{probe}** | **{ref}**{f' ({reference})' if reference else ''}, framed "
        f"green when it is a true match, red when not | {maps}. Under the images: the identity or class "
        f"(`id`, `class`) and the {probe}-to-{ref} distance (`d`) where known. White boxes: the ground "
        "truth. The bar at the bottom: the colours of the map values 0 (low) to 1 (high), each map "
        "min-max normalised on its own."
    )


def ranking_legend(contrastive: bool = False) -> str:
    """What a :func:`ranking_figure` shows, in Markdown (``contrastive``: with its contrast row)."""
    contrast = (
        " When a false match outranks the first true match in the list, a last row *why rank r beat the "
        "true match* shows the summed map of `s(q, g-) - s(q, g+)` (cosine similarities, `s` under the "
        "two images) on the query, on that false match `g-` and on the true match `g+`, on signed "
        "scale (the query's map on its own, the two gallery maps on one): 0.5 is no effect, above "
        "favours the false match, below the true one."
    ) if contrastive else ""
    return (
        "A ranking list (cama-ram Fig. 4 / 8). First row: the **query**, then its gallery images by "
        "rank (`rank 1` = nearest), framed green for a true match, red for a false one, with the "
        "distance `d` and the identity / class under each. Then one row per branch (`branch i`) and "
        "one for the `sum`: the query's own map first, each gallery image's map against the query "
        f"after it.{contrast} The bar at the bottom: the colours of the map values 0 to 1."
    )
