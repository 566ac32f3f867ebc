"""What every data module does to an image: decode it, augment it under a per-item seed, normalise it.

* :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`: the normalisation of every network input;
* :func:`load_image`: a file to uint8 RGB ``[3, H, W]``, :class:`UnreadableImageError` naming the file;
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


def load_image(path: str) -> torch.Tensor:
    """Decode an image file to uint8 RGB [3, H, W]; :class:`UnreadableImageError` names the file."""
    try:
        return decode_image(read_file(path), mode=ImageReadMode.RGB)
    except Exception as e:  # noqa: BLE001 - torchvision raises RuntimeError / ValueError / OSError
        try:  # formats torchvision cannot decode (e.g. some BMP variants)
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB")).copy()
            return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        except Exception:  # noqa: BLE001
            raise UnreadableImageError(f"cannot read image {path}: {e}") from e


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
