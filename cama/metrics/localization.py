"""Localization scores of explanation maps: boxes, energy pointing game, Otsu segmentation, overlap.

Every score has a functional form (pure, batched tensor functions) and a torchmetrics ``Metric``
whose states are sums (``dist_reduce_fx="sum"``) or, where a statistic of the whole set is needed
first, concatenated tensors (``"cat"``), so N processes give the numbers of one
(``DESIGN.md``, "Protocols"):

* **Box from a map** (WSOL convention, dist-cam Sec. 3, fam Eq. 20): keep the pixels
  ``>= tau * max`` of a map whose maximum is positive, take the largest 8-connected component and
  its bounding box; the box is correct when its IoU with the ground-truth box is ``>= 0.5``.
  :class:`BoxLocalization` gives the mean IoU and the box accuracy at one ``tau`` (0.2 as in fam
  Sec. V-A, following CAM), the top-1 localization error (a sample counts when it is both
  correctly recognised *and* correctly localized) and MaxBoxAcc, the best box accuracy over a
  sweep of ``tau`` (0.05, 0.15, ..., 0.95 by default).
* **Energy pointing game** (fam Eq. 19): the share of a (ReLU'd) map's energy that falls inside
  the ground-truth box, :class:`EnergyPointingGame`.
* **Otsu segmentation** (ltgrad-cam Sec. 3.1): each map is binarised at its own Otsu split
  (:func:`otsu_segmentation`, a vectorised 256-bin histogram method) and compared with the
  ground-truth mask, :class:`OtsuSegmentation`.
* **Branch overlap** (cama-ram Eq. 5): mean pairwise IoU of the top-k masks of the branches' maps,
  the quantity the Overlapped Activation Penalty lowers, :class:`BranchOverlap`.
* **Centred-box baseline**: the same box scores for a box of a fixed (mean) size centred in the
  image, the number a map has to beat to say it localizes anything, :class:`CenteredBoxBaseline`.

Boxes are ``(x1, y1, x2, y2)`` in pixels with exclusive right/bottom edges: a box covering columns
``c0 .. c1`` (inclusive) is ``x1 = c0, x2 = c1 + 1`` (the convention of the synthetic data's
ground truth). A box with zero area is *empty* (no prediction, or no ground truth).

Connected components are labelled with ``scipy.ndimage.label`` (8-connectivity), once for a
whole batch of maps and thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torchmetrics import Metric

from cama.losses import resolve_topk

__all__ = [
    "DEFAULT_TAUS",
    "largest_connected_component",
    "mask_to_box",
    "boxes_from_maps",
    "box_from_map",
    "box_area",
    "box_iou",
    "box_localization_iou",
    "max_box_accuracy",
    "top1_localization_error",
    "energy_pointing_game",
    "otsu_threshold",
    "otsu_segmentation",
    "segmentation_counts",
    "segmentation_scores",
    "topk_masks",
    "branch_overlap_iou",
    "centered_boxes",
    "BoxLocalization",
    "EnergyPointingGame",
    "OtsuSegmentation",
    "BranchOverlap",
    "CenteredBoxBaseline",
]

#: The default sweep of relative thresholds for MaxBoxAcc: 0.05, 0.15, ..., 0.95.
DEFAULT_TAUS: tuple[float, ...] = tuple(round(0.05 + 0.1 * i, 2) for i in range(10))

# 8-connectivity inside each 2-D slice of a [N, H, W] stack, no connection between slices.
_SLICE_8_CONNECTIVITY = np.zeros((3, 3, 3), dtype=bool)
_SLICE_8_CONNECTIVITY[1] = True


# --------------------------------------------------------------------------------------------------
# boxes
# --------------------------------------------------------------------------------------------------
def _check_maps(maps: Tensor, name: str = "maps") -> None:
    if maps.ndim != 3:
        raise ValueError(f"{name} must be [B, H, W], got shape {tuple(maps.shape)}")


def _check_boxes(boxes: Tensor, batch: int, name: str = "boxes") -> None:
    if boxes.shape != (batch, 4):
        raise ValueError(f"{name} must be [B={batch}, 4] (x1, y1, x2, y2), got {tuple(boxes.shape)}")


def _label_largest(masks: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Label the 8-connected components of a ``[N, H, W]`` stack; the largest label of each slice.

    Returns ``(labels [N, H, W] int32, best [N])``, ``best[n] = 0`` where slice n is empty. Ties in
    size go to the component that comes first in raster order.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {tuple(masks.shape)}")
    count = masks.shape[0]
    array = masks.detach().to("cpu", torch.bool).numpy()
    # int64 labels: np.bincount would copy int32 ones to int64 first (twice slower overall)
    labels, num = ndimage.label(array, structure=_SLICE_8_CONNECTIVITY, output=np.int64)
    best = np.zeros(count, dtype=np.int64)
    if num == 0:
        return labels, best
    sizes = np.bincount(labels.ravel(), minlength=num + 1)
    # ndimage numbers the components in raster order and no component crosses slices, so each
    # slice holds a contiguous range of labels: the slice of label l is the first slice whose
    # running maximum label reaches l.
    running_max = np.maximum.accumulate(labels.reshape(count, -1).max(axis=1))
    ids = np.arange(1, num + 1)
    slice_of = np.searchsorted(running_max, ids, side="left")
    order = np.lexsort((ids, -sizes[1:], slice_of))  # by slice, then larger first, then raster order
    ordered_slices = slice_of[order]
    first = order[np.r_[True, ordered_slices[1:] != ordered_slices[:-1]]]
    best[slice_of[first]] = ids[first]
    return labels, best


def largest_connected_component(masks: Tensor) -> Tensor:
    """The largest 8-connected component of each binary map (ties: the first in raster order).

    Args:
        masks: ``[N, H, W]`` bool (any device).

    Returns:
        ``[N, H, W]`` bool on ``masks``' device; all False where a map has no foreground.
    """
    labels, best = _label_largest(masks)
    keep = (labels == best[:, None, None]) & (labels > 0)
    return torch.from_numpy(keep).to(masks.device)


def _largest_component_boxes(masks: Tensor) -> Tensor:
    """:func:`mask_to_box` of :func:`largest_connected_component`, without building the masks.

    The boxes come from ``scipy.ndimage.find_objects`` (one pass over the labels).
    """
    labels, best = _label_largest(masks)
    boxes = np.zeros((masks.shape[0], 4), dtype=np.float32)
    if best.any():
        objects = ndimage.find_objects(labels, max_label=int(best.max()))
        for n in np.flatnonzero(best):
            _, rows, cols = objects[best[n] - 1]
            boxes[n] = (cols.start, rows.start, cols.stop, rows.stop)
    return torch.from_numpy(boxes).to(masks.device)


def mask_to_box(masks: Tensor) -> Tensor:
    """Bounding box ``(x1, y1, x2, y2)`` (exclusive right/bottom) of each binary map.

    Args:
        masks: ``[..., H, W]`` bool.

    Returns:
        ``[..., 4]`` float32; ``(0, 0, 0, 0)`` for an empty map.
    """
    rows = masks.any(dim=-1)  # [..., H]
    cols = masks.any(dim=-2)  # [..., W]
    has = rows.any(dim=-1)
    height, width = masks.shape[-2:]
    y1 = rows.to(torch.uint8).argmax(dim=-1)
    y2 = height - rows.flip(-1).to(torch.uint8).argmax(dim=-1)
    x1 = cols.to(torch.uint8).argmax(dim=-1)
    x2 = width - cols.flip(-1).to(torch.uint8).argmax(dim=-1)
    boxes = torch.stack([x1, y1, x2, y2], dim=-1).to(torch.float32)
    return torch.where(has[..., None], boxes, torch.zeros_like(boxes))


def boxes_from_maps(maps: Tensor, taus: Sequence[float] | Tensor = DEFAULT_TAUS) -> Tensor:
    """Boxes of the largest component of each map thresholded at each ``tau * max`` (WSOL).

    A pixel is kept when its value is ``>= tau * max`` of its map; a map whose maximum is not
    positive (e.g. all zeros after the ReLU of :func:`~cama.explain.postprocess`) gives empty boxes.

    Args:
        maps: ``[B, H, W]`` maps at image size (raw or normalised: the threshold is relative).
        taus: ``T`` relative thresholds in ``[0, 1]``.

    Returns:
        ``[B, T, 4]`` float32 boxes ``(x1, y1, x2, y2)``.
    """
    _check_maps(maps)
    values = torch.nan_to_num(maps.detach().float(), nan=0.0)
    tau = torch.as_tensor(taus, dtype=torch.float32, device=values.device).reshape(-1)
    batch, height, width = values.shape
    if batch == 0:
        return torch.zeros(0, tau.numel(), 4, device=values.device)
    peak = values.amax(dim=(-2, -1))  # [B]
    threshold = tau[None, :] * peak[:, None]  # [B, T]
    binary = (values[:, None] >= threshold[..., None, None]) & (peak > 0)[:, None, None, None]
    return _largest_component_boxes(binary.reshape(-1, height, width)).reshape(batch, tau.numel(), 4)


def box_from_map(maps: Tensor, tau: float = 0.2) -> Tensor:
    """:func:`boxes_from_maps` at one threshold: ``[B, H, W]`` -> ``[B, 4]``."""
    return boxes_from_maps(maps, [tau])[:, 0]


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``(x1, y1, x2, y2)`` boxes ``[..., 4]`` (0 for an empty or inverted box)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp_min(0) * (boxes[..., 3] - boxes[..., 1]).clamp_min(0)


def box_iou(boxes: Tensor, other: Tensor) -> Tensor:
    """Element-wise IoU of two sets of boxes (fam Eq. 20), broadcasting ``[..., 4]`` shapes.

    An empty box has IoU 0 with every box (also with another empty box).
    """
    boxes, other = torch.broadcast_tensors(boxes.float(), other.float().to(boxes.device))
    width = (
        torch.minimum(boxes[..., 2], other[..., 2]) - torch.maximum(boxes[..., 0], other[..., 0])
    ).clamp_min(0)
    height = (
        torch.minimum(boxes[..., 3], other[..., 3]) - torch.maximum(boxes[..., 1], other[..., 1])
    ).clamp_min(0)
    intersection = width * height
    union = box_area(boxes) + box_area(other) - intersection
    return torch.where(union > 0, intersection / union.clamp_min(1e-12), torch.zeros_like(union))


def box_localization_iou(
    maps: Tensor, gt_boxes: Tensor, taus: Sequence[float] | Tensor = DEFAULT_TAUS
) -> Tensor:
    """IoU of the box of each map (at each threshold) with its ground-truth box: ``[B, T]``."""
    _check_maps(maps)
    _check_boxes(gt_boxes, maps.shape[0], "gt_boxes")
    predicted = boxes_from_maps(maps, taus)
    return box_iou(predicted, gt_boxes.to(predicted.device)[:, None, :])


def max_box_accuracy(
    maps: Tensor,
    gt_boxes: Tensor,
    taus: Sequence[float] | Tensor = DEFAULT_TAUS,
    iou_threshold: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """MaxBoxAcc: the best box accuracy (IoU ``>= iou_threshold``) over the ``taus`` sweep.

    Returns:
        ``(accuracy, tau)``: 0-d tensors, the best accuracy in ``[0, 1]`` and its threshold
        (the smallest tau among equals).
    """
    iou = box_localization_iou(maps, gt_boxes, taus)
    accuracy = (iou >= iou_threshold).float().mean(dim=0)  # [T]
    best = accuracy.argmax()
    tau = torch.as_tensor(taus, dtype=torch.float32).reshape(-1)
    return accuracy[best], tau[best.cpu()]


def top1_localization_error(
    maps: Tensor,
    gt_boxes: Tensor,
    correct: Tensor,
    tau: float = 0.2,
    iou_threshold: float = 0.5,
) -> Tensor:
    """Top-1 localization error (dist-cam Sec. 3, ``DESIGN.md``): ``1 - mean(correct & IoU >= 0.5)``.

    ``correct`` says whether each sample is correctly recognised: the top-1 class for a classifier,
    for re-ID and retrieval whether the top-ranked gallery image is a true match.
    """
    iou = box_localization_iou(maps, gt_boxes, [tau])[:, 0]
    hit = (iou >= iou_threshold) & correct.to(iou.device).bool()
    return 1.0 - hit.float().mean()


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
    _check_maps(maps)
    _check_boxes(gt_boxes, maps.shape[0], "gt_boxes")
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


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    numerator, denominator = numerator.double(), denominator.double()
    return torch.where(
        denominator > 0, numerator / denominator.clamp_min(1e-30), torch.zeros_like(denominator)
    )


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
    foreground = _ratio(tp, tp + fp + fn)
    background = _ratio(tn, tn + fp + fn)
    return {
        "miou": ((foreground + background) / 2).float(),
        "iou": foreground.float(),
        "precision": _ratio(tp, tp + fp).float(),
        "recall": _ratio(tp, tp + fn).float(),
        "micro_f1": _ratio(2 * tp, 2 * tp + fp + fn).float(),
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
    indices = flat.topk(k, dim=-1).indices
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
    iou = _ratio(intersection, union).float()
    i, j = torch.triu_indices(maps.shape[1], maps.shape[1], offset=1, device=maps.device)
    return iou[:, i, j].mean(dim=1)


# --------------------------------------------------------------------------------------------------
# centred-box baseline
# --------------------------------------------------------------------------------------------------
def centered_boxes(sizes: Tensor, image_size: Sequence[int]) -> Tensor:
    """Boxes of the given ``(width, height)`` ``[..., 2]`` centred in an image of ``(H, W)``."""
    height, width = int(image_size[-2]), int(image_size[-1])
    w = sizes[..., 0].float().clamp(0, width)
    h = sizes[..., 1].float().clamp(0, height)
    cx, cy = width / 2.0, height / 2.0
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


# --------------------------------------------------------------------------------------------------
# torchmetrics Metrics
# --------------------------------------------------------------------------------------------------
def _valid_boxes(gt_boxes: Tensor) -> Tensor:
    return box_area(gt_boxes) > 0


class BoxLocalization(Metric):
    """Box scores of maps against ground-truth boxes (WSOL protocol, ``DESIGN.md`` "Box from a map").

    ``update(maps [B, H, W], gt_boxes [B, 4], correct [B] bool | None)``; samples with an empty
    ground-truth box are skipped; ``correct`` (recognition, default all True) is only used by the
    top-1 localization error. ``compute()`` returns 0-d tensors:

    * ``box_iou``: mean IoU of the box at ``tau`` with the ground truth;
    * ``box_acc``: fraction with IoU ``>= iou_threshold`` at ``tau``;
    * ``top1_loc_err``: ``1 -`` fraction both correct and localized at ``tau`` (dist-cam Sec. 3);
    * ``max_box_acc`` and ``max_box_acc_tau``: the best box accuracy over ``taus`` and its tau.

    States are sums (per tau), so the DDP reduction is exact.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        tau: float = 0.2,
        taus: Sequence[float] = DEFAULT_TAUS,
        iou_threshold: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= tau <= 1.0 or any(not 0.0 <= t <= 1.0 for t in taus) or not taus:
            raise ValueError(f"tau and taus must lie in [0, 1], got {tau}, {list(taus)}")
        self.tau = float(tau)
        self.taus = tuple(float(t) for t in taus)
        self.iou_threshold = float(iou_threshold)
        sweep = len(self.taus) + 1  # the sweep, then tau itself
        self.add_state("iou_sum", default=torch.zeros(sweep, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hits", default=torch.zeros(sweep, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("correct_hits", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The thresholds :meth:`update` boxes maps at: the sweep, then ``tau``."""
        return (*self.taus, self.tau)

    def update(
        self, maps: Tensor, gt_boxes: Tensor, correct: Tensor | None = None, boxes: Tensor | None = None
    ) -> None:
        """Add a batch; ``boxes`` may give ``boxes_from_maps(maps, self.thresholds)`` ``[B, T + 1, 4]``
        when they are computed anyway (the maps are then only checked for their batch size)."""
        _check_maps(maps)
        _check_boxes(gt_boxes, maps.shape[0], "gt_boxes")
        if boxes is None:
            boxes = boxes_from_maps(maps, self.thresholds)
        elif boxes.shape != (maps.shape[0], len(self.thresholds), 4):
            raise ValueError(f"boxes must be [B, {len(self.thresholds)}, 4], got {tuple(boxes.shape)}")
        valid = _valid_boxes(gt_boxes).to(boxes.device)
        if correct is None:
            correct = torch.ones(maps.shape[0], dtype=torch.bool, device=boxes.device)
        boxes, gt_boxes, correct = (
            boxes[valid],
            gt_boxes.to(boxes.device)[valid],
            correct.to(boxes.device)[valid],
        )
        if boxes.shape[0] == 0:
            return
        iou = box_iou(boxes, gt_boxes[:, None, :]).double()  # [B, T+1]
        hit = iou >= self.iou_threshold
        self.iou_sum += iou.sum(0).to(self.iou_sum.device)
        self.hits += hit.double().sum(0).to(self.hits.device)
        self.correct_hits += (hit[:, -1] & correct.bool()).double().sum().to(self.total.device)
        self.total += float(boxes.shape[0])

    def compute(self) -> dict[str, Tensor]:
        total = self.total
        accuracy = _ratio(self.hits, total.expand_as(self.hits))
        sweep = accuracy[:-1]
        best = int(sweep.argmax())
        return {
            "box_iou": _ratio(self.iou_sum[-1], total).float(),
            "box_acc": accuracy[-1].float(),
            "top1_loc_err": (1.0 - _ratio(self.correct_hits, total)).float(),
            "max_box_acc": sweep[best].float(),
            "max_box_acc_tau": torch.tensor(self.taus[best], dtype=torch.float32, device=total.device),
        }


class EnergyPointingGame(Metric):
    """Mean energy-based pointing game proportion (fam Eq. 19) over samples with a ground-truth box.

    ``update(maps [B, H, W], gt_boxes [B, 4])``; ``compute()`` -> 0-d tensor in ``[0, 1]``.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("proportion_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, maps: Tensor, gt_boxes: Tensor) -> None:
        _check_maps(maps)
        _check_boxes(gt_boxes, maps.shape[0], "gt_boxes")
        valid = _valid_boxes(gt_boxes).to(maps.device)
        if not bool(valid.any()):
            return
        proportion = energy_pointing_game(maps[valid], gt_boxes.to(maps.device)[valid])
        self.proportion_sum += proportion.double().sum().to(self.total.device)
        self.total += float(proportion.numel())

    def compute(self) -> Tensor:
        return _ratio(self.proportion_sum, self.total).float()


class OtsuSegmentation(Metric):
    """Otsu segmentation of maps against ground-truth masks (ltgrad-cam Sec. 3.1).

    ``update(maps [B, H, W], masks [B, H, W] bool)``: each map is binarised at its Otsu threshold
    (:func:`otsu_segmentation`) and its pixel counts are pooled. ``compute()`` returns
    :func:`segmentation_scores` of the pooled counts: ``miou``, ``iou``, ``precision``, ``recall``,
    ``micro_f1``. Samples whose mask is empty (nothing to find) are skipped.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, bins: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bins = int(bins)
        self.add_state("counts", default=torch.zeros(4, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, maps: Tensor, masks: Tensor) -> None:
        _check_maps(maps)
        if masks.shape != maps.shape:
            raise ValueError(f"masks must match maps {tuple(maps.shape)}, got {tuple(masks.shape)}")
        masks = masks.to(maps.device).bool()
        valid = masks.flatten(1).any(1)
        if not bool(valid.any()):
            return
        predicted = otsu_segmentation(maps[valid], self.bins)
        self.counts += segmentation_counts(predicted, masks[valid]).double().sum(0).to(self.counts.device)

    def compute(self) -> dict[str, Tensor]:
        return segmentation_scores(self.counts)


class BranchOverlap(Metric):
    """Mean pairwise IoU of the branches' top-k masks (cama-ram Eq. 5), averaged over samples.

    ``update(maps [B, N >= 2, h, w])`` with ``topk`` fixed at construction: a fraction of the
    ``h * w`` grid or a count, resolved by :func:`cama.losses.resolve_topk` exactly like the OAP's
    ``k``; ``compute()`` -> 0-d tensor in ``[0, 1]`` (0: disjoint, 1: identical).
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, topk: float | int = 0.2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        resolve_topk(topk, 1)  # validates
        self.topk = topk
        self.add_state("iou_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, maps: Tensor) -> None:
        if maps.ndim != 4 or maps.shape[1] < 2:
            raise ValueError(f"maps must be [B, N >= 2, h, w], got shape {tuple(maps.shape)}")
        if maps.shape[0] == 0:
            return
        iou = branch_overlap_iou(maps, resolve_topk(self.topk, maps.shape[-2] * maps.shape[-1]))
        self.iou_sum += iou.double().sum().to(self.total.device)
        self.total += float(iou.numel())

    def compute(self) -> Tensor:
        return _ratio(self.iou_sum, self.total).float()


class CenteredBoxBaseline(Metric):
    """Box scores of a box of the mean size centred in the image: what a map must beat.

    ``update(gt_boxes [B, 4], predicted_boxes [B, 4] | None)``. The centred box has the mean
    width and height of the ground-truth boxes (``size_from="gt"``: an oracle size) or of the
    non-empty predicted boxes (``size_from="predicted"``: the same mean size as a method's boxes).
    The mean is over the whole set, so the states are concatenated (``"cat"``) and the scores are
    computed in ``compute()``: ``box_iou`` (mean IoU with the ground truth) and ``box_acc`` (IoU
    ``>= iou_threshold``), over the samples with a ground-truth box.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    gt_boxes: list[Tensor]
    predicted_boxes: list[Tensor]

    def __init__(
        self,
        image_size: Sequence[int],
        size_from: str = "gt",
        iou_threshold: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if size_from not in ("gt", "predicted"):
            raise ValueError(f"size_from must be 'gt' or 'predicted', got {size_from!r}")
        self.image_size = (int(image_size[-2]), int(image_size[-1]))
        self.size_from = size_from
        self.iou_threshold = float(iou_threshold)
        self.add_state("gt_boxes", default=[], dist_reduce_fx="cat")
        self.add_state("predicted_boxes", default=[], dist_reduce_fx="cat")

    def update(self, gt_boxes: Tensor, predicted_boxes: Tensor | None = None) -> None:
        if gt_boxes.ndim != 2 or gt_boxes.shape[1] != 4:
            raise ValueError(f"gt_boxes must be [B, 4], got {tuple(gt_boxes.shape)}")
        if predicted_boxes is None:
            if self.size_from == "predicted":
                raise ValueError("size_from='predicted' needs predicted_boxes")
            predicted_boxes = torch.zeros_like(gt_boxes)
        _check_boxes(predicted_boxes, gt_boxes.shape[0], "predicted_boxes")
        self.gt_boxes.append(gt_boxes.detach().float())
        self.predicted_boxes.append(predicted_boxes.detach().float().to(gt_boxes.device))

    def compute(self) -> dict[str, Tensor]:
        cat = lambda xs: torch.cat(xs) if isinstance(xs, list) else xs  # noqa: E731
        gt = cat(self.gt_boxes).reshape(-1, 4) if len(self.gt_boxes) else torch.zeros(0, 4)
        predicted = (
            cat(self.predicted_boxes).reshape(-1, 4) if len(self.predicted_boxes) else torch.zeros(0, 4)
        )
        valid = _valid_boxes(gt)
        gt, predicted = gt[valid], predicted[valid]
        source = gt if self.size_from == "gt" else predicted[_valid_boxes(predicted)]
        zero = torch.zeros((), device=gt.device)
        if gt.shape[0] == 0 or source.shape[0] == 0:
            return {"box_iou": zero, "box_acc": zero.clone()}
        size = torch.stack([source[:, 2] - source[:, 0], source[:, 3] - source[:, 1]], dim=1).mean(0)
        iou = box_iou(centered_boxes(size, self.image_size)[None, :], gt)
        return {"box_iou": iou.mean(), "box_acc": (iou >= self.iou_threshold).float().mean()}
