"""Localization metrics on maps with known answers, and their DDP reduction (cama.metrics.localization)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cama.metrics import (
    AverageDropIncrease,
    BoxLocalization,
    BranchOverlap,
    CenteredBoxBaseline,
    EnergyPointingGame,
    OtsuSegmentation,
    box_from_map,
    box_iou,
    boxes_from_maps,
    branch_overlap_iou,
    energy_pointing_game,
    max_box_accuracy,
    otsu_segmentation,
    otsu_threshold,
    segmentation_counts,
    segmentation_scores,
    top1_localization_error,
)
from cama.metrics.boxes import any_along
from cama.metrics.localization import centered_boxes, largest_connected_component, mask_to_box

H, W = 40, 24


def blob(
    x1: int, y1: int, x2: int, y2: int, value: float = 1.0, height: int = H, width: int = W
) -> torch.Tensor:
    """A map that is ``value`` on columns x1..x2-1 and rows y1..y2-1, 0 elsewhere."""
    out = torch.zeros(height, width)
    out[y1:y2, x1:x2] = value
    return out


# --------------------------------------------------------------------------------------------------
# boxes
# --------------------------------------------------------------------------------------------------
def test_box_iou_hand_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert box_iou(a, torch.tensor([[0.0, 0.0, 10.0, 10.0]])).item() == pytest.approx(1.0)
    assert box_iou(a, torch.tensor([[5.0, 0.0, 15.0, 10.0]])).item() == pytest.approx(50 / 150)
    assert box_iou(a, torch.tensor([[20.0, 20.0, 30.0, 30.0]])).item() == 0.0
    assert box_iou(a, torch.zeros(1, 4)).item() == 0.0  # an empty box never matches
    assert box_iou(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0


def test_blob_inside_the_box_scores_high():
    gt = torch.tensor([[4.0, 6.0, 20.0, 34.0]])
    maps = blob(6, 9, 18, 31)[None]  # inside the ground-truth box
    predicted = box_from_map(maps, tau=0.2)
    assert predicted.tolist() == [[6.0, 9.0, 18.0, 31.0]]
    iou = box_iou(predicted, gt).item()
    assert iou == pytest.approx((12 * 22) / (16 * 28))
    assert energy_pointing_game(maps, gt).item() == pytest.approx(1.0)
    exact = blob(4, 6, 20, 34)[None]
    assert box_iou(box_from_map(exact), gt).item() == pytest.approx(1.0)


def test_blob_outside_the_box_scores_zero():
    gt = torch.tensor([[0.0, 0.0, 10.0, 15.0]])
    maps = blob(14, 22, 22, 38)[None]
    assert box_iou(box_from_map(maps), gt).item() == 0.0
    assert energy_pointing_game(maps, gt).item() == 0.0
    metric = BoxLocalization()
    metric.update(maps, gt)
    result = metric.compute()
    assert result["box_iou"].item() == 0.0 and result["box_acc"].item() == 0.0
    assert result["max_box_acc"].item() == 0.0 and result["top1_loc_err"].item() == 1.0


def test_largest_component_wins_over_a_higher_small_one():
    maps = (blob(1, 1, 5, 5, value=1.0) + blob(10, 12, 22, 36, value=0.6))[None]  # small peak, big plateau
    assert box_from_map(maps, tau=0.2).tolist() == [[10.0, 12.0, 22.0, 36.0]]
    # above 0.6 of the max only the small blob is left
    assert box_from_map(maps, tau=0.7).tolist() == [[1.0, 1.0, 5.0, 5.0]]


def test_components_are_8_connected():
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    for i in range(4):  # a diagonal line is one 8-connected component
        mask[0, i, i] = True
    mask[0, 5, 0] = True  # an isolated pixel
    largest = largest_connected_component(mask)
    assert largest[0].sum() == 4 and not largest[0, 5, 0]
    assert mask_to_box(largest).tolist() == [[0.0, 0.0, 4.0, 4.0]]


def test_batched_components_do_not_leak_between_maps():
    maps = torch.stack([blob(0, 0, 3, 3), torch.zeros(H, W), blob(5, 5, 20, 30), blob(0, 0, 24, 40)])
    boxes = boxes_from_maps(maps, [0.5, 0.9])
    assert boxes.shape == (4, 2, 4)
    assert boxes[0, 0].tolist() == [0.0, 0.0, 3.0, 3.0]
    assert boxes[1].abs().sum() == 0  # a zero map gives an empty box
    assert boxes[2, 1].tolist() == [5.0, 5.0, 20.0, 30.0]
    assert boxes[3, 0].tolist() == [0.0, 0.0, 24.0, 40.0]


def test_max_box_accuracy_picks_the_best_threshold():
    # a wide faint halo around a bright core: only a high tau isolates the core (= the gt box)
    gt = torch.tensor([[6.0, 8.0, 18.0, 32.0]]).repeat(2, 1)
    core = blob(6, 8, 18, 32, value=1.0)
    halo = torch.full((H, W), 0.3)
    maps = torch.stack([torch.maximum(core, halo), torch.maximum(core, halo)])
    accuracy, tau = max_box_accuracy(maps, gt, taus=[0.1, 0.2, 0.5, 0.9])
    assert accuracy.item() == 1.0 and tau.item() == pytest.approx(0.5)
    metric = BoxLocalization(tau=0.2, taus=[0.1, 0.2, 0.5, 0.9])
    metric.update(maps, gt)
    result = metric.compute()
    assert result["box_acc"].item() == 0.0  # at tau = 0.2 the halo is the box: IoU = 288 / 960
    assert result["box_iou"].item() == pytest.approx(12 * 24 / (H * W))
    assert result["max_box_acc"].item() == 1.0 and result["max_box_acc_tau"].item() == pytest.approx(0.5)


def test_top1_localization_error_needs_both_right():
    gt = torch.tensor([[4.0, 4.0, 20.0, 36.0]]).repeat(3, 1)
    maps = torch.stack([blob(4, 4, 20, 36), blob(4, 4, 20, 36), blob(0, 0, 2, 2)])
    correct = torch.tensor([True, False, True])
    assert top1_localization_error(maps, gt, correct).item() == pytest.approx(2 / 3)
    metric = BoxLocalization()
    metric.update(maps[:2], gt[:2], correct[:2])
    metric.update(maps[2:], gt[2:], correct[2:])
    result = metric.compute()
    assert result["top1_loc_err"].item() == pytest.approx(2 / 3)
    assert result["box_acc"].item() == pytest.approx(2 / 3)


def test_samples_without_a_ground_truth_box_are_skipped():
    metric, energy = BoxLocalization(), EnergyPointingGame()
    maps = torch.stack([blob(4, 4, 20, 36), blob(4, 4, 20, 36)])
    gt = torch.tensor([[4.0, 4.0, 20.0, 36.0], [0.0, 0.0, 0.0, 0.0]])  # the second: a distractor, no person
    metric.update(maps, gt)
    energy.update(maps, gt)
    assert metric.compute()["box_acc"].item() == 1.0
    assert energy.compute().item() == pytest.approx(1.0)


def test_energy_pointing_game_is_the_share_inside():
    maps = torch.zeros(1, H, W)
    maps[0, 0, 0] = 3.0  # outside
    maps[0, 10, 10] = 1.0  # inside
    maps[0, 11, 12] = -5.0  # negative values carry no energy (ReLU)
    gt = torch.tensor([[8.0, 8.0, 16.0, 16.0]])
    assert energy_pointing_game(maps, gt).item() == pytest.approx(0.25)
    assert energy_pointing_game(torch.zeros(1, H, W), gt).item() == 0.0


# --------------------------------------------------------------------------------------------------
# Otsu segmentation
# --------------------------------------------------------------------------------------------------
def naive_otsu(values: np.ndarray, bins: int = 256) -> np.ndarray:
    """The foreground of skimage.filters.threshold_otsu's split, with loops over the splits."""
    hist, edges = np.histogram(values.ravel(), bins=bins, range=(values.min(), values.max()))
    centres = (edges[:-1] + edges[1:]) / 2
    best, split = -1.0, 0
    for k in range(bins - 1):
        w0, w1 = hist[: k + 1].sum(), hist[k + 1 :].sum()
        if w0 == 0 or w1 == 0:
            continue
        m0 = (hist[: k + 1] * centres[: k + 1]).sum() / w0
        m1 = (hist[k + 1 :] * centres[k + 1 :]).sum() / w1
        variance = w0 * w1 * (m0 - m1) ** 2
        if variance > best * (1 + 1e-12):  # equal splits (across empty bins) give the same classes
            best, split = variance, k
    return values >= edges[split + 1]


