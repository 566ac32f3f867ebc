"""The shared image module: normalisation and its inverse, on hand-made images; one denormalize for all;
files of every bit depth and colour mode decoded to uint8 RGB."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import FewShotDataModule, ReIDDataModule, RetrievalDataModule
from datamodules.base import ImageDataModule
from datamodules.images import (
    IMAGENET_MEAN, IMAGENET_STD, NormalizeImage, denormalize_images, load_image, normalize_images,
)

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
    dm = FewShotDataModule(dataset="synthetic", synthetic=dict(num_classes=15, few_shot_splits=(5, 5, 5)))
    assert torch.equal(dm.denormalize(dm.normalize()(HAND), as_uint8=True), HAND)


# -- decoding: every bit depth and colour mode to uint8 RGB ----------------------------------------


def write_png16(path: Path, values: np.ndarray) -> Path:
    """A 16-bit PNG of ``values`` (uint16 ``[H, W, C]``; C = 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA),
    written chunk by chunk (PIL cannot write 16-bit colour PNGs)."""
    height, width, channels = values.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def _random(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _as_hwc(image: torch.Tensor) -> np.ndarray:
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    return image.permute(1, 2, 0).numpy().astype(np.float64)


def _composited(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``a * rgb + (1 - a) * 255 * mean`` with ``a`` in [0, 1]: the ImageNet mean colour behind."""
    a = alpha.astype(np.float64)[..., None]
    return a * rgb.astype(np.float64) + (1.0 - a) * 255.0 * np.array(IMAGENET_MEAN)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])  # gray, gray + opaque alpha, RGB, RGB + opaque alpha
def test_a_16_bit_png_decodes_like_its_8_bit_copy(tmp_path, channels):
    pixels = _random((6, 5, 3 if channels > 2 else 1))
    eight = tmp_path / "eight.png"
    Image.fromarray(pixels if channels > 2 else pixels[..., 0]).save(eight)
    wide = pixels.astype(np.uint16) * 257  # the 8-bit value k as the 16-bit value 257 k
    if channels in (2, 4):
        wide = np.concatenate([wide, np.full((6, 5, 1), 65535, np.uint16)], axis=2)
    image = load_image(str(write_png16(tmp_path / "wide.png", wide)))
    assert image.dtype == torch.uint8 and torch.equal(image, load_image(str(eight)))
    assert np.array_equal(_as_hwc(image), np.broadcast_to(pixels, (6, 5, 3)))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_gray_files_torchvision_cannot_decode_keep_their_top_8_bits(tmp_path, mode):
    pixels = _random((6, 5))
    dtype = {"I;16": "<u2", "I;16B": ">u2", "I": np.int32}[mode]
    low = _random((6, 5), 1)  # 256 k + any low byte: still k
    wide = Image.fromarray((pixels.astype(np.int64) * 256 + low).astype(dtype))
    assert wide.mode == mode
    wide.save(tmp_path / "wide.tif")
    assert Image.open(tmp_path / "wide.tif").mode == mode
    image = load_image(str(tmp_path / "wide.tif"))
    assert np.array_equal(_as_hwc(image), np.repeat(pixels[..., None], 3, axis=2))


def _alpha_files(folder: Path) -> dict[str, tuple[Path, np.ndarray, np.ndarray]]:
    """Files with transparency, with their colour [H, W, 3] and alpha in [0, 1] [H, W]."""
    rgb, alpha = _random((6, 5, 3), 1), _random((6, 5), 2)
    alpha[0, :] = 0  # fully transparent and fully opaque rows
    alpha[1, :] = 255
    files = {}
    Image.fromarray(np.dstack([rgb, alpha])).save(folder / "rgba.png")
    files["RGBA PNG"] = (folder / "rgba.png", rgb, alpha / 255.0)
    Image.fromarray(np.dstack([rgb, alpha])).save(folder / "rgba.tif")  # PIL's decoding
    files["RGBA TIFF"] = (folder / "rgba.tif", rgb, alpha / 255.0)
    Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA").save(folder / "la.png")
    files["gray + alpha PNG"] = (folder / "la.png", np.repeat(rgb[..., :1], 3, axis=2), alpha / 255.0)
    wide_alpha = alpha.astype(np.uint16) * 257 - ((alpha > 0) & (alpha < 255))  # not all multiples of 257
    write_png16(folder / "rgba16.png", np.dstack([rgb.astype(np.uint16) * 257, wide_alpha]))
    files["16-bit RGBA PNG"] = (folder / "rgba16.png", rgb, wide_alpha / 65535.0)
    palette = _random((4, 3), 3)
    indices = _random((6, 5), 4) % 4
    indexed = Image.fromarray(indices.astype(np.uint8), "P")
    indexed.putpalette(palette.flatten().tolist())
    indexed.save(folder / "palette.png", transparency=1)  # palette entry 1 transparent
    files["palette PNG with transparency"] = (folder / "palette.png", palette[indices], (indices != 1) * 1.0)
    return files


def test_alpha_is_composited_over_the_imagenet_mean_colour(tmp_path):
    for name, (path, rgb, alpha) in _alpha_files(tmp_path).items():
        image = _as_hwc(load_image(str(path)))
        expected = _composited(rgb, alpha)
        assert np.abs(image - expected).max() <= 0.5 + 1e-3, name  # the formula, rounded
        opaque, transparent = alpha == 1.0, alpha == 0.0
        assert opaque.any() and transparent.any(), name
        assert np.array_equal(image[opaque], rgb[opaque]), name  # the colour itself
        mean_colour = np.round(255.0 * np.array(IMAGENET_MEAN))
        assert (image[transparent] == mean_colour).all(), name  # nothing of the colour behind


def test_palette_and_cmyk_files_decode_as_pil_converts_them(tmp_path):
    palette = Image.fromarray(_random((6, 5, 3))).convert("P", palette=Image.Palette.ADAPTIVE, colors=6)
    palette.save(tmp_path / "palette.png")
    decoded = _as_hwc(load_image(str(tmp_path / "palette.png")))
    assert np.array_equal(decoded, np.asarray(palette.convert("RGB")))
    Image.fromarray(_random((16, 16, 3))).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as cmyk:
        assert cmyk.mode == "CMYK"
        expected = np.asarray(cmyk.convert("RGB")).astype(np.float64)
    assert np.abs(_as_hwc(load_image(str(tmp_path / "cmyk.jpg"))) - expected).max() <= 2
