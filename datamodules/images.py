"""What every data module does to an image: decode it, augment it under a per-item seed, normalise it.

* :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`: the normalisation of every network input;
* :func:`load_image`: a file of any bit depth and colour mode to uint8 RGB ``[3, H, W]`` (alpha
  composited over the mean colour), :class:`UnreadableImageError` naming the file;
* :func:`normalize_images` / :class:`NormalizeImage` and their inverse :func:`denormalize_images`;
* :class:`SeededTransformDataset`: a base dataset's items through a (random) transform that runs
  under a torch RNG seeded per item, relabelled, with the ``box`` / ``mask`` ground truth
  transformed alongside;
* :func:`resize_pad_crop`, :func:`flip`, :func:`colour_jitter`: the steps of the training augmentation.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2

from .errors import UnreadableImageError
from .samplers import run_seeded, split_item
from .seeding import single_thread

__all__ = [
    "normalized",
    "resized_and_normalized",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "load_image",
    "normalize_images",
    "denormalize_images",
    "NormalizeImage",
    "SeededTransformDataset",
    "resized",
    "resize_pad_crop",
    "flip",
    "colour_jitter",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


_JPEG = b"\xff\xd8"
_PNG = b"\x89PNG\r\n\x1a\n"
_PNG_ALPHA_TYPES = (4, 6)  # gray + alpha, RGBA (IHDR colour types)
_PNG_PALETTE = 3
#: PIL's modes of 16-bit gray files (``I``: PIL opens some 16-bit files as 32-bit integers)
_PIL_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_PIL_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def load_image(path: str) -> torch.Tensor:
    """Decode an image file to uint8 RGB ``[3, H, W]``, whatever its bit depth and colour mode;
    :class:`UnreadableImageError` names the file.

    What each kind of file becomes:

    * JPEG (RGB, gray, CMYK / YCCK): RGB, decoded by torchvision in one pass (the training path);
    * gray: its value in the three channels; palette: its colours;
    * 16 bits per channel (PNG gray or RGB, with or without alpha): the top 8 bits (``v >> 8``, as
      ``torchvision.transforms.v2.functional.to_dtype(scale=True)``: an 8-bit value ``k`` stored as
      ``257 k`` comes back as ``k``);
    * alpha (RGBA, gray + alpha, a palette PNG's transparent entries, WebP alpha): composited over the
      ImageNet mean colour :data:`IMAGENET_MEAN` (the colour that normalises to a zero network input,
      so transparent pixels carry no information), ``round(a * rgb + (1 - a) * 255 * mean)`` with
      ``a = alpha / alpha_max``; an alpha channel that is opaque everywhere costs no more;
    * a gray or RGB PNG's single transparent colour (a ``tRNS`` colour key) is ignored, as torchvision
      ignores it;
    * formats torchvision cannot decode (some BMP, TIFF, ...): PIL, by the same rules: its 16-bit gray
      modes (``I;16``, ``I;16B``, ``I``; values above 65535 saturate) keep their top 8 bits, its alpha
      modes and transparency are composited over the mean colour, every other mode is converted to
      RGB by PIL.
    """
    try:
        return _decoded(read_file(path))
    except Exception as e:  # noqa: BLE001 - torchvision raises RuntimeError / ValueError / OSError
        try:  # formats torchvision cannot decode (e.g. some BMP variants)
            return _pil_decoded(path)
        except Exception:  # noqa: BLE001
            raise UnreadableImageError(f"cannot read image {path}: {e}") from e


def _decoded(data: torch.Tensor) -> torch.Tensor:
    """torchvision's decoding of the file bytes ``data``: a JPEG straight to RGB, a file with an alpha
    channel (or a palette with transparent entries) with it, composited; 16-bit values to 8 bits."""
    head = data[:2].numpy().tobytes()
    if head == _JPEG or not _has_alpha(memoryview(data.numpy())):
        return _to_uint8(decode_image(data, mode=ImageReadMode.RGB))
    image = decode_image(data, mode=ImageReadMode.RGB_ALPHA)
    return _over_mean_colour(image[:3], image[3])


def _has_alpha(data: memoryview) -> bool:
    """Whether the file bytes ``data`` decode with an alpha channel: a PNG of colour type gray + alpha
    or RGBA, a palette PNG with a ``tRNS`` chunk (torchvision's RGBA decoding of a palette without one
    is wrong), any WebP. Other formats (GIF, ...) decode as RGB."""
    if data[:8] == _PNG and len(data) > 25:
        colour_type = data[25]
        palette_alpha = colour_type == _PNG_PALETTE and _png_has_chunk(data, b"tRNS")
        return colour_type in _PNG_ALPHA_TYPES or palette_alpha
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def _png_has_chunk(data: memoryview, kind: bytes) -> bool:
    """Whether the PNG bytes ``data`` hold a chunk ``kind`` before their image data (``IDAT``)."""
    pos = 8
    while pos + 8 <= len(data):
        found = data[pos + 4 : pos + 8]
        if found == kind:
            return True
        if found == b"IDAT":
            return False
        pos += 12 + int.from_bytes(data[pos : pos + 4], "big")
    return False


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    """uint8 as is; uint16 (16-bit files) and int32 (PIL's ``I``, clamped to 16 bits) by their top 8 bits."""
    if image.dtype == torch.uint8:
        return image
    if image.dtype != torch.uint16:
        image = image.clamp(0, 65535).to(torch.uint16)
    return v2.functional.to_dtype(image, torch.uint8, scale=True)


def _over_mean_colour(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """uint8 ``[3, H, W]``: the integer ``rgb`` composited with its ``alpha`` ``[H, W]`` (same dtype)
    over the ImageNet mean colour; ``rgb`` itself when every pixel is opaque."""
    rgb = _to_uint8(rgb)
    full = torch.iinfo(alpha.dtype).max
    if bool((alpha == full).all()):
        return rgb
    a = alpha.float().div_(full)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255.0
    return (rgb.float() * a + mean * (1.0 - a)).round_().to(torch.uint8)


def _pil_decoded(path: str) -> torch.Tensor:
    """PIL's decoding of ``path``, by the rules of :func:`load_image`."""
    with Image.open(path) as im:
        im.load()
        if im.mode in _PIL_WIDE_MODES:
            gray = _to_uint8(torch.from_numpy(np.array(im, dtype=np.int32)))
            return gray.expand(3, *gray.shape).contiguous()
        if im.mode in _PIL_ALPHA_MODES or "transparency" in im.info:
            rgba = torch.from_numpy(np.asarray(im.convert("RGBA")).copy()).permute(2, 0, 1)
            return _over_mean_colour(rgba[:3], rgba[3]).contiguous()
        arr = np.asarray(im.convert("RGB")).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _channels(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(3, 1, 1)


def normalize_images(
    images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """``(x - mean) / std`` on float ``[..., 3, H, W]`` images in [0, 1] (uint8 images are scaled first)."""
    if not images.is_floating_point():
        images = images.float() / 255.0
    return (images - _channels(mean, images)) / _channels(std, images)


def denormalize_images(
    images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
    as_uint8: bool = False,
) -> torch.Tensor:
    """Undo ``(x - mean) / std`` on ``[..., 3, H, W]`` images: float in [0, 1], or uint8 with ``as_uint8``."""
    out = (images * _channels(std, images) + _channels(mean, images)).clamp(0.0, 1.0)
    return (out * 255.0 + 0.5).to(torch.uint8) if as_uint8 else out


class NormalizeImage:
    """uint8 image -> float in [0, 1] -> ``(x - mean) / std`` (the cheap, deterministic last step)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.as_subclass(torch.Tensor).float().div_(255.0).sub_(self.mean).div_(self.std)


class SeededTransformDataset(Dataset):
    """Applies a (random) transform to the items of a base dataset and relabels them.

    ``__getitem__`` accepts an index or ``(index, sample_seed)``; with a seed the ``transform`` runs
    under a forked torch RNG seeded with it (:func:`~datamodules.samplers.run_seeded`), so the output
    depends on the seed only. ``transform`` gets the uint8 image (with ``box`` / ``mask`` when
    ``targets`` and the base item has them) and ``post``, if given, turns its image output into the
    network input (e.g. :class:`NormalizeImage`). With ``cache`` (a deterministic ``transform`` only)
    the output of ``transform`` is kept in memory, per process, and only ``post`` runs again. With
    ``keep_seed`` the item carries its seed (``"seed"``, -1 without one) for a random step that runs on
    the whole batch (:mod:`datamodules.batch_augment`).

    Items: ``{label_key: long, *extra_keys: long, "index": long, "image": float [3,H,W]}`` plus
    ``"box": float [4]`` and ``"mask": bool [P,H,W]`` when ``targets``, and the ``vector_keys`` the
    base item has (per-item ground truth that does not move with the image, copied unchanged).
    The base dataset lists its labels as ``<label_key>s`` (``labels``, ``pids``).
    """

    label_key = "label"
    extra_keys: tuple[str, ...] = ()
    vector_keys: tuple[str, ...] = ()

    def __init__(
        self,
        base: Dataset,
        transform: Callable,
        post: Callable | None = None,
        label_map: dict[int, int] | None = None,
        targets: bool = True,
        cache: bool = False,
        keep_seed: bool = False,
    ) -> None:
        self.base = base
        self.transform = transform
        self.post = post
        self.label_map = label_map
        self.targets = targets
        self.cache = cache
        self.keep_seed = keep_seed
        self._cache: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    @property
    def labels(self) -> list[int]:
        labels = list(getattr(self.base, self.label_key + "s"))
        return [self.label_map[x] for x in labels] if self.label_map is not None else labels

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        with single_thread():
            index, seed = split_item(item)
            out = self._cache.get(index) if self.cache else None
            if out is None:
                out = self._transformed(index, seed)
                if self.cache:
                    self._cache[index] = out
            out = dict(out)
            if self.post is not None:
                out["image"] = self.post(out["image"])
            if self.keep_seed:  # for a batched random step after the collation (-1: no seed)
                out["seed"] = torch.tensor(-1 if seed is None else seed, dtype=torch.long)
            return out

    def _transformed(self, index: int, seed: int | None) -> dict[str, Any]:
        sample = self.base[index]
        label = int(sample[self.label_key])
        out: dict[str, Any] = {
            self.label_key: torch.tensor(self.label_map[label] if self.label_map is not None else label,
                                         dtype=torch.long),
            **{key: torch.tensor(sample[key], dtype=torch.long) for key in self.extra_keys},
            "index": torch.tensor(index, dtype=torch.long),
        }
        keys = [k for k in ("box", "mask") if self.targets and k in sample]
        results = run_seeded(self.transform, sample["image"], *(sample[k] for k in keys), seed=seed)
        if not keys:
            results = (results,)
        image, *extras = results
        for key, value in zip(keys, extras):
            value = value.as_subclass(torch.Tensor)
            out[key] = value.reshape(4).float() if key == "box" else value.bool()
        out.update({key: torch.as_tensor(sample[key]) for key in self.vector_keys if self.targets and key in sample})
        out["image"] = image.as_subclass(torch.Tensor)
        return out


def resized(image_size: Sequence[int]) -> list[Any]:
    """Resize to ``image_size`` (antialiased), as transform steps: the deterministic first step of
    every input, and all of the evaluation transform before the normalisation."""
    return [v2.Resize(tuple(image_size), antialias=True)]


def resize_pad_crop(image_size: tuple[int, int], padding: int) -> list[Any]:
    """Resize to ``image_size``; with ``padding`` > 0, zero-pad and crop back at random."""
    steps = resized(image_size)
    if padding > 0:
        steps += [v2.Pad(padding), v2.RandomCrop(image_size)]
    return steps


def normalized(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> list[Any]:
    """uint8 image -> float in [0, 1] -> ``(x - mean) / std``, as transform steps."""
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def resized_and_normalized(
    image_size: Sequence[int], mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    """The evaluation input of an image file as the data modules' evaluation sets make it: resized to
    ``image_size``, then :class:`NormalizeImage`."""
    return v2.Compose([*resized(image_size), NormalizeImage(mean, std)])


def flip(flip_prob: float) -> list[Any]:
    """A random horizontal flip (none for ``flip_prob`` 0)."""
    return [v2.RandomHorizontalFlip(flip_prob)] if flip_prob > 0 else []


def colour_jitter(strength: float) -> list[Any]:
    """Brightness / contrast / saturation jitter of ``strength`` (none for 0)."""
    return [v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength)] if strength > 0 else []