def test_otsu_splits_a_bimodal_map():
    gen = torch.Generator().manual_seed(0)
    truth = torch.zeros(H, W, dtype=torch.bool)
    truth[10:30, 5:15] = True
    maps = torch.where(truth, 0.8, 0.2) + 0.05 * torch.randn(H, W, generator=gen)
    threshold = otsu_threshold(maps[None]).item()
    assert 0.35 < threshold < 0.65
    segmented = otsu_segmentation(maps[None])[0]
    assert torch.equal(segmented, truth)
    metric = OtsuSegmentation()
    metric.update(maps[None], truth[None])
    scores = metric.compute()
    for name in ("miou", "iou", "precision", "recall", "micro_f1"):
        assert scores[name].item() == pytest.approx(1.0), name


def test_otsu_matches_the_histogram_method_on_random_maps():
    gen = torch.Generator().manual_seed(1)
    maps = torch.rand(5, 17, 9, generator=gen, dtype=torch.float64) ** 2
    expected = torch.stack([torch.from_numpy(naive_otsu(m.numpy())) for m in maps])
    assert torch.equal(otsu_segmentation(maps), expected)
    thresholds = otsu_threshold(maps)
    assert torch.equal(maps >= thresholds.double()[:, None, None], expected)


def test_otsu_of_a_constant_map_is_empty():
    assert not otsu_segmentation(torch.full((2, 5, 5), 0.3)).any()


