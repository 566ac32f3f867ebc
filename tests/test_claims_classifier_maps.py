"""The classifier bench's references (perfect-mask ceiling, colour baseline, box curves, tau choice) and its
per-seed cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from claims_classifier_maps import (  # noqa: E402
    TAUS,
    box_curve,
    colour_map,
    mask_ceilings,
    otsu_scores,
    tau_choice,
)
from claims_seed_cache import cached_seed  # noqa: E402

from datamodules.images import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def square_masks(n: int = 4, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    boxes = torch.zeros(n, 4)
    for i in range(n):
        x, y, s = 5 + 7 * i, 9 + 3 * i, 13 + 2 * i
        masks[i, y:y + s, x:x + s] = True
        boxes[i] = torch.tensor([x, y, x + s, y + s], dtype=torch.float32)
    return masks, boxes


def test_ceiling_is_perfect_at_full_resolution_and_falls_with_coarser_maps() -> None:
    masks, boxes = square_masks()
    ceiling = mask_ceilings(masks, boxes, [(64, 64), (16, 16), (4, 4), (1, 1)])
    assert ceiling["S1"]["miou"] == 1.0 and max(ceiling["S1"]["box_curve"]) == 1.0
    assert ceiling["S1"]["miou"] > ceiling["S2"]["miou"] > ceiling["S3"]["miou"]
    # a 1x1 map is constant: nothing is found (Otsu of a constant map), the background IoU alone
    background = float((~masks).sum()) / masks.numel()
    assert abs(ceiling["S4"]["miou"] - background / 2) < 1e-6
    assert ceiling["S2"]["size"] == [16, 16]


def test_otsu_scores_pool_pixel_counts_over_the_images() -> None:
    masks, _ = square_masks()
    maps = masks.float()
    maps[0] = 1.0 - maps[0]  # one image exactly wrong
    scores = otsu_scores(maps, masks, batch=3)
    tp = float(masks[1:].sum())
    fp, fn = float((~masks[0]).sum()), float(masks[0].sum())
    assert abs(scores["precision"] - tp / (tp + fp)) < 1e-6
    assert abs(scores["recall"] - tp / (tp + fn)) < 1e-6


def test_colour_map_is_the_distance_to_the_mean_border_colour() -> None:
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 20, 24)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images = (rgb - mean) / std
    got = colour_map(images)
    for i in range(2):
        edge = torch.ones(20, 24, dtype=torch.bool)
        edge[1:-1, 1:-1] = False
        border = rgb[i][:, edge].mean(1)
        distance = ((rgb[i] - border[:, None, None]) ** 2).sum(0).sqrt()
        expected = (distance - distance.min()) / (distance.max() - distance.min())
        assert torch.allclose(got[i], expected, atol=1e-5)


def test_box_curve_and_tau_chosen_on_one_set_reported_on_another() -> None:
    masks, boxes = square_masks(2)
    # a map whose box fits at high tau only: the object at 1, a wide halo at 0.3
    maps = torch.zeros(2, 64, 64)
    for i in range(2):
        x1, y1, x2, y2 = boxes[i].long().tolist()
        maps[i, max(0, y1 - 12):y2 + 12, max(0, x1 - 12):x2 + 12] = 0.3
        maps[i, y1:y2, x1:x2] = 1.0
    curve = box_curve(maps, boxes)
    assert len(curve) == len(TAUS)
    assert all(v == 0.0 for t, v in zip(TAUS, curve) if t < 0.3)
    assert all(v == 1.0 for t, v in zip(TAUS, curve) if t > 0.3)
    select = [0.1, 0.9, 0.9] + [0.0] * (len(TAUS) - 3)
    report = [0.5, 0.2, 0.7] + [0.0] * (len(TAUS) - 3)
    assert tau_choice(select, report) == (TAUS[1], 0.2)  # the smallest best tau, read on the other curve


def test_seed_cache_writes_reuses_and_reruns(tmp_path) -> None:
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"value": len(calls)}

    path = tmp_path / "cluttered" / "seed3.json"
    first, hit = cached_seed(path, {"epochs": 5}, False, compute)
    assert first == {"value": 1} and not hit
    assert json.loads(path.read_text()) == {"settings": {"epochs": 5}, "results": {"value": 1}}
    again, hit = cached_seed(path, {"epochs": 5}, False, compute)
    assert again == {"value": 1} and hit and len(calls) == 1
    other, hit = cached_seed(path, {"epochs": 6}, False, compute)  # other settings: run again
    assert other == {"value": 2} and not hit
    fresh, hit = cached_seed(path, {"epochs": 6}, True, compute)
    assert fresh == {"value": 3} and not hit and len(calls) == 3
    assert not list(path.parent.glob("*.partial"))


def test_grid_normalises_the_raw_layer_maps_as_gradient_layer_maps_does() -> None:
    """The grid derives both layerization sums from one set of raw layer maps: its normalised maps are
    ``gradient_layer_maps(layer_norm="minmax")``'s."""
    from claims_classifier_grid import normalised

    from cama.explain import gradient_layer_maps, logit_score, record_gradients

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 5, 3, stride=2, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(5, 3))
    images = torch.randn(2, 3, 16, 16)
    record = record_gradients(model, images, logit_score(torch.tensor([0, 2])), ["1", "3"])
    for delta in (None, 20):
        raw = gradient_layer_maps(record, "gradcam", truncation=delta, layer_norm="none")
        expected = gradient_layer_maps(record, "gradcam", truncation=delta, layer_norm="minmax")
        for got, want in zip(normalised(raw), expected):
            torch.testing.assert_close(got, want)
    flat = torch.full((1, 8, 8), 0.3) + 1e-9 * torch.rand(1, 8, 8)  # a constant map after rounding
    assert float(normalised([flat])[0].abs().max()) == 0.0
