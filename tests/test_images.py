"""The shared image module: normalisation and its inverse, on hand-made images; one denormalize for all."""

from __future__ import annotations

import pytest
import torch

from datamodules import FewShotDataModule, ReIDDataModule, RetrievalDataModule
from datamodules.base import ImageDataModule
from datamodules.images import IMAGENET_MEAN, IMAGENET_STD, NormalizeImage, denormalize_images, normalize_images

# one pixel per value, red / green / blue rows: 0, 51, 255 and 128
HAND = torch.tensor([[[0, 51], [255, 128]], [[255, 0], [51, 128]], [[128, 255], [0, 51]]], dtype=torch.uint8)


def test_normalize_matches_values_computed_by_hand():
    out = normalize_images(HAND)
    # (value / 255 - mean) / std, written out for three pixels
    assert out[0, 1, 0].item() == pytest.approx((1.0 - 0.485) / 0.229, abs=1e-6)
    assert out[1, 0, 1].item() == pytest.approx((0.0 - 0.456) / 0.224, abs=1e-6)
    assert out[2, 1, 1].item() == pytest.approx((0.2 - 0.406) / 0.225, abs=1e-6)
    assert torch.allclose(NormalizeImage(IMAGENET_MEAN, IMAGENET_STD)(HAND), out, atol=1e-6)


def test_denormalize_inverts_normalize_on_a_hand_made_image():
    normalized = normalize_images(HAND)
    assert torch.equal(denormalize_images(normalized, as_uint8=True), HAND)
    back = denormalize_images(normalized)
    assert back.dtype == torch.float32 and torch.allclose(back, HAND.float() / 255.0, atol=1e-6)
    # a batch [B, 3, H, W] and values out of range: clamped to [0, 1] (0 and 255 as uint8)
    batch = torch.stack([normalized, torch.full_like(normalized, 10.0), torch.full_like(normalized, -10.0)])
    out = denormalize_images(batch, as_uint8=True)
    assert torch.equal(out[0], HAND) and (out[1] == 255).all() and (out[2] == 0).all()


def test_every_data_module_uses_the_one_denormalize():
    for cls in (ReIDDataModule, FewShotDataModule, RetrievalDataModule):
        assert cls.denormalize is ImageDataModule.denormalize
    dm = FewShotDataModule(dataset="synthetic", synthetic_num_classes=15, synthetic_splits=(5, 5, 5))
    assert torch.equal(dm.denormalize(dm.normalize()(HAND), as_uint8=True), HAND)