def test_segmentation_scores_hand_worked():
    predicted = torch.tensor([[[1, 1, 0, 0]], [[1, 0, 0, 0]]], dtype=torch.bool)
    target = torch.tensor([[[1, 0, 1, 0]], [[1, 1, 0, 0]]], dtype=torch.bool)
    counts = segmentation_counts(predicted, target)
    assert counts.tolist() == [[1, 1, 1, 1], [1, 0, 1, 2]]  # TP, FP, FN, TN per image
    scores = segmentation_scores(counts)  # pooled: TP 2, FP 1, FN 2, TN 3
    assert scores["precision"].item() == pytest.approx(2 / 3)
    assert scores["recall"].item() == pytest.approx(2 / 4)
    assert scores["micro_f1"].item() == pytest.approx(4 / 7)
    assert scores["iou"].item() == pytest.approx(2 / 5)
    assert scores["miou"].item() == pytest.approx((2 / 5 + 3 / 6) / 2)


# --------------------------------------------------------------------------------------------------
# branch overlap and the centred-box baseline
# --------------------------------------------------------------------------------------------------
def test_branch_overlap_of_identical_disjoint_and_partial_maps():
    base = torch.arange(8.0).reshape(1, 2, 4)  # the top 2 cells: (1, 2), (1, 3)
    identical = torch.stack([base, base], dim=1)
    assert branch_overlap_iou(identical, k=2).item() == pytest.approx(1.0)
    disjoint = torch.stack([base, -base], dim=1)
    assert branch_overlap_iou(disjoint, k=2).item() == 0.0
    other = base.clone()
    other[0, 1, 3] = -1.0  # top 2 now (1, 1), (1, 2): one shared cell
    partial = torch.stack([base, other], dim=1)
    assert branch_overlap_iou(partial, k=2).item() == pytest.approx(1 / 3)
    three = torch.stack([base, base, -base], dim=1)  # pairs: 1, 0, 0
    assert branch_overlap_iou(three, k=2).item() == pytest.approx(1 / 3)
    metric = BranchOverlap(topk=0.25)  # 25% of 8 cells = 2, as the OAP's resolve_topk
    metric.update(identical)
    metric.update(disjoint)
    assert metric.compute().item() == pytest.approx(0.5)


def test_centered_box_baseline():
    assert centered_boxes(torch.tensor([10.0, 20.0]), (40, 24)).tolist() == [7.0, 10.0, 17.0, 30.0]
    gt = torch.tensor([[7.0, 10.0, 17.0, 30.0], [0.0, 0.0, 10.0, 20.0]])
    metric = CenteredBoxBaseline((40, 24), size_from="gt")
    metric.update(gt[:1])
    metric.update(gt[1:])
    result = metric.compute()
    assert result["box_iou"].item() == pytest.approx((1.0 + 30 / 370) / 2)  # 3 x 10 px overlap with the 2nd
    assert result["box_acc"].item() == pytest.approx(0.5)
    predicted = CenteredBoxBaseline((40, 24), size_from="predicted")
    predicted.update(gt, torch.tensor([[0.0, 0.0, 5.0, 10.0], [0.0, 0.0, 15.0, 30.0]]))  # mean size 10 x 20
    assert predicted.compute()["box_iou"].item() == pytest.approx(result["box_iou"].item())


