"""Deletion and insertion curves of explanation maps, and the areas under them.

RISE (Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box Models", BMVC
2018, Sec. 4.1): the pixels of an image are ordered by its map, most important first, and

* **deletion** removes them in that order, ``steps`` equal steps: after step ``k`` the first
  ``n_k = floor(k H W / steps)`` pixels are replaced by a baseline (:mod:`cama.metrics.imputation`);
* **insertion** starts from the baseline image and puts the pixels back in the same order: after
  step ``k`` the first ``n_k`` pixels are the image's, the others the baseline's.

A model's score ``s`` is read after every step, giving ``steps + 1`` points at the fractions
``k / steps`` (the intact image, and the baseline image, are the ends of both curves); the area
under each curve is the trapezoidal rule over ``[0, 1]``,

    AUC = (1 / steps) * ( s_0 / 2 + s_1 + ... + s_{steps-1} + s_steps / 2 ).

A faithful map makes the score fall fast under deletion (a low deletion AUC) and rise fast under
insertion (a high insertion AUC). The maps (``[B, M, h, w]``: ``M`` maps of each image, e.g. one per
method) are upsampled bilinearly to the image size, as :func:`cama.metrics.mask_images` does; equal
values keep the raster order (a stable sort), so pixels a ReLU set to 0 go last, top row first.

**The score** is the caller's: ``score(images [N, C, H, W], rows [N]) -> [N]`` or ``[N, S]``, ``rows``
naming the image (the row of ``images``) each perturbed image comes from, so that a score can
depend on the probe (its reference, its true matches). :func:`perturbation_curves` knows no model.
The callers' scores (``docs/map-scores.md#deletion-and-insertion``): the cosine similarity to the
reference, the AP and the reciprocal rank of the first true match over the whole gallery
(:func:`cama.metrics.ranking.ranked_matches`), the softmax probability of a class.

**Batched**: every perturbed image of every row, map and step is built on the fly in chunks of
``batch_size`` and scored in one call per chunk; the intact and the fully removed image of a row
are scored once for all its maps (the intact one not at all when ``intact`` gives its score). So a
call costs ``B (1 + 2 M (steps - 1))`` images scored, plus ``B`` without ``intact``.

:func:`reference_maps` gives the maps a method must beat: ``"random"`` (seeded uniform noise) and
``"center_prior"`` (pixels removed from the image centre outwards, in centred boxes of the image's
aspect ratio: the map counterpart of the centred box of ``loc/center_baseline``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from cama.explain.precision import autocast_off
from cama.metrics.faithfulness import Z_95
from cama.metrics.imputation import check_baseline, fill_removed, gaussian_blur
from cama.metrics.states import add_sum_states, mean_and_interval

__all__ = [
    "CURVES",
    "REFERENCE_MAPS",
    "DeletionInsertion",
    "curve_auc",
    "curve_score_names",
    "perturbation_curves",
    "pixel_ranks",
    "reference_maps",
    "removed_counts",
]

CURVES: tuple[str, ...] = ("deletion", "insertion")
#: the maps every method is compared with (:func:`reference_maps`)
REFERENCE_MAPS: tuple[str, ...] = ("random", "center_prior")


def check_steps(steps: int) -> int:
    """``steps`` as an int >= 1, else a ValueError."""
    if isinstance(steps, bool) or int(steps) != steps or int(steps) < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def removed_counts(steps: int, pixels: int) -> Tensor:
    """``[steps + 1]`` long: ``n_k = floor(k * pixels / steps)``, the pixels removed (deletion) or
    inserted (insertion) after step ``k``."""
    steps = check_steps(steps)
    return torch.arange(steps + 1, dtype=torch.long) * int(pixels) // steps


def pixel_ranks(maps: Tensor, size: Sequence[int]) -> Tensor:
    """The position of every pixel in its map's order, most important first: ``[B, M, H * W]`` long
    for maps ``[B, M, h, w]`` upsampled (bilinear) to ``size = (H, W)``; ties keep the raster order,
    NaN counts as the least important."""
    if maps.ndim != 4:
        raise ValueError(f"maps must be [B, M, h, w], got {tuple(maps.shape)}")
    height, width = int(size[-2]), int(size[-1])
    with autocast_off(maps.device.type):
        work = maps.float()
        if tuple(work.shape[-2:]) != (height, width):
            work = F.interpolate(work, size=(height, width), mode="bilinear", align_corners=False)
        flat = torch.nan_to_num(work.flatten(2), nan=-torch.inf)
    order = torch.sort(flat, dim=-1, descending=True, stable=True).indices
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


def reference_maps(
    name: str, count: int, size: Sequence[int], generator: torch.Generator | None = None
) -> Tensor:
    """``[count, h, w]`` maps of a reference (:data:`REFERENCE_MAPS`) at ``size = (h, w)``, on the CPU.

    ``"random"``: uniform noise from ``generator`` (draw it at the methods' map resolution, so that its
    upsampled blobs are the size of theirs); ``"center_prior"``: ``-(d_box + 1e-3 d)`` with
    ``d_box = max(|y - c_y| / (h / 2), |x - c_x| / (w / 2))`` (its level sets are centred boxes of the
    image's aspect ratio) and ``d`` the Euclidean distance in the same units, which orders each box's
    ring from its middle to its corners.
    """
    height, width = int(size[-2]), int(size[-1])
    if name == "random":
        return torch.rand(int(count), height, width, generator=generator)
    if name == "center_prior":
        y = (torch.arange(height, dtype=torch.float32) + 0.5 - height / 2) / (height / 2)
        x = (torch.arange(width, dtype=torch.float32) + 0.5 - width / 2) / (width / 2)
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        prior = -(torch.maximum(yy.abs(), xx.abs()) + 1e-3 * torch.sqrt(yy * yy + xx * xx))
        return prior.expand(int(count), height, width).clone()
    raise ValueError(f"reference map must be one of {list(REFERENCE_MAPS)}, got {name!r}")


def curve_auc(curves: Tensor) -> Tensor:
    """The trapezoidal area under curves ``[..., steps + 1]`` sampled at ``k / steps`` on ``[0, 1]``."""
    if curves.shape[-1] < 2:
        raise ValueError(f"a curve needs at least 2 points (steps >= 1), got shape {tuple(curves.shape)}")
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[-1] - 1), dim=-1)


@torch.no_grad()
def perturbation_curves(
    images: Tensor,
    maps: Tensor,
    score: Callable[[Tensor, Tensor], Tensor],
    steps: int = 8,
    baseline: str = "noisy_linear",
    batch_size: int = 64,
    intact: Tensor | None = None,
    noise: Tensor | None = None,
    noise_std: float = 0.01,
    blur_sigma: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Deletion and insertion curves (module docstring) of ``M`` maps of each of ``B`` images.

    Args:
        images: ``[B, C, H, W]`` network inputs.
        maps: ``[B, M, h, w]`` (or ``[B, h, w]``, ``M = 1``), any real values, higher = more important.
        score: ``(perturbed [N, C, H, W], rows [N] long) -> [N]`` or ``[N, S]`` scores.
        steps: the number of equal steps (``>= 1``).
        baseline: what replaces a removed pixel, one of :data:`cama.metrics.imputation.BASELINES`.
        batch_size: perturbed images per call of ``score``.
        intact: the scores of the intact images, ``[B]`` or ``[B, S]``; None: scored here.
        noise: ``"noisy_linear"``'s standard normal draws, ``[B, C, H, W]``, one field per image shared
            by its steps and maps (independent of ``batch_size``); None: a generator seeded with 0.
        noise_std, blur_sigma: of the baselines (:mod:`cama.metrics.imputation`).

    Returns:
        ``(deletion, insertion)``, each ``[B, M, steps + 1]`` (``[B, M, steps + 1, S]`` for a score of
        ``S`` values) in float32, point ``k`` after step ``k``.
    """
    steps = check_steps(steps)
    check_baseline(baseline)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
    maps = maps[:, None] if maps.ndim == 3 else maps
    if maps.ndim != 4 or maps.shape[0] != images.shape[0]:
        raise ValueError(f"maps must be [B, M, h, w] with B = {images.shape[0]}, got {tuple(maps.shape)}")
    count, methods = maps.shape[:2]
    device = images.device
    size = tuple(images.shape[-2:])
    pixels = size[0] * size[1]
    ranks = pixel_ranks(maps.to(device), size).view(count * methods, pixels)
    counts = removed_counts(steps, pixels).to(device)
    if baseline == "noisy_linear" and noise is None:
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0)).to(device)
    blurred = gaussian_blur(images, blur_sigma) if baseline == "blur" else None

    # the images scored, each (row, map, removed ranks [lo, hi)): the intact image of each row (unless
    # `intact` gives its scores) and the fully removed one, once for all its maps; then, per map and
    # inner step n_k, the deletion [0, n_k) and the insertion [n_k, H W)
    rows = torch.arange(count, device=device)
    nothing, everything = torch.zeros_like(rows), torch.full_like(rows, pixels)
    inner = counts[1:-1]
    shape = (count, methods, inner.numel())
    grid_row = rows[:, None, None].expand(shape).reshape(-1)
    grid_map = torch.arange(methods, device=device)[None, :, None].expand(shape).reshape(-1)
    grid_n = inner.expand(shape).reshape(-1)
    ends = 2 if intact is None else 1
    item_row = torch.cat([rows] * ends + [grid_row, grid_row])
    item_map = torch.cat([nothing] * ends + [grid_map, grid_map])
    item_lo = torch.cat([nothing] * ends + [torch.zeros_like(grid_n), grid_n])
    item_hi = torch.cat([nothing] * (ends - 1) + [everything, grid_n, torch.full_like(grid_n, pixels)])

    scored = []
    for start in range(0, item_row.numel(), batch_size):
        part = slice(start, start + batch_size)
        r = item_row[part]
        rank = ranks[r * methods + item_map[part]]
        removed = (rank >= item_lo[part, None]) & (rank < item_hi[part, None])
        perturbed = fill_removed(
            images[r], removed.view(-1, *size), baseline,
            blurred[r] if blurred is not None else None, noise[r] if noise is not None else None, noise_std,
        )
        scored.append(score(perturbed.to(images.dtype), r).float())
    values = torch.cat(scored)
    tail = values.shape[1:]
    if intact is None:
        intact_scores, values = values[:count], values[count:]
    else:
        intact_scores = intact.to(device).float().reshape(count, *tail)
    blank, values = values[:count], values[count:]
    deleted, inserted = values.view(2, *shape, *tail).unbind(0)
    start_points = intact_scores[:, None, None].expand(count, methods, 1, *tail)
    end_points = blank[:, None, None].expand(count, methods, 1, *tail)
    deletion = torch.cat([start_points, deleted, end_points], dim=2)
    insertion = torch.cat([end_points, inserted, start_points], dim=2)
    return deletion, insertion


