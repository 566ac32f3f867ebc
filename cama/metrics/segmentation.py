"""Scores of explanation maps that need no box extraction: the energy pointing game, the Otsu
segmentation, and the overlap of the branches' maps.

* **Energy pointing game** (fam Eq. 19): the share of a (ReLU'd) map's energy that falls inside
  the ground-truth box, :func:`energy_pointing_game`.
* **Otsu segmentation** (ltgrad-cam Sec. 3.1): each map is binarised at its own Otsu split
  (:func:`otsu_segmentation`, a 256-bin histogram method batched over the maps on their device,
  which skimage's per-image ``threshold_otsu`` is not) and compared with the ground-truth mask,
  :func:`segmentation_counts` / :func:`segmentation_scores`.
* **Branch overlap** (cama-ram Eq. 5): mean pairwise IoU of the top-k masks of the branches' maps,
  the quantity the Overlapped Activation Penalty lowers, :func:`branch_overlap_iou`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cama.metrics.boxes import check_boxes, check_maps

__all__ = [
    "energy_pointing_game",
    "otsu_threshold",
    "otsu_segmentation",
    "segmentation_counts",
    "segmentation_scores",
    "topk_masks",
    "branch_overlap_iou",
]


def ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` in float64, 0 where the denominator is not positive."""
    numerator, denominator = numerator.double(), denominator.double()
    return torch.where(
        denominator > 0, numerator / denominator.clamp_min(1e-30), torch.zeros_like(denominator)
    )


# --------------------------------------------------------------------------------------------------
# energy pointing game
# --------------------------------------------------------------------------------------------------
def _inside_box(boxes: Tensor, height: int, width: int) -> Tensor:
    """``[B, H, W]`` bool: the pixels whose centre lies inside each box."""
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5
    boxes = boxes.float()
    inside_y = (ys[None, :] >= boxes[:, 1:2]) & (ys[None, :] <= boxes[:, 3:4])  # [B, H]
    inside_x = (xs[None, :] >= boxes[:, 0:1]) & (xs[None, :] <= boxes[:, 2:3])  # [B, W]
    return inside_y[:, :, None] & inside_x[:, None, :]


def energy_pointing_game(maps: Tensor, gt_boxes: Tensor) -> Tensor:
    """Energy-based pointing game, fam Eq. 19: ``sum_{(i,j) in bbox} L(i,j) / sum_{(i,j)} L(i,j)``.

    The map is ReLU'd first (fam Eq. 13; a post-processed map is already non-negative). A pixel is
    inside the box when its centre is. A map without energy scores 0.

    Args:
        maps: ``[B, H, W]`` maps at image size.
        gt_boxes: ``[B, 4]`` ground-truth boxes.

    Returns:
        ``[B]`` proportions in ``[0, 1]``.
    """
    check_maps(maps)
    check_boxes(gt_boxes, maps.shape[0], "gt_boxes")
    energy = torch.nan_to_num(maps.float(), nan=0.0).clamp_min(0.0)
    inside = _inside_box(gt_boxes.to(energy.device), *energy.shape[-2:])
    total = energy.sum(dim=(-2, -1))
    within = (energy * inside).sum(dim=(-2, -1))
    return torch.where(total > 0, within / total.clamp_min(1e-12), torch.zeros_like(total))


