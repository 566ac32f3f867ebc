"""What decides whether the classifier bench can tell its maps apart: the references it scores beside them.

* :func:`stage_sizes`: the resolution of each stage's maps (S1 ... S4 of ResNet-10);
* :func:`mask_ceilings`: the perfect-mask ceiling: the object masks average-pooled to a stage's
  resolution, upsampled back (:func:`cama.explain.postprocess`, as every map) and scored with the same
  Otsu mIoU as the maps -- no map of that resolution can do better, whatever the network;
* :func:`colour_baseline`: the network-free map ``|pixel - mean border colour|`` (the Euclidean
  distance of each pixel's RGB to the mean colour of the image's outermost pixels), scored like the
  maps: a setting in which it wins does not need a network to localize;
* :func:`box_curve`: box accuracy (IoU >= 0.5) at every tau of ``cama.metrics.boxes.DEFAULT_TAUS``,
  and :func:`tau_choice`: the tau chosen on one set of images, reported on another.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cama.explain import postprocess
from cama.metrics.boxes import DEFAULT_TAUS, box_localization_iou
from cama.metrics.segmentation import otsu_segmentation, segmentation_counts, segmentation_scores
from datamodules.images import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["TAUS", "stage_sizes", "otsu_scores", "mask_ceilings", "colour_map", "colour_baseline",
           "box_curve", "tau_choice"]

TAUS: tuple[float, ...] = tuple(DEFAULT_TAUS)


@torch.no_grad()
def stage_sizes(model: Any, image: Tensor) -> list[tuple[int, int]]:
    """``(h, w)`` of the maps of each of ``model.stage_names()`` for one input ``image`` [1, 3, H, W]."""
    modules = dict(model.named_modules())
    sizes: dict[str, tuple[int, int]] = {}

    def keep(name: str) -> Any:
        def hook(_module: Any, _inputs: Any, output: Tensor) -> None:  # None: the output stays
            sizes[name] = tuple(output.shape[-2:])
        return hook

    hooks = [modules[name].register_forward_hook(keep(name)) for name in model.stage_names()]
    try:
        model.feature_maps(image)
    finally:
        for hook in hooks:
            hook.remove()
    return [sizes[name] for name in model.stage_names()]


def otsu_scores(maps: Tensor, masks: Tensor, batch: int = 200) -> dict[str, float]:
    """Otsu scores (mIoU, precision, recall, micro-F1) of maps [N, H, W] against masks [N, H, W], the pixel
    counts pooled over the images (as the ltgrad grid's)."""
    total = None
    for start in range(0, maps.shape[0], batch):
        counts = segmentation_counts(otsu_segmentation(maps[start:start + batch]),
                                     masks[start:start + batch]).double().sum(0).cpu()
        total = counts if total is None else total + counts
    return {k: float(v) for k, v in segmentation_scores(total).items()}


def pooled_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """The masks [N, H, W] average-pooled to ``size`` and brought back to ``H x W`` as a map would be."""
    pooled = F.adaptive_avg_pool2d(masks[:, None].float(), size)[:, 0]
    return postprocess(pooled, tuple(masks.shape[-2:]))


def mask_ceilings(masks: Tensor, boxes: Tensor, sizes: list[tuple[int, int]]) -> dict[str, dict[str, Any]]:
    """``"S1" ... -> {"size": [h, w], Otsu scores..., "box_curve": [...]}``: the perfect-mask ceiling at
    each stage's resolution (module docstring)."""
    out: dict[str, dict[str, Any]] = {}
    for i, size in enumerate(sizes):
        maps = pooled_masks(masks, size)
        out[f"S{i + 1}"] = {"size": list(size), **otsu_scores(maps, masks),
                            "box_curve": box_curve(maps, boxes)}
    return out


def colour_map(images: Tensor) -> Tensor:
    """``|pixel - mean border colour|``: images [N, 3, H, W] (ImageNet-normalised) -> maps [N, H, W] in
    [0, 1] (per-image min-max), on the RGB colours in [0, 1]."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rgb = images * std + mean
    border = torch.cat([rgb[:, :, 0], rgb[:, :, -1], rgb[:, :, 1:-1, 0], rgb[:, :, 1:-1, -1]], dim=2)
    distance = (rgb - border.mean(2)[:, :, None, None]).norm(dim=1)
    return postprocess(distance)


def colour_baseline(images: Tensor, masks: Tensor, boxes: Tensor) -> dict[str, Any]:
    """The colour baseline's Otsu scores and box curve (module docstring)."""
    maps = colour_map(images)
    return {**otsu_scores(maps, masks), "box_curve": box_curve(maps, boxes)}


def box_curve(maps: Tensor, boxes: Tensor) -> list[float]:
    """Box accuracy (IoU >= 0.5 with the object's box) at every tau of :data:`TAUS`."""
    iou = box_localization_iou(maps, boxes, TAUS)
    return [float(v) for v in (iou >= 0.5).float().mean(0)]


def tau_choice(select_curve: list[float], report_curve: list[float]) -> tuple[float, float]:
    """``(tau, accuracy)``: the tau best on ``select_curve`` (the smallest among equals) and the accuracy
    of ``report_curve`` there."""
    best = max(range(len(TAUS)), key=lambda i: (select_curve[i], -i))
    return float(TAUS[best]), float(report_curve[best])
