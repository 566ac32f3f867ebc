"""Maps over training: one probe's maps, one column per validation epoch, one row per method.

:func:`epoch_strip` lays the kept maps of a probe (small maps, e.g. 32 pixels on the long side, as
``callbacks.maps_over_training`` keeps them) over the probe's picture with :mod:`cama.viz.layout`:
a title, an ``epoch <e>`` header per column, the method names on the left, a colour bar and a
one-line legend. Each map is min-max normalised on its own (:func:`cama.explain.minmax_normalize`),
as in the other pictures.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from cama.explain import minmax_normalize
from cama.viz.layout import display_scale, sheet
from cama.viz.pictures import heat_overlays

__all__ = ["epoch_strip", "epoch_strip_legend"]


def epoch_strip(
    picture: Tensor,
    maps: Tensor,
    methods: Sequence[str],
    epochs: Sequence[int],
    alpha: float = 0.5,
    colormap: str = "jet",
    *,
    title: str | None = None,
    legend: bool = True,
) -> Tensor:
    """One probe's maps across epochs.

    Args:
        picture: the probe, ``uint8`` ``[3, H, W]``.
        maps: ``[M, T, h, w]`` (M methods, T epochs, any size: upsampled bilinearly to ``H x W``).
        methods: the row labels, ``M`` names.
        epochs: the column headers, ``T`` epoch numbers.
        title: the first line.
        legend: draw the one-line legend at the bottom.

    Returns:
        ``uint8`` ``[3, H', W']``.
    """
    if maps.ndim != 4 or maps.shape[0] != len(methods) or maps.shape[1] != len(epochs):
        raise ValueError(
            f"maps must be [M={len(methods)}, T={len(epochs)}, h, w] (methods x epochs), "
            f"got {tuple(maps.shape)}"
        )
    count, steps = maps.shape[:2]
    scale = display_scale(*picture.shape[-2:])
    repeated = picture[None].expand(count * steps, -1, -1, -1)
    values = minmax_normalize(maps.flatten(0, 1).to(picture.device))
    tiles = heat_overlays(repeated, values, alpha, colormap, scale=scale).cpu()
    text = "columns: the epochs kept · each map min-max normalised (0-1)"
    return sheet(
        tiles.reshape(count, steps, *tiles.shape[1:]), scale, headers=[f"epoch {e}" for e in epochs],
        row_labels=list(methods), title=title, colormap=colormap, legend=text if legend else "",
    )


def epoch_strip_legend(max_epochs: int) -> str:
    """What an :func:`epoch_strip` shows, in Markdown (the callbacks' README)."""
    return (
        "One probe's maps over training: one column per validation epoch (`epoch e`; at most "
        f"{max_epochs}, the first and the latest always, the others thinned evenly as training goes on), "
        "one row per method, each the summed map on the probe against its reference of that epoch, "
        "kept small (32 pixels on the long side) and each min-max normalised on its own."
    )

