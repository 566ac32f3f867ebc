"""The scores of explanation maps, one group of Metrics per map (a method, or one of its branches),
plus the baselines a map has to beat -- what the localization and few-shot explanation callbacks log.

:class:`MapScores` holds, for every map name, a :class:`~torchmetrics.MetricCollection` of

* ``"box"`` :class:`~cama.metrics.localization.BoxLocalization`, ``"energy"``
  :class:`~cama.metrics.localization.EnergyPointingGame` and ``"center"``
  :class:`~cama.metrics.localization.CenteredBoxBaseline` (a centred box of the mean size of the
  map's boxes) when the data has boxes;
* ``"otsu"`` :class:`~cama.metrics.localization.OtsuSegmentation` when it has person masks;
* ``"faith"`` :class:`~cama.metrics.faithfulness.AverageDropIncrease` for the names scored with AD/IC;
* ``"curves"`` :class:`~cama.metrics.deletion.DeletionInsertion` for the names with deletion /
  insertion curves (``curve_names``; a name that is no map of ``names``, e.g. the reference maps
  ``random`` and ``center_prior``, gets a group of its own), logged under ``faith/`` (:data:`CURVES_PREFIX`);
* ``"parts"`` :class:`~cama.metrics.parts.PartEvidence` when the data marks the parts that tell an
  identity from its look-alikes (the synthetic re-ID set's ``evidence_required``): the map's energy
  share on them against their share of the person (``evidence_ratio`` above 1: the map prefers
  them) and the parts its top-k region covers;

and the groups ``"center_baseline"`` (a centred box of the mean ground-truth size) and
``"uniform_baseline"`` (the pointing game of a uniform map) with boxes, ``"branch_overlap"``
(:class:`~cama.metrics.localization.BranchOverlap`) when asked for.  :meth:`MapScores.compute_named`
gives the logged names (:func:`score_names`), e.g. ``loc/ram/box_iou``,
``loc/fam/otsu_miou``, ``loc/ram/center_box_iou``, ``loc/center_baseline/box_iou``,
``loc/uniform_baseline/energy``, ``loc/branch_overlap_iou``, ``loc/dist_cam/ad``,
``loc/ram/evidence_ratio``, ``faith/ram/deletion_auc``, ``faith/random/insertion_ap_auc``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from cama.metrics.boxes import DEFAULT_TAUS, boxes_from_maps
from cama.metrics.deletion import DeletionInsertion
from cama.metrics.faithfulness import AverageDropIncrease
from cama.metrics.parts import PartEvidence
from cama.metrics.localization import (
    BoxLocalization,
    BranchOverlap,
    CenteredBoxBaseline,
    EnergyPointingGame,
    OtsuSegmentation,
)

__all__ = ["CURVES_PREFIX", "MapScores", "score_names"]

# the order of the metrics inside a group (MetricCollection sorts its keys)
_KEY_ORDER = ("box", "energy", "center", "otsu", "parts", "faith", "curves", "overlap")
#: the default prefix of the deletion / insertion AUCs (``faith/<map>/deletion_auc``)
CURVES_PREFIX = "faith"


def score_names(
    prefix: str, name: str, key: str, value: Any, curves_prefix: str = CURVES_PREFIX
) -> dict[str, Tensor]:
    """Logged names of the result ``value`` of the metric ``key`` of the group ``name`` (a map, or a
    baseline): ``<prefix>/<name>/<score>``, e.g. ``loc/ram/box_iou``, ``loc/fam/otsu_miou``; the
    curves' ``<curves_prefix>/<name>/<score>``, e.g. ``faith/ram/deletion_auc``."""
    p = prefix
    if key == "curves":
        return {f"{curves_prefix}/{name}/{k}": v for k, v in value.items()}
    if key == "overlap":
        return {f"{p}/branch_overlap_iou": value}
    if key == "center" and name == "center_baseline":
        return {f"{p}/center_baseline/{k}": v for k, v in value.items()}
    if key == "center":
        return {f"{p}/{name}/center_{k}": v for k, v in value.items()}
    if key == "energy":
        return {f"{p}/{name}/energy": value}
    if key == "otsu":
        return {f"{p}/{name}/otsu_{k}": v for k, v in value.items()}
    return {f"{p}/{name}/{k}": v for k, v in value.items()}  # box, faith


