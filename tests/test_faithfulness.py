"""Average Drop / Increase in Confidence (fam Eq. 21-22) and the masking of images by maps."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from cama.metrics import AverageDropIncrease, average_drop, increase_in_confidence, mask_images

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def test_hand_worked_average_drop_and_increase():
    scores = torch.tensor([0.8, 0.5, 0.4, -0.2])  # Y: similarity on the image
    masked = torch.tensor([0.4, 0.6, 0.4, 0.1])  # O: on the image masked by the map
    # drops: (0.8 - 0.4) / 0.8 = 0.5, 0 (O > Y), 0 (O = Y); Y <= 0 is left out of AD
    assert average_drop(scores, masked).item() == pytest.approx(100 * 0.5 / 3)
    # O > Y for the 2nd and the 4th sample
    assert increase_in_confidence(scores, masked).item() == pytest.approx(50.0)
    metric = AverageDropIncrease()
    metric.update(scores[:1], masked[:1])
    metric.update(scores[1:], masked[1:])
    result = metric.compute()
    assert result["ad"].item() == pytest.approx(100 * 0.5 / 3)
    assert result["ic"].item() == pytest.approx(50.0)


def test_intervals_normal_for_the_drops_agresti_coull_for_the_increases():
    scores = torch.tensor([0.8, 0.5, 0.4, -0.2, 0.9])
    masked = torch.tensor([0.4, 0.6, 0.1, 0.1, 0.0])
    # the per-sample terms written out: drops of the samples with Y > 0, then the 0/1 increases
    drops = [(0.8 - 0.4) / 0.8, 0.0, (0.4 - 0.1) / 0.4, (0.9 - 0.0) / 0.9]
    increases = [0.0, 1.0, 0.0, 1.0, 0.0]
    metric = AverageDropIncrease()
    for i in range(5):  # one sample per update: the sums add up over batches
        metric.update(scores[i : i + 1], masked[i : i + 1])
    result = metric.compute()
    assert result["ad"].item() == pytest.approx(100 * statistics.mean(drops), rel=1e-6)
    ad_half_width = 1.96 * statistics.stdev(drops) / math.sqrt(4)
    assert result["ad_ci95"].item() == pytest.approx(100 * ad_half_width, rel=1e-6)
    assert result["ic"].item() == pytest.approx(100 * statistics.mean(increases))
    n, p = 5 + 1.96**2, (sum(increases) + 1.96**2 / 2) / (5 + 1.96**2)  # 2 increases in 5, shrunk towards 1/2
    assert result["ic_ci95"].item() == pytest.approx(100 * 1.96 * math.sqrt(p * (1 - p) / n), rel=1e-6)
    # no increase in 64 samples: IC is 0 but not known to +- 0 (the normal interval's claim)
    none = AverageDropIncrease()
    none.update(torch.ones(64), torch.full((64,), 0.5))
    assert none.compute()["ic"].item() == 0.0
    assert none.compute()["ic_ci95"].item() == pytest.approx(3.95, abs=0.01)  # 1.96 sqrt(.0283 .9717 / 67.84)
    single = AverageDropIncrease()
    single.update(scores[:1], masked[:1])
    assert single.compute()["ad_ci95"].item() == 0.0  # one sample: no spread to measure


def test_no_drop_when_the_mask_keeps_the_score():
    scores = torch.tensor([0.9, 0.3])
    assert average_drop(scores, scores).item() == 0.0
    assert increase_in_confidence(scores, scores).item() == 0.0
    assert average_drop(scores, torch.zeros(2)).item() == pytest.approx(100.0)
    # a negative similarity on the masked image is no similarity at all: the drop stops at 100%
    assert average_drop(scores, torch.full((2,), -0.5)).item() == pytest.approx(100.0)


def test_mask_images_multiplies_the_picture_and_normalises_again():
    gen = torch.Generator().manual_seed(0)
    picture = torch.rand(2, 3, 8, 6, generator=gen)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    images = (picture - mean) / std
    ones = torch.ones(2, 8, 6)
    assert torch.allclose(mask_images(images, ones, MEAN, STD), images, atol=1e-6)
    zeros = torch.zeros(2, 8, 6)
    black = (torch.zeros_like(picture) - mean) / std
    assert torch.allclose(mask_images(images, zeros, MEAN, STD), black, atol=1e-6)
    half = torch.full((2, 4, 3), 0.5)  # smaller maps are upsampled to the image size
    assert torch.allclose(mask_images(images, half, MEAN, STD), (picture * 0.5 - mean) / std, atol=1e-6)
    # without mean / std the input tensor itself is masked
    assert torch.allclose(mask_images(images, half), images * 0.5, atol=1e-6)


def test_mask_images_rejects_bad_shapes():
    with pytest.raises(ValueError):
        mask_images(torch.zeros(2, 3, 4, 4), torch.zeros(3, 4, 4))
    with pytest.raises(ValueError):
        mask_images(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4), mean=MEAN)
