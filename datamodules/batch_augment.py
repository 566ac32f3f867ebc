"""The re-ID training augmentation of a whole batch at once: zero-pad, random crop back, flip, normalise.

:class:`BatchPadCropFlip` gives the images the per-image torchvision v2 steps give
(:func:`~datamodules.images.resize_pad_crop` + :func:`~datamodules.images.flip`, after the resize,
then the module's normalisation: the v2 steps :func:`~datamodules.images.normalized` for re-ID,
:class:`~datamodules.images.NormalizeImage` for the class-image modules) bit for bit: for each image
it draws, in the same order and from a generator seeded with the same per-item seed
(:class:`~datamodules.samplers.PKSampler`), what those steps draw (``RandomCrop``'s top, then its
left; ``RandomHorizontalFlip``'s coin), and does the image work as a few tensor ops on the stacked
uint8 batch instead of six transforms and their dispatch per image (on the synthetic main job, most
of the time the training loop waited for data). A run gives the same results either way;
``tests/test_batch_augment.py`` holds the two against each other. Random erasing is not here: a data
module that erases or jitters the colours keeps the per-image steps
(:meth:`~datamodules.base.ImageDataModule.batch_augmentation` says which).

:func:`collate_augmented` is the training loader's ``collate_fn``: the items carry their uint8 image
and their ``seed`` (``-1``: none, the draws come from torch's global generator, as the per-image
steps' do without a seed); it collates them (PyTorch's ``default_collate`` or, e.g., the few-shot
episodes' collate), then augments: the batch is the usual one, without the seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import default_collate

__all__ = ["BatchPadCropFlip", "collate_augmented"]


class BatchPadCropFlip:
    """Zero-pad by ``padding``, crop back at a random offset, flip with ``flip_prob``, normalise.

    Args:
        padding: pixels of zeros on each side before the crop (0: no crop, no draw).
        flip_prob: probability of a horizontal flip (0: no flip, no draw).
        normalize: uint8 ``[B, 3, H, W]`` -> the float network input (elementwise, so a batch gets
            what its images get one by one).
    """

    def __init__(self, padding: int, flip_prob: float, normalize: Callable[[Tensor], Tensor]) -> None:
        if padding < 0 or not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"padding must be >= 0 and flip_prob in [0, 1], got {padding} and {flip_prob}")
        self.padding = int(padding)
        self.flip_prob = float(flip_prob)
        self.normalize = normalize

    def draw(self, seeds: Sequence[int]) -> Tensor:
        """``[B, 3]`` long: each image's crop top, crop left and flip (0 / 1), drawn as the per-image
        steps draw them under its seed (one generator per image: the draws of an image depend on its
        seed alone)."""
        span = 2 * self.padding + 1
        out = torch.zeros(len(seeds), 3, dtype=torch.long)
        for row, seed in enumerate(seeds):
            generator = torch.Generator().manual_seed(int(seed)) if seed >= 0 else torch.default_generator
            if self.padding > 0:  # RandomCrop: top, then left
                out[row, 0] = torch.randint(0, span, size=(), generator=generator)
                out[row, 1] = torch.randint(0, span, size=(), generator=generator)
            if self.flip_prob > 0:  # RandomHorizontalFlip: flips unless rand >= p
                out[row, 2] = int(bool(torch.rand(1, generator=generator) < self.flip_prob))
        return out

    def __call__(self, images: Tensor, seeds: Sequence[int]) -> Tensor:
        """uint8 ``[B, 3, H, W]`` -> the augmented, normalised float32 batch."""
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        batch, _, height, width = images.shape
        params = self.draw(seeds).to(images.device)
        if self.padding > 0:
            padded = torch.nn.functional.pad(images, [self.padding] * 4)
            rows = params[:, 0, None] + torch.arange(height, device=images.device)  # [B, H]
            cols = params[:, 1, None] + torch.arange(width, device=images.device)  # [B, W]
            b = torch.arange(batch, device=images.device)[:, None, None]
            images = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if self.flip_prob > 0:
            images = torch.where(params[:, 2, None, None, None].bool(), images.flip(-1), images)
        return self.normalize(images.contiguous())


def collate_augmented(
    items: list[dict[str, Any]],
    augment: BatchPadCropFlip,
    collate: Callable[[list[Any]], Any] = default_collate,
) -> dict[str, Any]:
    """``collate`` of training items (uint8 images with their ``seed``), then ``augment`` of the images."""
    batch = collate(items)
    batch["image"] = augment(batch["image"], batch.pop("seed").tolist())
    return batch