# --------------------------------------------------------------------------------------------------
# Otsu segmentation
# --------------------------------------------------------------------------------------------------
def _otsu_split(maps: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Histogram bin of every value ``[B, n]``, the last bin ``k`` of the background ``[B]``, and
    each map's ``low`` and ``span`` ``[B]`` (see :func:`otsu_threshold`)."""
    if maps.ndim < 2:
        raise ValueError(f"maps must be [B, ...], got shape {tuple(maps.shape)}")
    flat = torch.nan_to_num(maps.detach().flatten(1).double(), nan=0.0)
    batch = flat.shape[0]
    low = flat.amin(dim=1, keepdim=True) if flat.shape[1] else flat.new_zeros(batch, 1)
    span = (flat.amax(dim=1, keepdim=True) - low) if flat.shape[1] else flat.new_zeros(batch, 1)
    scale = torch.where(span > 0, bins / span.clamp_min(1e-300), torch.zeros_like(span))
    index = ((flat - low) * scale).floor().long().clamp_(0, bins - 1)
    offsets = torch.arange(batch, device=flat.device)[:, None] * bins
    hist = torch.bincount((index + offsets).flatten(), minlength=batch * bins).reshape(batch, bins).double()
    centres = low + (torch.arange(bins, device=flat.device, dtype=torch.float64) + 0.5) * span / bins
    weight0 = hist.cumsum(dim=1)  # values in bins <= k
    weight1 = hist.flip(1).cumsum(dim=1).flip(1)  # values in bins >= k
    moment = hist * centres
    mean0 = moment.cumsum(dim=1) / weight0.clamp_min(1e-30)
    mean1 = moment.flip(1).cumsum(dim=1).flip(1) / weight1.clamp_min(1e-30)
    variance = weight0[:, :-1] * weight1[:, 1:] * (mean0[:, :-1] - mean1[:, 1:]).square()  # split after bin k
    split = variance.argmax(dim=1) if batch else torch.zeros(0, dtype=torch.long, device=flat.device)
    return index, split, low[:, 0], span[:, 0]


def otsu_threshold(maps: Tensor, bins: int = 256) -> Tensor:
    """Otsu's threshold of each map, vectorised over the batch (ltgrad-cam Sec. 3.1).

    The histogram method of ``skimage.filters.threshold_otsu``: ``bins`` equal bins over each map's
    own range ``[min, max]`` (values binned with their bin centres); for every split between bin ``k``
    and bin ``k + 1`` the between-class variance ``w0 w1 (mu0 - mu1)^2``; the split that maximises it
    (the first among equals). skimage returns the centre of bin ``k``; we return the edge between the
    two classes, ``min + (k + 1) * (max - min) / bins``, so that ``map >= threshold`` is exactly the
    foreground class the split chose (and equal splits across empty bins give equal masks).
    A constant map gets its own value.

    Args:
        maps: ``[B, ...]`` (e.g. ``[B, H, W]``).
        bins: histogram bins.

    Returns:
        ``[B]`` thresholds (float32).
    """
    _, split, low, span = _otsu_split(maps, bins)
    threshold = low + (split + 1).double() * span / bins
    return torch.where(span > 0, threshold, low).float()


def otsu_segmentation(maps: Tensor, bins: int = 256) -> Tensor:
    """Binary foreground masks of Otsu's split (:func:`otsu_threshold`), same shape as ``maps``.

    A pixel is foreground when its histogram bin lies above the split; a constant map is all
    background.
    """
    index, split, _, _ = _otsu_split(maps, bins)
    return (index > split[:, None]).reshape(maps.shape)


def segmentation_counts(predicted: Tensor, target: Tensor) -> Tensor:
    """Pixel counts ``[B, 4]`` = ``(TP, FP, FN, TN)`` of binary masks ``[B, H, W]`` against targets."""
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} differ")
    predicted, target = predicted.bool().flatten(1), target.to(predicted.device).bool().flatten(1)
    tp = (predicted & target).sum(1)
    fp = predicted.sum(1) - tp
    fn = target.sum(1) - tp
    tn = predicted.shape[1] - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], dim=1)


def segmentation_scores(counts: Tensor) -> dict[str, Tensor]:
    """Scores of pooled pixel counts ``(TP, FP, FN, TN)`` (``[4]``, or ``[B, 4]`` which is summed).

    Micro-averaged over images (the pixels of every image pooled), for the foreground class:
    ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``,
    ``micro_f1 = 2 TP / (2 TP + FP + FN)``, ``iou = TP / (TP + FP + FN)``; and
    ``miou``, the semantic-segmentation mIoU of ltgrad-cam's tables: the mean over the two classes
    (background, foreground) of their IoU, ``(TP / (TP + FP + FN) + TN / (TN + FN + FP)) / 2``.
    An undefined ratio (nothing predicted, nothing to find) is 0.
    """
    total = counts.reshape(-1, 4).sum(0) if counts.ndim > 1 else counts
    tp, fp, fn, tn = total.unbind(-1)
    foreground = ratio(tp, tp + fp + fn)
    background = ratio(tn, tn + fp + fn)
    return {
        "miou": ((foreground + background) / 2).float(),
        "iou": foreground.float(),
        "precision": ratio(tp, tp + fp).float(),
        "recall": ratio(tp, tp + fn).float(),
        "micro_f1": ratio(2 * tp, 2 * tp + fp + fn).float(),
    }


# --------------------------------------------------------------------------------------------------
# branch overlap (cama-ram Eq. 5)
# --------------------------------------------------------------------------------------------------
def topk_masks(maps: Tensor, k: int) -> Tensor:
    """The ``k`` largest cells of each map, ``[..., h, w]`` -> bool ``[..., h, w]`` (cama-ram Eq. 5).

    Ties at the k-th value are broken by ``torch.topk`` (exactly ``k`` cells are set).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    flat = torch.nan_to_num(maps.float(), nan=float("-inf")).flatten(-2)
    k = min(k, flat.shape[-1])
    indices = flat.topk(k, dim=-1, sorted=False).indices  # a set: unsorted is 2-3x faster on CPU
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, indices, True)
    return mask.reshape(maps.shape)


def branch_overlap_iou(maps: Tensor, k: int) -> Tensor:
    """Mean pairwise IoU between the branches' top-k masks, per sample.

    Args:
        maps: ``[B, N, h, w]``, one map per branch (e.g. each branch's RAM ``R_q^q`` or its
            target-class CAM, at feature resolution).
        k: cells per mask (see :func:`cama.losses.resolve_topk`).

    Returns:
        ``[B]``: ``mean_{i<j} |T_i & T_j| / |T_i | T_j|``; needs ``N >= 2``.
    """
    if maps.ndim != 4 or maps.shape[1] < 2:
        raise ValueError(f"maps must be [B, N >= 2, h, w], got shape {tuple(maps.shape)}")
    masks = topk_masks(maps, k).flatten(2).float()  # [B, N, hw]
    intersection = torch.einsum("bip,bjp->bij", masks, masks)
    sizes = masks.sum(-1)
    union = sizes[:, :, None] + sizes[:, None, :] - intersection
    iou = ratio(intersection, union).float()
    i, j = torch.triu_indices(maps.shape[1], maps.shape[1], offset=1, device=maps.device)
    return iou[:, i, j].mean(dim=1)
