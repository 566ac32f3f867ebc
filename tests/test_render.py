"""Rendering of the maps: postprocess (ReLU, upsampling, per-map min-max), colour maps, overlays, grids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cama.explain import colormap, grid, overlay, postprocess
from tests.test_explain import B, H, W, randn


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# --------------------------------------------------------------------------------------------------
# postprocess / overlay / grid
# --------------------------------------------------------------------------------------------------
def test_postprocess_matches_naive(gen: torch.Generator) -> None:
    maps = randn(gen, B, H, W)
    out = postprocess(maps, (16, 20))
    assert out.shape == (B, 16, 20)
    upsampled = F.interpolate(
        maps.clamp_min(0)[:, None], size=(16, 20), mode="bilinear", align_corners=False
    )[:, 0]
    for i in range(B):
        values = upsampled[i].flatten().tolist()
        low, high = min(values), max(values)
        for y in range(16):
            for x in range(20):
                assert abs(float(out[i, y, x]) - (float(upsampled[i, y, x]) - low) / (high - low)) < 1e-9
    assert float(out.amin()) == 0.0 and float(out.amax()) == 1.0


def test_postprocess_constant_and_nan_maps_give_zeros(gen: torch.Generator) -> None:
    maps = torch.stack(
        [
            torch.full((H, W), 3.0),
            -torch.rand(H, W, generator=gen),
            torch.full((H, W), float("nan")),
            torch.rand(H, W, generator=gen),
        ]
    )
    maps[3, 0, 0] = float("nan")
    out = postprocess(maps, 12)
    assert out.shape == (4, 12, 12)
    assert not torch.isnan(out).any()
    assert torch.equal(out[:3], torch.zeros(3, 12, 12))
    assert float(out[3].max()) == 1.0 and float(out[3].min()) >= 0.0


def test_postprocess_keeps_leading_dims_and_half(gen: torch.Generator) -> None:
    maps = randn(gen, 2, 3, H, W).half()
    out = postprocess(maps, images_shape := (2, 3, 8, 10))
    assert out.shape == (2, 3, 8, 10) and out.dtype == torch.float32
    assert images_shape[-2:] == tuple(out.shape[-2:])
    torch.testing.assert_close(out, postprocess(maps.float(), (8, 10)))


@pytest.mark.parametrize("name", ["jet", "turbo"])
def test_colormap_is_a_blue_to_red_table(name: str) -> None:
    table = colormap(name)
    assert table.shape == (256, 3)
    # the ends: MATLAB's jet runs from (0, 0, 0.5) to (0.5, 0, 0); Google's turbo polynomial starts
    # at its constant terms (0.13572138, 0.09140261, 0.1066733)
    first = {"jet": [0.0, 0.0, 0.5], "turbo": [0.13572138, 0.09140261, 0.1066733]}[name]
    torch.testing.assert_close(table[0], torch.tensor(first), atol=1e-4, rtol=0)
    if name == "jet":
        torch.testing.assert_close(table[-1], torch.tensor([0.5, 0.0, 0.0]), atol=1e-4, rtol=0)
    assert table[16, 2] > table[16, 0] and table[16, 2] > table[16, 1]  # low end is blue
    assert table[128, 1] > table[128, 0] and table[128, 1] > table[128, 2]  # middle is green
    assert table[-1, 0] > table[-1, 1] and table[-1, 0] > table[-1, 2]  # high end is red


def test_overlay_blends_image_and_heat(gen: torch.Generator) -> None:
    images = torch.rand(2, 3, 8, 6, generator=gen)
    maps = torch.zeros(2, 2, 3)
    maps[:, 0, 0] = 1.0
    out = overlay(images, maps, alpha=0.4, colormap_name="jet")
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 8, 6)
    heat_values = postprocess(maps, (8, 6))
    table = colormap("jet")
    for i in range(2):
        for y in (0, 7):
            for x in (0, 5):
                colour = table[round(float(heat_values[i, y, x]) * 255)]
                expected = ((0.6 * images[i, :, y, x] + 0.4 * colour) * 255).round()
                assert torch.allclose(out[i, :, y, x].float(), expected, atol=1.0)
    # uint8 images, alpha 0 gives the image back; normalised floats are restored with mean/std
    uint8_images = (images * 255).round().to(torch.uint8)
    assert torch.equal(overlay(uint8_images, maps, alpha=0.0), uint8_images)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]
    normalised = (images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    restored = overlay(normalised, maps, alpha=0.0, mean=mean, std=std)
    assert (restored.int() - uint8_images.int()).abs().max() <= 1


def test_overlay_boxes_and_grid(gen: torch.Generator) -> None:
    images = torch.rand(3, 3, 16, 8, generator=gen)
    boxes = torch.tensor([[1, 1, 6, 12]] * 3)
    out = overlay(images, torch.rand(3, 4, 2, generator=gen), boxes=boxes, box_color=(255, 0, 255))
    assert torch.equal(out[0, :, 1, 3], torch.tensor([255, 0, 255], dtype=torch.uint8))
    picture = grid(out, nrow=2, padding=2)
    assert picture.dtype == torch.uint8 and picture.shape == (3, 2 * 16 + 3 * 2, 2 * 8 + 3 * 2)
    assert torch.equal(picture[:, 2:18, 2:10], out[0])
    assert torch.equal(grid([out[:2], out[2]], nrow=3), grid(out, nrow=3))