def curve_score_names(scores: Sequence[str]) -> list[tuple[str, str]]:
    """``(curve, score)`` pairs and their logged AUC names: ``deletion_auc`` for the unnamed score
    ``""``, ``deletion_<score>_auc`` for the others (e.g. ``insertion_ap_auc``)."""
    return [(curve, f"{curve}_{name}_auc" if name else f"{curve}_auc") for curve in CURVES for name in scores]


class DeletionInsertion(Metric):
    """The deletion and insertion AUCs of one map (module docstring) over batches of curves, with
    their 95% intervals; float64 sum states, exact under DDP.

    ``update(deletion, insertion)``, each ``[B, steps + 1]`` or ``[B, steps + 1, S]`` (one curve per
    score); ``compute()`` -> ``{"deletion_auc", "insertion_auc", ...}`` (:func:`curve_score_names`) and
    each name's ``_ci95`` (``1.96 s / sqrt(N)``, ``s`` the sample standard deviation of the ``N``
    samples' AUCs; 0 for one sample). NaN (nothing updated) before any update.

    Args:
        scores: the names of the ``S`` scores, ``""`` for the unnamed first one.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, scores: Sequence[str] = ("",), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scores = tuple(scores)
        if not self.scores or len(set(self.scores)) != len(self.scores):
            raise ValueError(f"scores must be distinct names, got {self.scores}")
        add_sum_states(self, "auc_sum", "auc_sq_sum", shape=(len(CURVES), len(self.scores)))
        add_sum_states(self, "total")

    def update(self, deletion: Tensor, insertion: Tensor) -> None:
        areas = []
        for curve in (deletion, insertion):
            curve = curve[..., None] if curve.ndim == 2 else curve
            if curve.ndim != 3 or curve.shape[-1] != len(self.scores):
                raise ValueError(
                    f"curves must be [B, steps + 1] or [B, steps + 1, {len(self.scores)}], "
                    f"got {tuple(curve.shape)}"
                )
            areas.append(curve_auc(curve.double().transpose(1, 2)))  # [B, S]
        if areas[0].shape != areas[1].shape:
            raise ValueError(
                f"deletion {tuple(deletion.shape)} and insertion {tuple(insertion.shape)} differ"
            )
        stacked = torch.stack(areas, dim=1).to(self.total.device)  # [B, 2, S]
        self.auc_sum += stacked.sum(0)
        self.auc_sq_sum += stacked.square().sum(0)
        self.total += float(stacked.shape[0])

    def compute(self) -> dict[str, Tensor]:
        mean, ci, _ = mean_and_interval(self.auc_sum, self.auc_sq_sum, self.total, Z_95, unbiased=True)
        out: dict[str, Tensor] = {}
        names = curve_score_names(self.scores)
        for index, (_, name) in enumerate(names):
            c, s = divmod(index, len(self.scores))
            out[name] = mean[c, s].float()
            out[f"{name}_ci95"] = ci[c, s].float()
        return out