# --------------------------------------------------------------------------------------------------
# DDP: two processes give the single-process numbers
# --------------------------------------------------------------------------------------------------
def _data(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n = 10
    maps = torch.rand(n, H, W, generator=gen) ** 3
    x1 = torch.randint(0, 10, (n,), generator=gen).float()
    y1 = torch.randint(0, 15, (n,), generator=gen).float()
    boxes = torch.stack(
        [
            x1,
            y1,
            x1 + 8 + torch.randint(0, 6, (n,), generator=gen),
            y1 + 12 + torch.randint(0, 10, (n,), generator=gen),
        ],
        1,
    )
    boxes[3] = 0  # no ground truth
    return {
        "maps": maps,
        "boxes": boxes,
        "correct": torch.rand(n, generator=gen) > 0.3,
        "masks": torch.rand(n, H, W, generator=gen) > 0.6,
        "branches": torch.rand(n, 3, 4, 2, generator=gen),
        "scores": torch.rand(n, generator=gen) - 0.1,
        "masked": torch.rand(n, generator=gen),
    }


def _all_metrics(data: dict[str, torch.Tensor], rows: slice | list[int]) -> dict[str, float]:
    box, energy, otsu = BoxLocalization(), EnergyPointingGame(), OtsuSegmentation()
    overlap, faith = BranchOverlap(0.25), AverageDropIncrease()
    center_gt = CenteredBoxBaseline((H, W), "gt")
    center_pred = CenteredBoxBaseline((H, W), "predicted")
    d = {k: v[rows] for k, v in data.items()}
    box.update(d["maps"], d["boxes"], d["correct"])
    energy.update(d["maps"], d["boxes"])
    otsu.update(d["maps"], d["masks"])
    overlap.update(d["branches"])
    faith.update(d["scores"], d["masked"])
    center_gt.update(d["boxes"])
    center_pred.update(d["boxes"], box_from_map(d["maps"]))
    out: dict[str, float] = {}
    for name, metric in (
        ("box", box),
        ("otsu", otsu),
        ("faith", faith),
        ("cgt", center_gt),
        ("cpred", center_pred),
    ):
        out.update({f"{name}/{k}": float(v) for k, v in metric.compute().items()})
    out["energy"] = float(energy.compute())
    out["overlap"] = float(overlap.compute())
    return out


def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        data = _data()
        rows = list(range(7)) if rank == 0 else list(range(7, 10))  # uneven shares
        queue.put((rank, _all_metrics(data, rows)))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_reduction_equals_single_process():
    """Two gloo processes, each updating its (uneven) share, compute the single-process numbers."""
    expected = _all_metrics(_data(), slice(None))
    context = mp.get_context("fork")  # the children inherit the imports: seconds, not tens
    queue = context.Queue()
    port = _free_port()
    workers = [context.Process(target=_ddp_worker, args=(rank, 2, port, queue)) for rank in range(2)]
    for worker in workers:
        worker.start()
    try:
        results = dict(queue.get(timeout=120) for _ in range(2))
    finally:
        for worker in workers:
            worker.join(timeout=60)
    assert all(worker.exitcode == 0 for worker in workers)
    for rank in (0, 1):
        assert results[rank].keys() == expected.keys()
        for key, value in expected.items():
            assert results[rank][key] == pytest.approx(value, abs=1e-6), (rank, key)


def test_mask_to_box_is_torchvisions_masks_to_boxes_with_exclusive_ends():
    from torchvision.ops import masks_to_boxes

    torch.manual_seed(0)
    masks = torch.rand(60, 17, 13) > 0.93
    masks[5] = False  # empty: zeros
    masks[6] = False
    masks[6, 16, 12] = True  # one pixel in the corner
    masks[7] = True  # full
    expected = masks_to_boxes(masks)  # inclusive right/bottom, one mask at a time
    expected[:, 2:] += masks.flatten(1).any(1)[:, None]
    assert torch.equal(mask_to_box(masks), expected)
    assert torch.equal(mask_to_box(masks.view(6, 10, 17, 13)), expected.view(6, 10, 4))


@pytest.mark.parametrize(
    "shape, dim", [((6, 5, 7, 3), 1), ((6, 5, 7, 3), 2), ((6, 5, 7, 3), (2, 3)), ((4, 0, 3), 1)]
)
def test_any_along_is_any(shape, dim):
    """The uint8 route of ``any_along`` gives ``Tensor.any`` exactly, sparse and dense masks, a
    strided (transposed) mask and an empty dimension included."""
    gen = torch.Generator().manual_seed(1)
    for density in (0.0, 0.02, 0.5, 1.0):
        mask = torch.rand(shape, generator=gen) < density
        assert torch.equal(any_along(mask, dim), mask.any(dim))
        flipped = mask.transpose(0, -1)
        assert torch.equal(any_along(flipped, dim), flipped.any(dim))
