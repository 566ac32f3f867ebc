"""Embedded, procedural object classes with ground truth (box and mask), for few-shot and retrieval.

No data set can be downloaded on the machines this project runs on, so :class:`SyntheticClasses`
draws miniImageNet / CUB-like labelled images on the fly (``DESIGN.md``, "The embedded synthetic
data"):

* a *class* is one combination of a **shape** (:data:`SHAPES`, 10), a **texture** (:data:`TEXTURES`,
  6: solid, stripes, checker, dots, concentric rings, two-tone) and a **colour** (:data:`COLOURS`, 8):
  480 combinations, of which ``num_classes`` (100 by default) are drawn at random from the seed.
  Many classes differ from another one in a single attribute, so no one cue is enough, and the
  unseen (validation / test) classes are *new combinations* of attribute values seen in training:
  a network that learned shape, texture and colour generalises to them;
* every image has one object of its class at a random place, size, aspect ratio and rotation (the
  texture turns with the object), with per-image colour jitter, on clutter: a two-colour background
  with a gradient and a low-frequency wave, and small shapes of random attributes (any colour,
  class colours included) behind the object; light varies (gain, colour cast, an illumination
  gradient) and there is sensor noise;
* per-image ground truth: the object's tight bounding box (``x1, y1, x2, y2`` pixel edges, the
  object is never occluded, so box and mask agree) and its mask.

Splits (:meth:`SyntheticClasses.split_classes`): few-shot ``train`` / ``val`` / ``test`` by class,
64 / 16 / 20 with the default 100 classes (miniImageNet's proportions); retrieval ``train`` /
``test`` = first half / second half of the classes (the CUB-200-2011 convention).

Everything is deterministic per ``(seed, class, index)`` (and the config): scalars are drawn with
:class:`random.Random`, pixels with a few dozen vectorised NumPy operations on the bounding window of
each shape; noise is a window of a per-generator noise bank. About 0.5-1 ms per 84x84 image on one
CPU core. It writes itself to disk in the real layouts (:func:`write_classes_layout`):
CUB-200-2011, miniImageNet CSV and one folder per class under split folders, which is how the real
loaders are tested.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .seeding import mix_seed, single_thread

__all__ = [
    "SHAPES",
    "TEXTURES",
    "COLOURS",
    "FEW_SHOT_SPLITS",
    "CLASS_LAYOUTS",
    "ClassSpec",
    "RenderedObject",
    "SyntheticClassesConfig",
    "SyntheticClasses",
    "SyntheticClassesDataset",
    "write_classes_layout",
    "write_cub_layout",
    "write_miniimagenet_layout",
    "write_class_folders",
]

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "diamond", "cross", "star", "hexagon", "ring", "crescent", "half_disc",
)
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "dots", "rings", "two_tone")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.13, 0.12),
    "orange": (0.97, 0.56, 0.10),
    "yellow": (0.95, 0.88, 0.20),
    "green": (0.18, 0.68, 0.22),
    "cyan": (0.15, 0.78, 0.84),
    "blue": (0.16, 0.30, 0.90),
    "purple": (0.56, 0.20, 0.72),
    "pink": (0.97, 0.55, 0.76),
}
FEW_SHOT_SPLITS: tuple[str, ...] = ("train", "val", "test")
CLASS_LAYOUTS: tuple[str, ...] = ("cub", "miniimagenet", "folders")

# second colour of the textured classes: a dark shade of the first one
_DARK = 0.28
# a shape fits in the unit disc of its local frame (triangle: up to 1.1)
_EXTENT = 1.12


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

    def __post_init__(self) -> None:
        combos = len(SHAPES) * len(TEXTURES) * len(COLOURS)
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


# -- shapes and textures in the object's local frame (u, v), the object filling the unit disc ------------


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "circle":
        return u * u + v * v <= 0.81
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.78
    if shape == "triangle":  # equilateral, apex up, circumradius 1.1
        return (v >= -0.55) & (v * 0.5 - u * 0.8660254 <= 0.55) & (v * 0.5 + u * 0.8660254 <= 0.55)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.32) & (av <= 0.95)) | ((av <= 0.32) & (au <= 0.95))
    if shape == "star":  # five rounded points, radius 0.3 .. 0.96
        r = np.sqrt(u * u + v * v)
        return r <= 0.63 + 0.33 * np.cos(5.0 * np.arctan2(u, -v))
    if shape == "hexagon":
        au = np.abs(u)
        return (np.abs(v) <= 0.85) & (0.8660254 * au + 0.5 * np.abs(v) <= 0.85 * 0.8660254 * 1.1547)
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 0.88) & (r2 >= 0.25)
    if shape == "crescent":
        return (u * u + v * v <= 0.85) & ((u - 0.45) ** 2 + v * v > 0.5)
    if shape == "half_disc":
        return (u * u + v * v <= 0.85) & (v >= -0.12)
    raise ValueError(f"unknown shape {shape!r}")


def _texture_mask(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """Where the second (dark) colour goes; ``None`` for a solid object."""
    if texture == "solid":
        return None
    if texture == "stripes":
        return np.floor(u * 3.2) % 2 > 0.5
    if texture == "checker":
        return (np.floor(u * 2.6) + np.floor(v * 2.6)) % 2 > 0.5
    if texture == "dots":
        fu, fv = u * 3.0, v * 3.0
        return (fu - np.round(fu)) ** 2 + (fv - np.round(fv)) ** 2 < 0.09
    if texture == "rings":
        return np.floor(np.sqrt(u * u + v * v) * 4.5) % 2 > 0.5
    if texture == "two_tone":
        return v > 0.0
    raise ValueError(f"unknown texture {texture!r}")


class SyntheticClasses:
    """Deterministic procedural object classes: class table at construction, images on demand.

    Args:
        seed: the data seed; every image is a function of ``(seed, class, index)`` (and the config).
        config: a :class:`SyntheticClassesConfig`; keyword arguments override its fields.
    """

    mask_names: tuple[str, ...] = ("object",)

    def __init__(self, seed: int = 0, config: SyntheticClassesConfig | None = None, **overrides: Any) -> None:
        config = config or SyntheticClassesConfig()
        if overrides:
            names = {f.name for f in fields(SyntheticClassesConfig)}
            unknown = set(overrides) - names
            if unknown:
                raise TypeError(f"unknown SyntheticClassesConfig fields: {sorted(unknown)}")
            config = SyntheticClassesConfig(**{**{n: getattr(config, n) for n in names}, **overrides})
        self.seed = int(seed)
        self.config = config
        H, W = config.height, config.width
        self.height, self.width = H, W
        self._ys = np.arange(H, dtype=np.float32) + np.float32(0.5)
        self._xs = np.arange(W, dtype=np.float32) + np.float32(0.5)
        self._noise_bank = np.random.default_rng(mix_seed(self.seed, 11)).standard_normal(
            (3, 2 * H, 2 * W), dtype=np.float32)
        combos = list(itertools.product(SHAPES, TEXTURES, COLOURS))
        chosen = random.Random(mix_seed(self.seed, 1)).sample(combos, config.num_classes)
        self.classes: list[ClassSpec] = [ClassSpec(i, *c) for i, c in enumerate(chosen)]
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

    def _draw(
        self, canvas: np.ndarray, shape: str, texture: str, c1: np.ndarray, c2: np.ndarray,
        cx: float, cy: float, rx: float, ry: float, theta: float, mask: np.ndarray | None = None,
    ) -> None:
        """Paint one shape over ``canvas`` [3, H, W] on its bounding window; fill ``mask`` [H, W] if given."""
        H, W = self.height, self.width
        reach = _EXTENT * max(rx, ry)
        x0, x1 = max(0, int(cx - reach)), min(W, int(cx + reach) + 1)
        y0, y1 = max(0, int(cy - reach)), min(H, int(cy + reach) + 1)
        if x0 >= x1 or y0 >= y1:
            return
        dx = (self._xs[x0:x1] - np.float32(cx)).reshape(1, -1)
        dy = (self._ys[y0:y1] - np.float32(cy)).reshape(-1, 1)
        c, s = np.float32(math.cos(theta)), np.float32(math.sin(theta))
        u = (dx * c + dy * s) * np.float32(1.0 / rx)
        v = (dy * c - dx * s) * np.float32(1.0 / ry)
        inside = _shape_mask(shape, u, v)
        dark = _texture_mask(texture, u, v)
        window = canvas[:, y0:y1, x0:x1]
        if dark is None:
            colour = np.broadcast_to(c1.reshape(3, 1, 1), window.shape)
        else:
            colour = np.where(dark[None], c2.reshape(3, 1, 1), c1.reshape(3, 1, 1))
        np.copyto(window, colour, where=inside[None])
        if mask is not None:
            mask[y0:y1, x0:x1] |= inside

    def _render(self, label: int, index: int) -> RenderedObject:
        cfg = self.config
        spec = self.classes[label]
        rng = random.Random(mix_seed(self.seed, 0xC1A55, label, index))
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
        canvas = a.reshape(3, 1, 1) + (b - a).reshape(3, 1, 1) * f[None]

        # clutter behind the object: small shapes of any attributes
        for _ in range(rng.randint(*cfg.clutter)):
            colour = np.array(COLOURS[rng.choice(tuple(COLOURS))], np.float32) if rng.random() < 0.5 else _muted(rng, 0.1, 0.95)
            r = rng.uniform(*cfg.clutter_size) * side
            self._draw(canvas, rng.choice(SHAPES), rng.choice(TEXTURES), colour, colour * _DARK,
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
        self._draw(canvas, spec.shape, spec.texture, c1, c2, cx, cy, rx, ry, rng.uniform(0, 2 * math.pi), mask)

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
        image = torch.from_numpy(np.clip(img, 0.0, 255.0).astype(np.uint8))

        box = torch.zeros(4)
        rows = np.flatnonzero(mask.any(1))
        if rows.size:
            cols = np.flatnonzero(mask.any(0))
            box = torch.tensor([float(cols[0]), float(rows[0]), float(cols[-1]) + 1.0, float(rows[-1]) + 1.0])
        return RenderedObject(image=image, mask=torch.from_numpy(mask)[None], box=box, label=label)


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
        from torchvision import tv_tensors

        index = int(item[0] if isinstance(item, (tuple, list)) else item)
        s = self._cache.get(index) if self.cache else None
        if s is None:
            s = self.generator.render(*self.locate(index))
            if self.cache:
                self._cache[index] = s
        H, W = s.image.shape[-2:]
        return {
            "image": tv_tensors.Image(s.image),
            "label": s.label,
            "box": tv_tensors.BoundingBoxes(s.box.view(1, 4), format="XYXY", canvas_size=(H, W)),
            "mask": tv_tensors.Mask(s.mask.to(torch.uint8)),
        }


# ----------------------------------------------------------------------------------------------
# Writing the real layouts
# ----------------------------------------------------------------------------------------------


def _wnid(label: int) -> str:
    """A miniImageNet-like class id (``n`` + 8 digits) that no real WordNet id uses."""
    return f"n9{label:07d}"


def _encode(image: torch.Tensor, quality: int) -> bytes:
    from torchvision.io import encode_jpeg

    return bytes(encode_jpeg(image, quality=quality).numpy().tobytes())


def _make_generator(generator: SyntheticClasses | None, seed: int, config: dict[str, Any]) -> SyntheticClasses:
    if generator is None:
        return SyntheticClasses(seed=seed, **config)
    if config:
        raise TypeError("pass either a generator or config fields, not both")
    return generator


def _write_annotations(root: Path, layout: str, generator: SyntheticClasses, annotations: dict) -> None:
    meta = {"layout": layout, "seed": generator.seed, "box_format": "xyxy pixels at native size",
            "class_names": generator.class_names, "images": annotations}
    (root / "synthetic_annotations.json").write_text(json.dumps(meta))


def _scaled_generator(kind: str, generator: SyntheticClasses | None, seed: int, scale: str | float,
                      config: dict[str, Any]) -> tuple[SyntheticClasses, list[int]]:
    """The generator and images per class: the default / given one, or the real sizes at ``scale``."""
    if scale == "default":
        gen = _make_generator(generator, seed, config)
        return gen, [gen.images_per_class] * gen.num_classes
    if generator is not None:
        raise TypeError("scale builds the generator from the real sizes: pass no generator with it")
    from .real_sizes import real_size_classes

    return real_size_classes(kind, scale, seed=seed, **config)


def write_cub_layout(
    root: str | Path,
    generator: SyntheticClasses | None = None,
    *,
    seed: int = 0,
    scale: str | float = "default",
    workers: int = 1,
    progress: bool = True,
    write_json: bool = True,
    jpeg_quality: int = 92,
    **config: Any,
) -> Path:
    """Write every class in the CUB-200-2011 layout under ``root`` (the ``CUB_200_2011`` folder).

    ``images/<NNN.class_name>/<class_name>_<NNNN>_<id>.jpg``; ``images.txt`` (``id path``),
    ``image_class_labels.txt`` (``id class``, 1-based), ``classes.txt`` (``id name``),
    ``bounding_boxes.txt`` (``id x y width height``, pixels), ``train_test_split.txt``
    (``id is_training``: every other image of a class). Class ``c`` of the generator is CUB class
    ``c + 1``. ``scale="real"`` writes CUB-200-2011's sizes (200 classes of 41-60 images, 11,788 in
    all: :mod:`datamodules.real_sizes`), a fraction such as ``0.05`` that share of the images per
    class; ``config`` may then only set the image size. ``workers`` > 1 draws the images on that many
    processes. Returns ``root``.
    """
    from .image_writer import ImageJob, write_images

    gen, counts = _scaled_generator("cub", generator, seed, scale, config)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, labels, splits, classes, jobs = [], [], [], [], []
    image_id = 0
    for spec, count in zip(gen.classes, counts):
        folder = f"{spec.label + 1:03d}.{spec.name}"
        (root / "images" / folder).mkdir(exist_ok=True)
        classes.append(f"{spec.label + 1} {folder}")
        for i in range(count):
            image_id += 1
            rel = f"{folder}/{spec.name}_{i + 1:04d}_{image_id}.jpg"
            jobs.append(ImageJob(f"images/{rel}", (spec.label, i)))
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {spec.label + 1}")
            splits.append(f"{image_id} {int(i % 2 == 0)}")
    boxes = write_images(root, SyntheticClasses.render, gen, jobs, jpeg_quality=jpeg_quality, workers=workers,
                         progress=progress, desc="writing synthetic CUB-200-2011")
    rows_of_boxes = [f"{n} {x1:.1f} {y1:.1f} {x2 - x1:.1f} {y2 - y1:.1f}"
                     for n, (x1, y1, x2, y2) in enumerate(boxes, start=1)]
    for name, rows in (("images.txt", images), ("image_class_labels.txt", labels), ("classes.txt", classes),
                       ("bounding_boxes.txt", rows_of_boxes), ("train_test_split.txt", splits)):
        (root / name).write_text("\n".join(rows) + "\n")
    if write_json:
        annotations = {job.path: {"label": job.args[0], "index": job.args[1],
                                  "box": [round(float(v), 2) for v in box]} for job, box in zip(jobs, boxes)}
        _write_annotations(root, "cub", gen, annotations)
    return root


def write_miniimagenet_layout(
    root: str | Path,
    generator: SyntheticClasses | None = None,
    *,
    seed: int = 0,
    scale: str | float = "default",
    workers: int = 1,
    progress: bool = True,
    write_json: bool = True,
    jpeg_quality: int = 92,
    columns: Literal["filename,label", "class_name,image_name"] = "filename,label",
    **config: Any,
) -> Path:
    """Write the few-shot splits in the miniImageNet CSV layout under ``root``.

    ``images/<wnid><NNNNNNNN>.jpg`` and ``train.csv``, ``val.csv``, ``test.csv`` with the header
    ``filename,label`` (Ravi & Larochelle's files) or, with ``columns="class_name,image_name"``, the
    variant whose columns are the class then the file name. Class ids look like WordNet ids
    (``n9000012``). ``scale="real"`` writes miniImageNet's sizes (100 classes of 600 images, 64 / 16 /
    20), a fraction such as ``0.05`` that share of the images per class; ``config`` may then only set
    the image size. ``workers`` > 1 draws the images on that many processes. Returns ``root``.
    """
    from .image_writer import ImageJob, write_images

    if columns not in ("filename,label", "class_name,image_name"):
        raise ValueError(f"unknown columns {columns!r}")
    gen, counts = _scaled_generator("miniimagenet", generator, seed, scale, config)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    jobs, split_of = [], []
    csv_rows: dict[str, list[str]] = {}
    for split in FEW_SHOT_SPLITS:
        rows = csv_rows.setdefault(split, [columns])
        for label in gen.split_classes(split):
            wnid = _wnid(label)
            for i in range(counts[label]):
                name = f"{wnid}{i + 1:08d}.jpg"
                jobs.append(ImageJob(f"images/{name}", (label, i)))
                split_of.append(split)
                rows.append(f"{name},{wnid}" if columns == "filename,label" else f"{wnid},{name}")
    boxes = write_images(root, SyntheticClasses.render, gen, jobs, jpeg_quality=jpeg_quality, workers=workers,
                         progress=progress, desc="writing synthetic miniImageNet")
    for split, rows in csv_rows.items():
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    if write_json:
        annotations = {job.path: {"label": job.args[0], "index": job.args[1], "split": split,
                                  "box": [round(float(v), 2) for v in box]}
                       for job, split, box in zip(jobs, split_of, boxes)}
        _write_annotations(root, "miniimagenet", gen, annotations)
    return root


def write_class_folders(
    root: str | Path,
    generator: SyntheticClasses | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
    write_json: bool = True,
    jpeg_quality: int = 92,
    split_names: Sequence[str] = FEW_SHOT_SPLITS,
    **config: Any,
) -> Path:
    """Write the few-shot splits as one folder per class under split folders.

    ``<root>/<split>/<class_name>/<class_name>_<NNNN>.jpg`` for the splits ``split_names``
    (train / val / test by default). Returns ``root``.
    """
    from tqdm.auto import tqdm

    if len(split_names) != 3:
        raise ValueError(f"split_names must name the train, val and test folders, got {split_names}")
    gen = _make_generator(generator, seed, config)
    root = Path(root)
    annotations: dict[str, dict] = {}
    with tqdm(total=len(gen), desc="writing synthetic class folders", disable=not progress, unit="img") as bar:
        for split, folder_name in zip(FEW_SHOT_SPLITS, split_names):
            for label in gen.split_classes(split):
                name = gen.classes[label].name
                folder = root / folder_name / name
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(gen.images_per_class):
                    s = gen.render(label, i)
                    (folder / f"{name}_{i + 1:04d}.jpg").write_bytes(_encode(s.image, jpeg_quality))
                    rel = f"{folder_name}/{name}/{name}_{i + 1:04d}.jpg"
                    annotations[rel] = {"label": label, "index": i, "split": split,
                                        "box": [round(float(v), 2) for v in s.box]}
                    bar.update(1)
    if write_json:
        _write_annotations(root, "folders", gen, annotations)
    return root


def write_classes_layout(
    root: str | Path,
    layout: Literal["cub", "miniimagenet", "folders"] = "cub",
    generator: SyntheticClasses | None = None,
    **kwargs: Any,
) -> Path:
    """Write the synthetic classes to ``root`` in a real layout (see the ``write_*`` functions)."""
    writers = {"cub": write_cub_layout, "miniimagenet": write_miniimagenet_layout, "folders": write_class_folders}
    if layout not in writers:
        raise ValueError(f"unknown layout {layout!r}, expected one of {CLASS_LAYOUTS}")
    return writers[layout](root, generator, **kwargs)


def benchmark(n: int = 500, seed: int = 0) -> float:
    """Images per second of :meth:`SyntheticClasses.render` on the current thread settings."""
    import time

    gen = SyntheticClasses(seed=seed)
    for i in range(20):
        gen.render(i % gen.num_classes, 0)
    t0 = time.perf_counter()
    for i in range(n):
        gen.render(i % gen.num_classes, (i // gen.num_classes) % gen.images_per_class)
    return n / (time.perf_counter() - t0)


if __name__ == "__main__":  # pragma: no cover
    print(f"{benchmark():.0f} images/s")
