"""What the two synthetic generators share: their config overrides, noise bank, boxes and items."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from ..seeding import mix_seed

__all__ = ["SeededOptions", "with_overrides", "noise_bank", "mask_box", "target_item", "rounded_box"]

C = TypeVar("C")


class SeededOptions:
    """Mixed into a data module's ``synthetic`` option, a dataclass that derives from a generator's
    config class (named by ``generator_config``) and adds ``seed``: lists (from YAML or a
    checkpoint's hyper-parameters) become tuples, and :meth:`config` gives the generator's config."""

    generator_config: ClassVar[type]

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        super().__post_init__()  # type: ignore[misc]

    def config(self) -> Any:
        """The generator's config (these options less the seed)."""
        return self.generator_config(**{f.name: getattr(self, f.name) for f in fields(self.generator_config)})


def with_overrides(config_type: type[C], config: C | None, overrides: dict[str, Any]) -> C:
    """``config`` (default: ``config_type()``) with the fields of ``overrides`` replaced; unknown names
    raise ``TypeError``."""
    config = config or config_type()
    if overrides:
        names = {f.name for f in fields(config_type)}  # type: ignore[arg-type]
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown {config_type.__name__} fields: {sorted(unknown)}")
        config = config_type(**{**{n: getattr(config, n) for n in names}, **overrides})
    return config


def noise_bank(seed: int, height: int, width: int) -> np.ndarray:
    """Gaussian noise [3, 2H, 2W] of a data seed; an image takes an ``H x W`` window of it."""
    return np.random.default_rng(mix_seed(seed, 11)).standard_normal((3, 2 * height, 2 * width), dtype=np.float32)


def mask_box(mask: np.ndarray) -> torch.Tensor:
    """Tight box ``x1, y1, x2, y2`` (pixel edges, x2 / y2 exclusive) of a bool mask [H, W]; zeros if empty."""
    box = torch.zeros(4)
    rows = np.flatnonzero(mask.any(1))
    if rows.size:
        cols = np.flatnonzero(mask.any(0))
        box = torch.tensor([float(cols[0]), float(rows[0]), float(cols[-1]) + 1.0, float(rows[-1]) + 1.0])
    return box


def target_item(image: torch.Tensor, box: torch.Tensor, masks: torch.Tensor, **labels: Any) -> dict[str, Any]:
    """A dataset item with its ground truth: ``image`` (``tv_tensors.Image``), the ``labels``, ``box``
    (``BoundingBoxes`` [1, 4] XYXY) and ``mask`` (``tv_tensors.Mask`` uint8)."""
    from torchvision import tv_tensors

    H, W = image.shape[-2:]
    return {
        "image": tv_tensors.Image(image),
        **labels,
        "box": tv_tensors.BoundingBoxes(box.view(1, 4), format="XYXY", canvas_size=(H, W)),
        # a bool mask is reinterpreted, not converted (a conversion costs milliseconds per image)
        "mask": tv_tensors.Mask(masks.view(torch.uint8) if masks.dtype == torch.bool else masks.to(torch.uint8)),
    }


def rounded_box(box: Any) -> list[float]:
    """A box as written to ``synthetic_annotations.json`` (two decimals)."""
    return [round(float(v), 2) for v in box]
