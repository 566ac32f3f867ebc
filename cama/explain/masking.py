"""Images masked by maps: fam Eq. 21-22's ``O`` (Average Drop / Increase in Confidence) and Score-CAM's
masked inputs (Wang et al. 2020, Eq. 5-6), one convention for both.

Our reading of fam Sec. V ("the query image masked by the saliency map"): the FAM paper feeds images
scaled to ``[0, 1]`` and then normalised with the ImageNet mean and std, so the *image* is the
``[0, 1]`` picture. With the images' ``mean``/``std`` given, the map (``[0, 1]``, bilinearly
upsampled to the image size) multiplies that picture -- unimportant regions fade to black -- and
the result is normalised again before it enters the network. Without them the map multiplies the
network input as it is, which for normalised images fades to the data set's mean colour (what
Score-CAM's reference code does with its normalised input).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mask_images"]


def mask_images(
    images: Tensor,
    maps: Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Tensor:
    """Images multiplied by their explanation maps, ready for the network (fam Eq. 21-22's ``O``).

    Args:
        images: ``[B, C, H, W]`` network inputs, normalised with ``(x - mean) / std`` when
            ``mean`` and ``std`` are given.
        maps: ``[B, h, w]`` maps in ``[0, 1]`` (e.g. from :func:`cama.explain.postprocess`), resized
            bilinearly to ``(H, W)`` when needed and clamped to ``[0, 1]``.
        mean, std: the per-channel normalisation of ``images``: the map then multiplies the
            de-normalised ``[0, 1]`` image, which is normalised again.

    Returns:
        ``[B, C, H, W]`` masked inputs, same dtype as ``images``.
    """
    if images.ndim != 4 or maps.ndim != 3 or maps.shape[0] != images.shape[0]:
        raise ValueError(
            f"need images [B, C, H, W] and maps [B, h, w], got {tuple(images.shape)}, {tuple(maps.shape)}"
        )
    weights = maps.to(device=images.device, dtype=torch.float32)
    if tuple(weights.shape[-2:]) != tuple(images.shape[-2:]):
        weights = F.interpolate(
            weights[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False
        )[:, 0]
    weights = torch.nan_to_num(weights, nan=0.0).clamp(0.0, 1.0)[:, None]
    work = images.float()
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    if mean is None:
        return (work * weights).to(images.dtype)
    mean_t = torch.as_tensor(mean, dtype=work.dtype, device=work.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=work.dtype, device=work.device).view(1, -1, 1, 1)
    picture = work * std_t + mean_t
    return ((picture * weights - mean_t) / std_t).to(images.dtype)