class MapScores(nn.Module):
    """Per-map score groups and baselines (module docstring); move it with ``.to(device)``.

    Args:
        names: the maps scored, in logging order (methods, ``<method>_branch<i>``, ...).
        image_size: ``(H, W)`` of the images (the centred boxes).
        has_box: the data has ground-truth boxes (box, energy and centre scores, the baselines).
        has_mask: the data has person masks (Otsu segmentation).
        faithfulness_names: the names also scored with AD/IC.
        tau, taus, iou_threshold: of :class:`BoxLocalization` (and the centred boxes' accuracy).
        branch_overlap_topk: the ``topk`` of :class:`BranchOverlap`; None: no branch overlap.
        evidence_topk: the ``topk`` of :class:`PartEvidence` (its parts covered, a fraction of the
            map); None: the data has no part evidence.
        evidence_names: the names scored with :class:`PartEvidence` (the summed maps; their
            branches are its ``branch_maps``).
        curve_names: the names with deletion / insertion curves (:class:`DeletionInsertion`).
        curve_scores: the names of the curves' scores (``""``: the unnamed first one).
    """

    def __init__(
        self,
        names: Sequence[str],
        image_size: Sequence[int],
        has_box: bool,
        has_mask: bool,
        faithfulness_names: Collection[str] = (),
        tau: float = 0.2,
        taus: Sequence[float] = DEFAULT_TAUS,
        iou_threshold: float = 0.5,
        branch_overlap_topk: float | int | None = None,
        evidence_topk: float | int | None = None,
        evidence_names: Collection[str] = (),
        curve_names: Sequence[str] = (),
        curve_scores: Sequence[str] = ("",),
    ) -> None:
        super().__init__()
        image_size = tuple(int(s) for s in image_size[-2:])
        groups: dict[str, dict[str, Metric]] = {}
        for name in names:
            group: dict[str, Metric] = {}
            if has_box:
                group["box"] = BoxLocalization(tau, taus, iou_threshold)
                group["energy"] = EnergyPointingGame()
                group["center"] = CenteredBoxBaseline(
                    image_size, size_from="predicted", iou_threshold=iou_threshold
                )
            if has_mask:
                group["otsu"] = OtsuSegmentation()
            if evidence_topk is not None and name in evidence_names:
                group["parts"] = PartEvidence(evidence_topk)
            if name in faithfulness_names:
                group["faith"] = AverageDropIncrease()
            groups[name] = group
        for name in curve_names:
            groups.setdefault(name, {})["curves"] = DeletionInsertion(curve_scores)
        if has_box:
            groups["center_baseline"] = {"center": CenteredBoxBaseline(image_size, "gt", iou_threshold)}
            groups["uniform_baseline"] = {"energy": EnergyPointingGame()}
        if branch_overlap_topk is not None:
            groups["branch_overlap"] = {"overlap": BranchOverlap(branch_overlap_topk)}
        self.groups = nn.ModuleDict(
            {name: MetricCollection(group, compute_groups=False) for name, group in groups.items()}
        )
        self.image_size = image_size

    def _group(self, name: str) -> MetricCollection:
        return self.groups[name]

    def metrics(self) -> list[tuple[str, str, Metric]]:
        """``(group, key, metric)`` in logging order: the groups as built, inside a group box,
        energy, center, otsu, parts, faith, curves (overlap)."""
        out = []
        for name, group in self.groups.items():
            out += [(name, key, group[key]) for key in _KEY_ORDER if key in group]
        return out

    def has_faithfulness(self, name: str) -> bool:
        """Whether the map ``name`` is scored with AD/IC."""
        return name in self.groups and "faith" in self._group(name)

    def update_maps(
        self, name: str, maps: Tensor, boxes: Tensor | None, person_masks: Tensor | None, correct: Tensor
    ) -> None:
        """Score the maps ``[B, H, W]`` of ``name`` against the boxes ``[B, 4]`` and the person masks
        ``[B, H, W]`` (each None when the data has none); ``correct`` ``[B]`` bool: recognised."""
        group = self._group(name)
        if boxes is not None:
            predicted = boxes_from_maps(maps, group["box"].thresholds)  # one labelling pass, every tau
            group["box"].update(maps, boxes, correct, boxes=predicted)
            group["energy"].update(maps, boxes)
            group["center"].update(boxes, predicted[:, -1])  # the box at tau
        if person_masks is not None:
            group["otsu"].update(maps, person_masks)

    def update_parts(
        self, name: str, maps: Tensor, part_masks: Tensor, evidence: Tensor, branch_maps: Tensor | None = None
    ) -> None:
        """Part evidence of the maps ``[B, H, W]`` of ``name`` (and of its branches' maps
        ``[B, N, H, W]``, whose top regions cover the parts): part masks ``[B, P, H, W]``, the
        discriminative parts ``[B, P]`` bool."""
        self._group(name)["parts"].update(maps, part_masks, evidence, branch_maps)

    def update_baselines(self, boxes: Tensor, image_size: Sequence[int]) -> None:
        """The baselines of a batch with ground-truth boxes ``[B, 4]``: the centred box of the mean
        ground-truth size, and a uniform map (ones) of ``image_size`` ``(H, W)``."""
        self._group("center_baseline")["center"].update(boxes)
        uniform = torch.ones(boxes.shape[0], *image_size, device=boxes.device)
        self._group("uniform_baseline")["energy"].update(uniform, boxes)

    def update_faithfulness(self, name: str, scores: Tensor, masked_scores: Tensor) -> None:
        """AD / IC of ``name``: the scores ``[B]`` on the images and on the images masked by the maps."""
        self._group(name)["faith"].update(scores, masked_scores)

    def update_curves(self, names: Sequence[str], deletion: Tensor, insertion: Tensor) -> None:
        """The deletion and insertion curves ``[B, len(names), steps + 1(, S)]`` of the maps ``names``, one
        per column (:meth:`cama.map_scoring.CurveOptions.curves`' output)."""
        for j, name in enumerate(names):
            self._group(name)["curves"].update(deletion[:, j], insertion[:, j])

    def update_overlap(self, raw_maps: Tensor) -> None:
        """The branch overlap of the branches' maps ``[B, N >= 2, h, w]``."""
        self._group("branch_overlap")["overlap"].update(raw_maps)

    def prepare(self) -> None:
        """An empty update of every centred-box metric: their ``"cat"`` states must hold a tensor on
        every process before the synchronising ``compute`` (:meth:`compute_named` calls it)."""
        for _, key, metric in self.metrics():
            if key == "center":
                empty = torch.zeros(0, 4, device=metric.device)
                metric.update(empty, empty)

    def compute_named(
        self, prefix: str, skip: Collection[str] = (), curves_prefix: str = CURVES_PREFIX
    ) -> dict[str, Tensor]:
        """Every score under its logged name (:func:`score_names`), in :meth:`metrics` order (the
        same on every process: each ``compute`` synchronises), but the metrics whose key is in
        ``skip`` (e.g. ``("faith", "curves")`` on an epoch that did not update them: every process
        must skip the same); the curves under ``curves_prefix``."""
        self.prepare()
        results: dict[str, Tensor] = {}
        for name, key, metric in self.metrics():
            if key not in skip:
                results.update(score_names(prefix, name, key, metric.compute(), curves_prefix))
        return results

    def reset(self) -> None:
        """Reset every metric (after :meth:`compute_named`, for the next epoch)."""
        for _, _, metric in self.metrics():
            metric.reset()
