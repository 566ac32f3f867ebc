"""Localization scores of explanation maps as torchmetrics ``Metric`` s, and their functional forms.

The functional forms live in :mod:`cama.metrics.boxes` (boxes from maps, IoU, MaxBoxAcc, the
top-1 localization error, centred boxes) and :mod:`cama.metrics.segmentation` (energy pointing
game, Otsu segmentation, branch overlap); they are importable from here too.  Every ``Metric``'s
states are sums (``dist_reduce_fx="sum"``) or, where a statistic of the whole set is needed first,
concatenated tensors (``"cat"``), so N processes give the numbers of one
(``docs/evaluation.md#distributed-evaluation``):

* :class:`BoxLocalization`: the mean IoU and the box accuracy at one ``tau`` (0.2 as in fam
  Sec. V-A, following CAM), the top-1 localization error (a sample counts when it is both
  correctly recognised *and* correctly localized) and MaxBoxAcc, the best box accuracy over a
  sweep of ``tau`` (0.05, 0.15, ..., 0.95 by default).
* :class:`EnergyPointingGame` (fam Eq. 19), :class:`OtsuSegmentation` (ltgrad-cam Sec. 3.1),
  :class:`BranchOverlap` (cama-ram Eq. 5).
* :class:`CenteredBoxBaseline`: the same box scores for a box of a fixed (mean) size centred in the
  image, the number a map has to beat to say it localizes anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from cama.losses import resolve_topk
from cama.metrics import boxes as _boxes
from cama.metrics import segmentation as _segmentation
from cama.metrics.boxes import (  # noqa: F401 (re-exported: cama.metrics.localization.X)
    DEFAULT_TAUS,
    box_area,
    box_from_map,
    box_iou,
    box_localization_iou,
    boxes_from_maps,
    centered_boxes,
    check_boxes,
    check_maps,
    largest_connected_component,
    mask_to_box,
    max_box_accuracy,
    top1_localization_error,
)
from cama.metrics.segmentation import (  # noqa: F401 (re-exported)
    branch_overlap_iou,
    energy_pointing_game,
    otsu_segmentation,
    otsu_threshold,
    ratio,
    segmentation_counts,
    segmentation_scores,
    topk_masks,
)
from cama.metrics.states import add_sum_states

__all__ = [
    *_boxes.__all__,
    *_segmentation.__all__,
    "BoxLocalization",
    "EnergyPointingGame",
    "OtsuSegmentation",
    "BranchOverlap",
    "CenteredBoxBaseline",
]


def _valid_boxes(gt_boxes: Tensor) -> Tensor:
    return box_area(gt_boxes) > 0


class BoxLocalization(Metric):
    """Box scores of maps against ground-truth boxes (WSOL protocol, ``docs/map-scores.md#box-from-a-map``).

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
        add_sum_states(self, "iou_sum", "hits", shape=(sweep,))
        add_sum_states(self, "correct_hits", "total")

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The thresholds :meth:`update` boxes maps at: the sweep, then ``tau``."""
        return (*self.taus, self.tau)

    def update(
        self, maps: Tensor, gt_boxes: Tensor, correct: Tensor | None = None, boxes: Tensor | None = None
    ) -> None:
        """Add a batch; ``boxes`` may give ``boxes_from_maps(maps, self.thresholds)`` ``[B, T + 1, 4]``
        when they are computed anyway (the maps are then only checked for their batch size)."""
        check_maps(maps)
        check_boxes(gt_boxes, maps.shape[0], "gt_boxes")
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
        accuracy = ratio(self.hits, total.expand_as(self.hits))
        sweep = accuracy[:-1]
        best = int(sweep.argmax())
        return {
            "box_iou": ratio(self.iou_sum[-1], total).float(),
            "box_acc": accuracy[-1].float(),
            "top1_loc_err": (1.0 - ratio(self.correct_hits, total)).float(),
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
        add_sum_states(self, "proportion_sum", "total")

    def update(self, maps: Tensor, gt_boxes: Tensor) -> None:
        check_maps(maps)
        check_boxes(gt_boxes, maps.shape[0], "gt_boxes")
        valid = _valid_boxes(gt_boxes).to(maps.device)
        if not bool(valid.any()):
            return
        proportion = energy_pointing_game(maps[valid], gt_boxes.to(maps.device)[valid])
        self.proportion_sum += proportion.double().sum().to(self.total.device)
        self.total += float(proportion.numel())

    def compute(self) -> Tensor:
        return ratio(self.proportion_sum, self.total).float()


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
        add_sum_states(self, "counts", shape=(4,))

    def update(self, maps: Tensor, masks: Tensor) -> None:
        check_maps(maps)
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
        add_sum_states(self, "iou_sum", "total")

    def update(self, maps: Tensor) -> None:
        if maps.ndim != 4 or maps.shape[1] < 2:
            raise ValueError(f"maps must be [B, N >= 2, h, w], got shape {tuple(maps.shape)}")
        if maps.shape[0] == 0:
            return
        iou = branch_overlap_iou(maps, resolve_topk(self.topk, maps.shape[-2] * maps.shape[-1]))
        self.iou_sum += iou.double().sum().to(self.total.device)
        self.total += float(iou.numel())

    def compute(self) -> Tensor:
        return ratio(self.iou_sum, self.total).float()


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
        check_boxes(predicted_boxes, gt_boxes.shape[0], "predicted_boxes")
        self.gt_boxes.append(gt_boxes.detach().float())
        self.predicted_boxes.append(predicted_boxes.detach().float().to(gt_boxes.device))

    def compute(self) -> dict[str, Tensor]:
        gt, predicted = (
            dim_zero_cat(x).reshape(-1, 4) if len(x) else torch.zeros(0, 4)
            for x in (self.gt_boxes, self.predicted_boxes)
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
