"""The synthetic classes for few-shot and retrieval: configuration, class table and rendering.

:class:`SyntheticClasses` draws the class table (shape x texture x colour combinations; in the
cluttered scene, arrangements of two shapes: :mod:`.cluttered`) at construction and renders image
``index`` of class ``label`` on demand, deterministically per ``(seed, class, index)``, with the
object's box and mask.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..seeding import mix_seed, single_thread
from .cluttered import (
    BACKGROUNDS,
    ArrangementSpec,
    arrangement_table,
    max_arrangements,
    paint_arrangement,
    paint_patchwork,
)
from .common import mask_box, noise_bank, target_item, with_overrides
from .object_shapes import _DARK, COLOURS, SHAPES, TEXTURES, paint_shape

__all__ = [
    "FEW_SHOT_SPLITS",
    "SCENES",
    "ClassSpec",
    "RenderedObject",
    "SyntheticClassesConfig",
    "SyntheticClasses",
    "SyntheticClassesDataset",
]

FEW_SHOT_SPLITS: tuple[str, ...] = ("train", "val", "test")
SCENES: tuple[str, ...] = ("plain", "cluttered")


@dataclass(frozen=True)
class ClassSpec:
    """One class: a (shape, texture, colour) combination and its name."""

    label: int
    shape: str
    texture: str
    colour: str

    @property
    def name(self) -> str:
        return f"{self.colour}_{self.texture}_{self.shape}"

    def attributes(self) -> tuple[str, str, str]:
        return (self.shape, self.texture, self.colour)


@dataclass
class RenderedObject:
    image: torch.Tensor  # uint8 [3, H, W]
    mask: torch.Tensor  # bool [1, H, W], the object's pixels
    box: torch.Tensor  # float [4] x1, y1, x2, y2 (pixel edges; x2, y2 exclusive)
    label: int
    distractors: torch.Tensor | None = None  # bool [1, H, W], the cluttered scene's distractors


@dataclass(frozen=True)
class SyntheticClassesConfig:
    """Sizes and difficulty of the synthetic classes (the defaults suit the fast few-shot job).

    Attributes:
        num_classes: number of classes (at most ``10 * 6 * 8 = 480`` combinations).
        images_per_class: images of every class (index ``0 .. images_per_class - 1``).
        height, width: native image size (miniImageNet's 84x84 by default).
        few_shot_splits: numbers of train / val / test classes (they must add up to ``num_classes``;
            ``None`` scales miniImageNet's 64 / 16 / 20 to ``num_classes``).
        object_size: (min, max) radius of the object as a fraction of the shorter image side.
        aspect: (min, max) aspect-ratio jitter of the object.
        clutter: (min, max) number of small clutter shapes behind the object.
        clutter_size: (min, max) clutter radius as a fraction of the shorter side.
        colour_jitter: per-channel jitter of the object's colour (in [0, 1] units).
        gain: (min, max) global light gain.
        noise_std: (min, max) Gaussian noise standard deviation (in [0, 1] units).
        scene: ``"plain"``: a class is a shape x texture x colour combination on clutter; ``"cluttered"``:
            a class is an arrangement of two shapes of random colours and textures among distractors
            of the same palette (:mod:`datamodules.synthetic.cluttered`; at most 45 classes; ``clutter``,
            ``clutter_size`` and ``object_size`` unused).
        object_area: (min, max) area of the cluttered scene's object as a fraction of the image (an
            object that does not fit the image shrinks).
        distractors: (min, max) number of the cluttered scene's distractor shapes.
        rotation: the cluttered scene's largest rotation of a shape, in radians (a square stays a square).
        distractor_pairs: the share of the cluttered scene's distractors that are pairs of shapes (pairs
            that no class arranges), the others single shapes.
        background: the cluttered scene's background: ``"gradient"`` (two muted colours along a
            gradient, as the plain scene's), ``"cells"`` (2-4 solid Voronoi cells of the shared palette)
            or ``"patchwork"`` (3-6 cells of the palette's colours and textures): on the cells no colour
            tells the object from the background (:func:`datamodules.synthetic.cluttered.paint_patchwork`).
    """

    num_classes: int = 100
    images_per_class: int = 60
    height: int = 84
    width: int = 84
    few_shot_splits: tuple[int, int, int] | None = None
    object_size: tuple[float, float] = (0.22, 0.36)
    aspect: tuple[float, float] = (0.8, 1.25)
    clutter: tuple[int, int] = (2, 6)
    clutter_size: tuple[float, float] = (0.06, 0.15)
    colour_jitter: float = 0.07
    gain: tuple[float, float] = (0.7, 1.2)
    noise_std: tuple[float, float] = (0.01, 0.04)
    scene: str = "plain"
    object_area: tuple[float, float] = (0.055, 0.12)
    distractors: tuple[int, int] = (1, 3)
    rotation: float = 0.25
    distractor_pairs: float = 0.5
    background: str = "gradient"

    def __post_init__(self) -> None:
        if self.scene not in SCENES:
            raise ValueError(f"scene must be one of {SCENES}, got {self.scene!r}")
        combos = len(SHAPES) * len(TEXTURES) * len(COLOURS) if self.scene == "plain" else max_arrangements()
        if not 3 <= self.num_classes <= combos:
            raise ValueError(f"num_classes must be in [3, {combos}], got {self.num_classes}")
        if self.images_per_class < 1:
            raise ValueError(f"images_per_class must be >= 1, got {self.images_per_class}")
        if self.height < 16 or self.width < 16:
            raise ValueError("images must be at least 16x16")
        if self.few_shot_splits is not None:
            if len(self.few_shot_splits) != 3 or min(self.few_shot_splits) < 1:
                raise ValueError(f"few_shot_splits must be 3 positive counts, got {self.few_shot_splits}")
            if sum(self.few_shot_splits) != self.num_classes:
                raise ValueError(
                    f"few_shot_splits {tuple(self.few_shot_splits)} add up to {sum(self.few_shot_splits)}, "
                    f"not num_classes={self.num_classes}"
                )
        if not 0 < self.object_size[0] <= self.object_size[1] <= 0.5:
            raise ValueError(f"object_size must satisfy 0 < min <= max <= 0.5, got {self.object_size}")
        if not 0 <= self.clutter[0] <= self.clutter[1]:
            raise ValueError(f"clutter must satisfy 0 <= min <= max, got {self.clutter}")
        if not 0 < self.object_area[0] <= self.object_area[1] <= 0.5:
            raise ValueError(f"object_area must satisfy 0 < min <= max <= 0.5, got {self.object_area}")
        if not 0 <= self.distractors[0] <= self.distractors[1]:
            raise ValueError(f"distractors must satisfy 0 <= min <= max, got {self.distractors}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")

    def split_sizes(self) -> tuple[int, int, int]:
        """Train / val / test class counts (64 / 16 / 20 for 100 classes)."""
        if self.few_shot_splits is not None:
            return tuple(int(n) for n in self.few_shot_splits)  # type: ignore[return-value]
        n = self.num_classes
        val = max(1, round(n * 0.16))
        test = max(1, round(n * 0.20))
        return (n - val - test, val, test)


def _muted(rng: random.Random, lo: float = 0.15, hi: float = 0.85) -> np.ndarray:
    base = rng.uniform(lo, hi)
    return np.array([min(1.0, max(0.0, base + rng.uniform(-0.2, 0.2))) for _ in range(3)], np.float32)


class SyntheticClasses:
    """Deterministic procedural object classes: class table at construction, images on demand.

    Args:
        seed: the data seed; every image is a function of ``(seed, class, index)`` (and the config).
        config: a :class:`SyntheticClassesConfig`; keyword arguments override its fields.
    """

    mask_names: tuple[str, ...] = ("object",)

    def __init__(self, seed: int = 0, config: SyntheticClassesConfig | None = None, **overrides: Any) -> None:
        config = with_overrides(SyntheticClassesConfig, config, overrides)
        self.seed = int(seed)
        self.config = config
        H, W = config.height, config.width
        self.height, self.width = H, W
        self._ys = np.arange(H, dtype=np.float32) + np.float32(0.5)
        self._xs = np.arange(W, dtype=np.float32) + np.float32(0.5)
        self._noise_bank = noise_bank(self.seed, H, W)
        table_rng = random.Random(mix_seed(self.seed, 1))
        self.classes: list[ClassSpec] | list[ArrangementSpec]
        if config.scene == "cluttered":
            self.classes = arrangement_table(table_rng, config.num_classes)
            self._class_pairs = frozenset(frozenset((c.first, c.second)) for c in self.classes)
        else:
            combos = list(itertools.product(SHAPES, TEXTURES, COLOURS))
            chosen = table_rng.sample(combos, config.num_classes)
            self.classes = [ClassSpec(i, *c) for i, c in enumerate(chosen)]
        n_train, n_val, _ = config.split_sizes()
        self._splits = {
            "train": list(range(n_train)),
            "val": list(range(n_train, n_train + n_val)),
            "test": list(range(n_train + n_val, config.num_classes)),
        }

    # -- class-indexed metadata ------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def images_per_class(self) -> int:
        return self.config.images_per_class

    def __len__(self) -> int:
        return self.num_classes * self.images_per_class

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def split_classes(self, split: str) -> list[int]:
        """Class labels of a few-shot split: ``"train"`` / ``"val"`` / ``"test"`` (64 / 16 / 20)."""
        try:
            return list(self._splits[split])
        except KeyError:
            raise ValueError(f"unknown few-shot split {split!r}, expected one of {FEW_SHOT_SPLITS}") from None

    def retrieval_classes(self, split: str) -> list[int]:
        """Class labels of a retrieval split: ``"train"`` = first half, ``"test"`` = second half."""
        half = self.num_classes // 2
        if split == "train":
            return list(range(half))
        if split == "test":
            return list(range(half, self.num_classes))
        raise ValueError(f"unknown retrieval split {split!r}, expected 'train' or 'test'")

    def dataset(self, classes: str | Sequence[int] | None = None, cache: bool = False) -> "SyntheticClassesDataset":
        """All images of some classes: a few-shot split name, a list of labels, or ``None`` (all)."""
        if classes is None:
            labels = list(range(self.num_classes))
        elif isinstance(classes, str):
            labels = self.split_classes(classes)
        else:
            labels = [int(c) for c in classes]
        return SyntheticClassesDataset(self, labels, cache=cache)

    # -- rendering ----------------------------------------------------------------------------------

    def render(self, label: int, index: int) -> RenderedObject:
        """Draw image ``index`` (``0 .. images_per_class - 1``) of class ``label``."""
        if not 0 <= label < self.num_classes:
            raise IndexError(f"class {label} out of range [0, {self.num_classes})")
        if not 0 <= index < self.images_per_class:
            raise IndexError(f"image {index} out of range [0, {self.images_per_class})")
        with single_thread():
            return self._render(label, index)

    def _render(self, label: int, index: int) -> RenderedObject:
        if self.config.scene == "cluttered":
            return self._render_cluttered(label, index)
        cfg = self.config
        spec = self.classes[label]
        rng = random.Random(mix_seed(self.seed, 0xC1A55, label, index))
        H, W = self.height, self.width
        side = min(H, W)
        canvas = self._background(rng)

        # clutter behind the object: small shapes of any attributes
        for _ in range(rng.randint(*cfg.clutter)):
            colour = np.array(COLOURS[rng.choice(tuple(COLOURS))], np.float32) if rng.random() < 0.5 else _muted(rng, 0.1, 0.95)
            r = rng.uniform(*cfg.clutter_size) * side
            paint_shape(canvas, self._xs, self._ys, rng.choice(SHAPES), rng.choice(TEXTURES), colour, colour * _DARK,
                       rng.uniform(0, W), rng.uniform(0, H), r * rng.uniform(0.8, 1.25), r,
                       rng.uniform(0, 2 * math.pi))

        # the object
        radius = rng.uniform(*cfg.object_size) * side
        aspect = math.sqrt(rng.uniform(*cfg.aspect))
        rx, ry = radius * aspect, radius / aspect
        margin = 0.85 * radius
        cx = rng.uniform(margin, W - margin)
        cy = rng.uniform(margin, H - margin)
        jitter = cfg.colour_jitter
        c1 = np.clip(np.array(COLOURS[spec.colour], np.float32)
                     + np.array([rng.uniform(-jitter, jitter) for _ in range(3)], np.float32), 0.0, 1.0)
        c2 = c1 * np.float32(_DARK * rng.uniform(0.8, 1.2))
        mask = np.zeros((H, W), dtype=bool)
        paint_shape(canvas, self._xs, self._ys, spec.shape, spec.texture, c1, c2, cx, cy, rx, ry, rng.uniform(0, 2 * math.pi), mask)
        return RenderedObject(image=self._light(rng, canvas), mask=torch.from_numpy(mask)[None],
                              box=mask_box(mask), label=label)

    def _render_cluttered(self, label: int, index: int) -> RenderedObject:
        cfg = self.config
        rng = random.Random(mix_seed(self.seed, 0xC1A77, label, index))
        if cfg.background in ("patchwork", "cells"):
            textured = cfg.background == "patchwork"
            canvas = paint_patchwork(rng, self._xs, self._ys, cfg.colour_jitter, textured)
        else:
            canvas = self._background(rng)
        mask, others = paint_arrangement(canvas, self._xs, self._ys, rng, self.classes[label],
                                         cfg.object_area, cfg.distractors, cfg.aspect, cfg.rotation,
                                         cfg.colour_jitter, cfg.distractor_pairs, self._class_pairs)
        return RenderedObject(image=self._light(rng, canvas), mask=torch.from_numpy(mask)[None],
                              box=mask_box(mask), label=label, distractors=torch.from_numpy(others)[None])

    def _background(self, rng: random.Random) -> np.ndarray:
        """Two muted colours along a gradient, with a low-frequency wave: float [3, H, W] in [0, 1]."""
        H, W = self.height, self.width
        side = min(H, W)
        # background: two muted colours along a gradient, with a low-frequency wave
        a, b = _muted(rng), _muted(rng)
        phi = rng.uniform(0, 2 * math.pi)
        ramp = (self._xs.reshape(1, W) * math.cos(phi) + self._ys.reshape(H, 1) * math.sin(phi)) / side
        ramp = ramp - ramp.min()
        ramp = ramp / max(float(ramp.max()), 1e-6)
        k = rng.uniform(1.0, 3.0) * 2 * math.pi / side
        psi = rng.uniform(0, 2 * math.pi)
        wave = np.sin(self._xs.reshape(1, W) * (k * math.cos(psi + 1.0)) + self._ys.reshape(H, 1) * (k * math.sin(psi + 1.0))
                      + rng.uniform(0, 2 * math.pi))
        f = np.clip(0.75 * ramp + 0.25 * (wave * 0.5 + 0.5), 0.0, 1.0).astype(np.float32)
        return a.reshape(3, 1, 1) + (b - a).reshape(3, 1, 1) * f[None]

    def _light(self, rng: random.Random, canvas: np.ndarray) -> torch.Tensor:
        """Light (gain, colour cast, an illumination gradient) and sensor noise: uint8 [3, H, W]."""
        cfg = self.config
        H, W = self.height, self.width
        side = min(H, W)
        # light: gain, colour cast, an illumination gradient; sensor noise; to uint8
        gain = rng.uniform(*cfg.gain)
        cast = np.array([255.0 * gain * rng.uniform(0.9, 1.1) for _ in range(3)], np.float32).reshape(3, 1, 1)
        light_dir = rng.uniform(0, 2 * math.pi)
        strength = rng.uniform(0.0, 0.3)
        light = 1.0 + strength * (
            (self._xs.reshape(1, W) - W / 2) * math.cos(light_dir) + (self._ys.reshape(H, 1) - H / 2) * math.sin(light_dir)
        ) / side
        img = canvas * (cast * light.astype(np.float32)[None])
        oy, ox = rng.randrange(H), rng.randrange(W)
        noise = np.float32(255.0 * rng.uniform(*cfg.noise_std))
        img += self._noise_bank[:, oy:oy + H, ox:ox + W] * noise + np.float32(0.5)
        return torch.from_numpy(np.clip(img, 0.0, 255.0).astype(np.uint8))


class SyntheticClassesDataset(Dataset):
    """The images of some classes of a :class:`SyntheticClasses` as a map-style Dataset.

    Item ``j`` is image ``j % images_per_class`` of ``classes[j // images_per_class]``; items are dicts
    ``{"image": tv_tensors.Image uint8 [3,H,W], "label": int (the generator's class label),
    "box": tv_tensors.BoundingBoxes [1,4] XYXY, "mask": tv_tensors.Mask uint8 [1,H,W]}``. An item may
    also be requested as ``(index, sample_seed)`` (what the samplers yield); the image does not depend
    on the sample seed. With ``cache`` rendered images are kept in memory (per process).
    """

    def __init__(self, generator: SyntheticClasses, classes: Sequence[int], cache: bool = False) -> None:
        self.generator = generator
        self.classes = [int(c) for c in classes]
        self.per_class = generator.images_per_class
        self.cache = cache
        self._cache: dict[int, RenderedObject] = {}
        self.mask_names = generator.mask_names

    def __len__(self) -> int:
        return len(self.classes) * self.per_class

    @property
    def labels(self) -> list[int]:
        return [c for c in self.classes for _ in range(self.per_class)]

    @property
    def class_names(self) -> dict[int, str]:
        return {c: self.generator.classes[c].name for c in self.classes}

    def locate(self, index: int) -> tuple[int, int]:
        """``(class label, image index within the class)`` of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range [0, {len(self)})")
        return self.classes[index // self.per_class], index % self.per_class

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index = int(item[0] if isinstance(item, (tuple, list)) else item)
        s = self._cache.get(index) if self.cache else None
        if s is None:
            s = self.generator.render(*self.locate(index))
            if self.cache:
                self._cache[index] = s
        return target_item(s.image, s.box, s.mask, label=s.label)
