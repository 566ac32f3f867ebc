"""The probes' features from the maps a validation step returned, the others forwarded; the masked
images of AD / IC (fam Eq. 21-22) embedded in one forward."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from cama.metrics.faithfulness import mask_images
from cama.viz import Features, ModelExplainer

__all__ = ["complete_features", "masked_embeddings", "stack_captured"]


def stack_captured(
    captured: Mapping[int, Mapping[str, Any]], indices: Sequence[int], device: torch.device | str
) -> tuple[dict[str, Tensor], list[Tensor]]:
    """Captured items ``indices`` stacked: the batch (every key but ``maps``, ``[B, ...]``) and the
    maps per branch (``[B, K_i, h, w]``), on ``device``.

    ``captured`` maps a dataset index to an item: tensors of one sample (``image``, ``box``, ...)
    and ``maps``, its feature maps per branch (``[K_i, h, w]``).
    """
    items = [captured[i] for i in indices]
    batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0] if k != "maps"}
    maps = [torch.stack([it["maps"][b] for it in items]).to(device) for b in range(len(items[0]["maps"]))]
    return batch, maps


def complete_features(
    explainer: ModelExplainer,
    indices: Sequence[int],
    captured: Mapping[int, Mapping[str, Any]],
    load: Callable[[list[int]], dict[str, Any]],
    device: torch.device | str,
) -> tuple[Features, dict[str, Tensor], list[int]]:
    """Features and batch of the dataset items ``indices``: the captured ones
    (:func:`stack_captured`) from their maps, no forward; the others ``load``-ed (a collated batch
    on ``device``) and forwarded.

    Returns the features, the batch (the tensors both parts hold: ``image``, ``box``, ``mask``, ...)
    and the order of ``indices`` their rows follow: the captured ones first, then the others, each in
    the order of ``indices``.
    """
    have = [i for i in indices if i in captured]
    missing = [i for i in indices if i not in captured]
    parts: list[tuple[Features, dict[str, Tensor]]] = []
    if have:
        batch, maps = stack_captured(captured, have, device)
        parts.append((explainer.features_from_maps(batch["image"], maps), batch))
    if missing:
        batch = load(missing)
        parts.append((explainer.features(batch["image"]), batch))
    if len(parts) == 1:
        return parts[0][0], parts[0][1], have + missing
    (first, batch_a), (second, batch_b) = parts
    features = Features(
        images=torch.cat([first.images, second.images]),
        maps=[torch.cat([a, b]) for a, b in zip(first.maps, second.maps)],
        embedding=torch.cat([first.embedding, second.embedding]),
        slices=first.slices,
    )
    batch = {k: torch.cat([batch_a[k], batch_b[k]]) for k in batch_a if k in batch_b and isinstance(batch_b[k], Tensor)}
    return features, batch, have + missing


def masked_embeddings(
    embed: Callable[[Tensor], Tensor],
    images: Sequence[Tensor],
    maps: Sequence[Tensor],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> list[Tensor]:
    """Each block of images masked by its maps (:func:`cama.metrics.mask_images`) and all the blocks
    embedded in one call of ``embed`` -- one forward for every method's masked queries (fam Eq. 21-22's
    ``O``).

    Args:
        embed: ``[M, 3, H, W] -> [M, ...]``, e.g. ``lambda x: explainer.features(x).embedding``.
        images: blocks ``[B_j, 3, H, W]``, normalised with ``mean`` / ``std`` when they are given.
        maps: one ``[B_j, h, w]`` block of maps in ``[0, 1]`` per block of images.
        mean, std: the images' normalisation (:func:`~cama.metrics.mask_images`).

    Returns:
        ``embed``'s output split back into the blocks: ``[B_j, ...]`` each (views of one tensor).

    >>> out = masked_embeddings(lambda x: x.mean(dim=(1, 2, 3))[:, None], [torch.ones(2, 3, 4, 4)],
    ...                         [torch.full((2, 4, 4), 0.5)])
    >>> [tuple(o.shape) for o in out], out[0][:, 0].tolist()
    ([(2, 1)], [0.5, 0.5])
    """
    if len(images) != len(maps):
        raise ValueError(f"need one block of maps per block of images, got {len(maps)} and {len(images)}")
    if not images:
        return []
    masked = [mask_images(block, block_maps, mean, std) for block, block_maps in zip(images, maps)]
    return list(embed(torch.cat(masked)).split([len(m) for m in masked]))
