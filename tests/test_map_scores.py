"""MapScores against the dict of Metrics the explanation callbacks built by hand (same numbers,
same names, same order)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from cama.metrics import MapScores
from cama.metrics.faithfulness import AverageDropIncrease
from cama.metrics.localization import (
    BoxLocalization,
    BranchOverlap,
    CenteredBoxBaseline,
    EnergyPointingGame,
    OtsuSegmentation,
    boxes_from_maps,
)

SIZE = (20, 16)
TAUS = (0.1, 0.3, 0.6)


# --- the construction the callbacks wrote out (callbacks/localization_metrics.py, before MapScores)
def old_metrics(names, methods, has_box, has_mask, faith, topk, tau=0.25, iou_threshold=0.4):
    metrics: dict[str, Any] = {}
    for name in names:
        group: dict[str, Any] = {}
        if has_box:
            group["box"] = BoxLocalization(tau, TAUS, iou_threshold)
            group["energy"] = EnergyPointingGame()
            group["center"] = CenteredBoxBaseline(SIZE, size_from="predicted", iou_threshold=iou_threshold)
        if has_mask:
            group["otsu"] = OtsuSegmentation()
        if name in methods and faith:
            group["faith"] = AverageDropIncrease()
        metrics[name] = group
    if has_box:
        metrics["center_baseline"] = {"center": CenteredBoxBaseline(SIZE, "gt", iou_threshold)}
        metrics["uniform_baseline"] = {"energy": EnergyPointingGame()}
    if topk is not None:
        metrics["branch_overlap"] = {"overlap": BranchOverlap(topk)}
    return metrics


def old_update(group, maps, boxes, person, correct, rows):
    if boxes is not None:
        box = boxes[rows]
        predicted = boxes_from_maps(maps, group["box"].thresholds)
        group["box"].update(maps, box, correct[rows], boxes=predicted)
        group["energy"].update(maps, box)
        group["center"].update(box, predicted[:, -1])
    if person is not None:
        group["otsu"].update(maps, person[rows])


def old_metric_names(prefix: str, name: str, key: str, value: Any) -> dict[str, Tensor]:
    p = prefix
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
    return {f"{p}/{name}/{k}": v for k, v in value.items()}


def old_compute(metrics, prefix):
    for group in metrics.values():
        if "center" in group:
            group["center"].update(torch.zeros(0, 4), torch.zeros(0, 4))
    results = {}
    for name, group in metrics.items():
        for key, metric in group.items():
            value = metric.compute()
            metric.reset()
            results.update(old_metric_names(prefix, name, key, value))
    return results


def batch(g: torch.Generator, b: int):
    maps = torch.rand(b, *SIZE, generator=g) ** 4
    maps[0, 3:9, 2:7] += 1.5
    x1 = torch.randint(0, 7, (b,), generator=g)
    y1 = torch.randint(0, 9, (b,), generator=g)
    boxes = torch.stack([x1, y1, x1 + torch.randint(2, 9, (b,), generator=g),
                         y1 + torch.randint(2, 11, (b,), generator=g)], 1).float()
    boxes[-1] = 0  # no ground truth
    person = torch.rand(b, *SIZE, generator=g) > 0.55
    correct = torch.rand(b, generator=g) > 0.3
    return maps, boxes, person, correct


@pytest.mark.parametrize("has_box,has_mask,faith,topk", [
    (True, True, True, 0.3), (True, False, False, None), (False, True, True, 4), (False, False, True, None),
])
def test_same_numbers_names_and_order_as_the_hand_built_dict(has_box, has_mask, faith, topk):
    names = ["ram", "fam", "ram_branch1"]
    methods = ["ram", "fam"]
    old = old_metrics(names, methods, has_box, has_mask, faith, topk)
    new = MapScores(names, SIZE, has_box, has_mask, methods if faith else (), 0.25, TAUS, 0.4, topk)
    assert new.has_faithfulness("ram") == faith and not new.has_faithfulness("ram_branch1")
    g = torch.Generator().manual_seed(3)
    for epoch in range(2):  # reset between epochs
        for _ in range(3):
            maps, boxes, person, correct = batch(g, 6)
            rows = torch.tensor([0, 2, 3, 5])
            if has_box:
                old["center_baseline"]["center"].update(boxes)
                old["uniform_baseline"]["energy"].update(torch.ones(boxes.shape[0], *SIZE), boxes)
                new.update_baselines(boxes, SIZE)
            if topk is not None:
                raw = torch.rand(6, 3, 5, 4, generator=g)
                old["branch_overlap"]["overlap"].update(raw)
                new.update_overlap(raw)
            for i, name in enumerate(names):
                m = maps[rows] * (i + 1) ** 0.5 if i != 1 else maps[rows].flip(-1)
                old_update(old[name], m, boxes if has_box else None, person if has_mask else None, correct, rows)
                new.update_maps(
                    name, m, boxes[rows] if has_box else None, person[rows] if has_mask else None, correct[rows]
                )
                if name in methods and faith:
                    scores, masked = torch.rand(4, generator=g), torch.rand(4, generator=g) - 0.2
                    old[name]["faith"].update(scores, masked)
                    new.update_faithfulness(name, scores, masked)
        expected = old_compute(old, "loc")
        got = new.compute_named("loc")
        new.reset()
        assert list(got) == list(expected)
        for key in expected:
            assert torch.equal(got[key], expected[key]), key
    if has_box:
        assert {"loc/ram/box_iou", "loc/ram/center_box_iou", "loc/center_baseline/box_iou",
                "loc/uniform_baseline/energy"} <= set(got)
        assert got["loc/uniform_baseline/energy"] > 0
    if has_mask:
        assert "loc/fam/otsu_miou" in got
    if faith:
        assert "loc/ram/ad" in got and "loc/ram_branch1/ad" not in got
    assert ("loc/branch_overlap_iou" in got) == (topk is not None)


def test_moves_with_the_module_and_resets():
    scores = MapScores(["ram"], SIZE, True, False, ["ram"], branch_overlap_topk=0.2).to("cpu")
    maps, boxes, _, correct = batch(torch.Generator().manual_seed(0), 4)
    scores.update_maps("ram", maps, boxes, None, correct)
    first = scores.compute_named("p")
    scores.reset()
    scores.update_maps("ram", maps, boxes, None, correct)
    assert torch.equal(scores.compute_named("p")["p/ram/box_iou"], first["p/ram/box_iou"])


def test_part_evidence_is_the_energy_share_over_the_area_share_of_the_discriminative_parts():
    """Two 2x2 maps, two parts each, written out by hand: of the energy on the person, the share on
    the selected parts, over their share of the person's area; the branches' regions cover the parts."""
    maps = torch.tensor([[[3.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [2.0, 4.0]]])
    parts = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    parts[:, 0, 0, :] = True  # part 0: the top row
    parts[:, 1, 1, 0] = True  # part 1: the bottom-left pixel; the bottom-right one is background
    selected = torch.tensor([[True, False], [False, True]])
    branches = torch.stack([maps, maps.flip(-1)], dim=1)  # map 1's second branch peaks at bottom-left
    scores = MapScores(["ram"], (2, 2), has_box=False, has_mask=True, evidence_topk=1, evidence_names=["ram"])
    scores.update_parts("ram", maps, parts, selected, branches)
    results = scores.compute_named("loc")
    # map 0: 4 of its 4 energy on the person, all of it on the top row (2 of the 3 person pixels)
    # map 1: 4 of its 8 on the person, 2 of those 4 on the bottom-left pixel (1 of the 3)
    assert results["loc/ram/person_energy"] == pytest.approx((1.0 + 0.5) / 2)
    assert results["loc/ram/evidence_energy"] == pytest.approx((1.0 + 0.5) / 2)
    assert results["loc/ram/evidence_area"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert results["loc/ram/evidence_ratio"] == pytest.approx(1.5 / 1.0)
    # top pixels: map 0's branches (0, 0) and (0, 1), both in part 0; map 1's (1, 1) (background)
    # and, flipped, (1, 0): part 1. One part each.
    assert results["loc/ram/parts_covered"] == pytest.approx(1.0)
