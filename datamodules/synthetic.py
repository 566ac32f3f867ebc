"""Embedded, procedural person re-ID data with ground truth (person box and part masks).

No data set can be downloaded on the machines this project runs on, so :class:`SyntheticReID`
draws Market-1501-like pedestrian crops on the fly:

* a person is built from five parts, ``PART_NAMES = ("head", "upper", "lower", "shoes",
  "accessory")``; an *identity* is one attribute tuple per part (skin/hair colour/hair style;
  top colour/pattern/second colour/sleeves; trouser colour/style; shoe colour; accessory
  kind/colour);
* identities come in *families*: a base attribute set plus siblings that each change exactly one
  part, so most identities have a look-alike that differs in a single part and one cue is not
  enough to tell them apart;
* each camera has its own light (gain), colour cast, background style and colours, front/back view
  bias and noise level (the last of 6 cameras is low resolution, like Market's camera 6);
* every image has pose jitter (position, scale, width, stance, arm swing, lean), per-part colour
  jitter, background clutter, sensor noise and, with some probability, an occluding block;
* train and test identities are disjoint; the test side is split into a query set (one image per
  identity and camera, for ``query_cameras`` cameras) and a gallery with several images per
  identity in all its cameras, plus distractors (pid 0: background clutter or a tiny figure) and
  junk (pid -1: a heavily cut person).

Everything is deterministic per ``(seed, split, index)`` and drawn with a few dozen vectorised
array operations (NumPy, whose per-call overhead is lower than torch's on arrays this small):
the ellipse and trapezoid inequalities are evaluated on the coordinate grid of every shape at
once, stripes are parities of floor functions of the coordinates. About 1 ms (1000+ images/s)
per 128x64 image on one CPU core; images come out as uint8 torch tensors. :func:`write_reid_layout` writes the
data to disk in the Market-1501, DukeMTMC-reID or CUHK03-NP layouts, which is how the real-data
loaders are tested.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from .seeding import mix_seed, single_thread

__all__ = [
    "PART_NAMES",
    "SPLITS",
    "Identity",
    "SampleInfo",
    "SyntheticReIDConfig",
    "SyntheticReID",
    "SyntheticReIDDataset",
    "RenderedSample",
    "differing_parts",
    "write_reid_layout",
]

PART_NAMES: tuple[str, ...] = ("head", "upper", "lower", "shoes", "accessory")
HEAD, UPPER, LOWER, SHOES, ACCESSORY = range(5)
_NOT_PERSON = -1

SPLITS: tuple[str, ...] = ("train", "query", "gallery")
_SPLIT_ID = {"train": 0, "query": 1, "gallery": 2}

# ----------------------------------------------------------------------------------------------
# Attribute vocabularies
# ----------------------------------------------------------------------------------------------

PALETTE: dict[str, tuple[float, float, float]] = {
    "black": (0.08, 0.08, 0.09),
    "white": (0.93, 0.93, 0.90),
    "grey": (0.52, 0.52, 0.54),
    "dark_grey": (0.30, 0.30, 0.32),
    "red": (0.82, 0.12, 0.12),
    "maroon": (0.45, 0.07, 0.10),
    "orange": (0.95, 0.52, 0.10),
    "yellow": (0.95, 0.86, 0.20),
    "green": (0.20, 0.66, 0.25),
    "dark_green": (0.08, 0.34, 0.14),
    "cyan": (0.20, 0.76, 0.80),
    "blue": (0.15, 0.30, 0.86),
    "navy": (0.10, 0.12, 0.40),
    "purple": (0.50, 0.20, 0.66),
    "pink": (0.96, 0.56, 0.72),
    "brown": (0.46, 0.28, 0.14),
    "beige": (0.86, 0.76, 0.55),
    "light_blue": (0.56, 0.72, 0.92),
}
SKIN_TONES: dict[str, tuple[float, float, float]] = {
    "light": (0.96, 0.80, 0.68),
    "tan": (0.84, 0.64, 0.46),
    "brown": (0.60, 0.42, 0.28),
    "dark": (0.36, 0.24, 0.16),
}
HAIR_COLOURS: dict[str, tuple[float, float, float]] = {
    "black": (0.06, 0.05, 0.05),
    "brown": (0.36, 0.22, 0.10),
    "blond": (0.88, 0.74, 0.38),
    "grey": (0.72, 0.72, 0.72),
    "auburn": (0.62, 0.24, 0.10),
}
HAIR_STYLES = ("short", "long", "bald")
UPPER_COLOURS = tuple(PALETTE)
UPPER_PATTERNS = ("solid", "hstripes", "vstripes", "two_tone", "logo")
SLEEVES = ("long", "short")
LOWER_COLOURS = ("black", "navy", "blue", "light_blue", "grey", "dark_grey", "beige", "brown",
                 "white", "red", "dark_green", "maroon")
LOWER_STYLES = ("trousers", "shorts", "skirt")
SHOE_COLOURS = ("black", "white", "brown", "red", "blue", "grey")
ACCESSORIES = ("none", "backpack", "bag", "hat")
ACCESSORY_COLOURS = ("black", "red", "blue", "yellow", "green", "orange", "purple", "beige", "grey", "pink")


@dataclass(frozen=True)
class Identity:
    """One person: an attribute tuple per part (see :data:`PART_NAMES`)."""

    pid: int
    family: int
    head: tuple  # (skin, hair colour, hair style)
    upper: tuple  # (colour, pattern, second colour, sleeves)
    lower: tuple  # (colour, style)
    shoes: tuple  # (colour,)
    accessory: tuple  # (kind, colour); colour "" when kind == "none"

    def parts(self) -> tuple[tuple, ...]:
        return (self.head, self.upper, self.lower, self.shoes, self.accessory)


def differing_parts(a: Identity, b: Identity) -> tuple[str, ...]:
    """Names of the parts whose attributes differ between two identities."""
    return tuple(name for name, pa, pb in zip(PART_NAMES, a.parts(), b.parts()) if pa != pb)


def _sample_part(rng: random.Random, part: int) -> tuple:
    if part == HEAD:
        return (rng.choice(tuple(SKIN_TONES)), rng.choice(tuple(HAIR_COLOURS)),
                rng.choices(HAIR_STYLES, weights=(5, 3, 1))[0])
    if part == UPPER:
        colour = rng.choice(UPPER_COLOURS)
        pattern = rng.choices(UPPER_PATTERNS, weights=(4, 2, 2, 2, 2))[0]
        colour2 = "" if pattern == "solid" else rng.choice([c for c in UPPER_COLOURS if c != colour])
        return (colour, pattern, colour2, rng.choice(SLEEVES))
    if part == LOWER:
        return (rng.choice(LOWER_COLOURS), rng.choices(LOWER_STYLES, weights=(5, 2, 2))[0])
    if part == SHOES:
        return (rng.choice(SHOE_COLOURS),)
    kind = rng.choices(ACCESSORIES, weights=(3, 2, 2, 2))[0]
    return (kind, "" if kind == "none" else rng.choice(ACCESSORY_COLOURS))


def _sample_parts(rng: random.Random) -> list[tuple]:
    return [_sample_part(rng, p) for p in range(len(PART_NAMES))]


# ----------------------------------------------------------------------------------------------
# Configuration and metadata
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticReIDConfig:
    """Sizes and difficulty of the synthetic re-ID set (the defaults suit the fast main job).

    Attributes:
        num_train_ids: training identities.
        num_test_ids: test identities (disjoint from the training ones).
        num_cameras: cameras; each has its own light, colour cast and background.
        cameras_per_id: (min, max) cameras in which an identity appears (min >= 2 so every query has
            a gallery match in another camera).
        images_per_camera: (min, max) images of an identity per camera (training set and gallery).
        query_cameras: query images per test identity, one in each of its first ``query_cameras``
            cameras.
        num_distractors: gallery images with pid 0 (no proper person).
        num_junk: gallery images with pid -1 (heavily cut persons).
        family_size: identities per family (a base plus siblings that change exactly one part).
        height, width: native image size (Market-1501 crops are 128x64).
        occlusion_prob: probability that an occluding block covers part of the person.
        noise_std: (min, max) per-image Gaussian noise standard deviation (in [0, 1] units).
        placement: where a person stands in its crop. ``"tight"``: a well-aligned crop (80-95% of
            the height, centred within 8% of the width), like hand-labelled boxes; ``"loose"``: a
            loose detector crop (50-90% of the height, anywhere in the crop), so the person's
            position is information a map has to find (a centred box no longer fits every person).
    """

    num_train_ids: int = 150
    num_test_ids: int = 100
    num_cameras: int = 6
    cameras_per_id: tuple[int, int] = (3, 4)
    images_per_camera: tuple[int, int] = (3, 4)
    query_cameras: int = 2
    num_distractors: int = 200
    num_junk: int = 100
    family_size: int = 5
    height: int = 128
    width: int = 64
    occlusion_prob: float = 0.25
    noise_std: tuple[float, float] = (0.015, 0.05)
    placement: Literal["tight", "loose"] = "tight"

    def __post_init__(self) -> None:
        if self.placement not in ("tight", "loose"):
            raise ValueError(f"placement must be 'tight' or 'loose', got {self.placement!r}")
        lo, hi = self.cameras_per_id
        if self.num_train_ids < 1 or self.num_test_ids < 1:
            raise ValueError("num_train_ids and num_test_ids must be >= 1")
        if not 2 <= lo <= hi <= self.num_cameras:
            raise ValueError(
                f"cameras_per_id={self.cameras_per_id} must satisfy 2 <= min <= max <= "
                f"num_cameras={self.num_cameras}"
            )
        if not 1 <= self.images_per_camera[0] <= self.images_per_camera[1]:
            raise ValueError(f"images_per_camera={self.images_per_camera} must satisfy 1 <= min <= max")
        if not 1 <= self.query_cameras <= lo:
            raise ValueError(f"query_cameras={self.query_cameras} must be in [1, min cameras_per_id={lo}]")
        if self.num_distractors < 0 or self.num_junk < 0 or self.family_size < 1:
            raise ValueError("num_distractors, num_junk must be >= 0 and family_size >= 1")
        if self.num_train_ids + self.num_test_ids > 9999:
            raise ValueError("at most 9999 identities (4-digit pids)")
        if self.height < 32 or self.width < 16:
            raise ValueError("images must be at least 32x16")


@dataclass(frozen=True)
class SampleInfo:
    """Metadata of one image: ``kind`` is "person", "distractor" (pid 0) or "junk" (pid -1)."""

    pid: int
    camid: int  # 0-based
    kind: str
    identity: int  # index into SyntheticReID.identities, -1 for a random (non-identity) figure
    frame: int


@dataclass
class RenderedSample:
    image: torch.Tensor  # uint8 [3, H, W]
    masks: torch.Tensor  # bool [P, H, W], visible pixels of each part
    box: torch.Tensor  # float [4] x1, y1, x2, y2 (pixel edges; x2, y2 exclusive); zeros when no person
    pid: int
    camid: int
    kind: str = "person"


@dataclass(frozen=True)
class _Camera:
    gain: tuple[float, float, float]
    offset: float
    style: int
    bg_a: tuple[float, float, float]
    bg_b: tuple[float, float, float]
    period: float
    horizon: float
    front_prob: float
    noise: float
    lowres: bool


def _muted(rng: random.Random, lo: float = 0.2, hi: float = 0.85) -> tuple[float, float, float]:
    base = rng.uniform(lo, hi)
    return tuple(min(1.0, max(0.0, base + rng.uniform(-0.18, 0.18))) for _ in range(3))


# ----------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------

# One row per drawn shape: kind (0 ellipse, 1 trapezoid), six geometry numbers, colour 1, colour 2,
# stripe pattern (fy, oy, fx, ox: parity of floor((y-oy)*fy) + floor((x-ox)*fx) picks colour 2), part.
_ROW = 1 + 6 + 3 + 3 + 4 + 1


class SyntheticReID:
    """Deterministic procedural re-ID data: metadata at construction, images on demand.

    Args:
        seed: the data seed; every image is a function of ``(seed, split, index)`` (and the config).
        config: a :class:`SyntheticReIDConfig`; keyword arguments override its fields.
    """

    part_names: tuple[str, ...] = PART_NAMES

    def __init__(self, seed: int = 0, config: SyntheticReIDConfig | None = None, **overrides: Any) -> None:
        config = config or SyntheticReIDConfig()
        if overrides:
            names = {f.name for f in fields(SyntheticReIDConfig)}
            unknown = set(overrides) - names
            if unknown:
                raise TypeError(f"unknown SyntheticReIDConfig fields: {sorted(unknown)}")
            config = SyntheticReIDConfig(**{**{n: getattr(config, n) for n in names}, **overrides})
        self.seed = int(seed)
        self.config = config
        H, W = config.height, config.width
        self.height, self.width = H, W
        # pixel-centre coordinates and index helpers of the drawing grid
        self._ys_np = np.arange(H, dtype=np.float32) + np.float32(0.5)
        self._xs_np = np.arange(W, dtype=np.float32) + np.float32(0.5)
        self._row_of_pixel = np.repeat(np.arange(H), W)  # [H*W]
        self._col_of_pixel = np.tile(np.arange(W), H)
        self._row_start = (np.arange(H) * W).reshape(1, H)
        self._shade = (1.0 - 0.22 * ((self._xs_np - W / 2) / (0.6 * W)) ** 2).astype(np.float32).reshape(1, W)
        self._noise_bank = np.random.default_rng(mix_seed(self.seed, 11)).standard_normal(
            (3, 2 * H, 2 * W), dtype=np.float32)
        self.cameras = [self._make_camera(c) for c in range(config.num_cameras)]
        self.identities: list[Identity] = []
        self._splits: dict[str, list[SampleInfo]] = {}
        self._build_metadata()

    # -- metadata ------------------------------------------------------------------------------

    def _make_camera(self, c: int) -> _Camera:
        rng = random.Random(mix_seed(self.seed, 7, c))
        n = self.config.num_cameras
        # spread the light over the cameras so that they really differ, then shuffle the order
        order = list(range(n))
        random.Random(mix_seed(self.seed, 8)).shuffle(order)
        brightness = 0.7 + 0.5 * (order[c] / max(1, n - 1))
        cast = [1.0 + rng.uniform(-0.13, 0.13) for _ in range(3)]
        gain = tuple(brightness * x for x in cast)
        return _Camera(
            gain=gain,
            offset=rng.uniform(-0.04, 0.06),
            style=c % 4 if n >= 4 else rng.randrange(4),
            bg_a=_muted(rng),
            bg_b=_muted(rng),
            period=rng.uniform(6.0, 16.0),
            horizon=rng.uniform(0.55, 0.78),
            front_prob=rng.uniform(0.25, 0.75),
            noise=rng.uniform(*self.config.noise_std),
            lowres=(n >= 6 and c == n - 1),
        )

    def _make_identities(
        self, rng: random.Random, count: int, seen: set, first_family: int
    ) -> tuple[list[list[tuple]], list[int]]:
        """``count`` new attribute sets in families (a base + siblings changing one part each)."""
        out: list[list[tuple]] = []
        families: list[int] = []
        fam = first_family
        fs = self.config.family_size
        while len(out) < count:
            while True:
                base = _sample_parts(rng)
                if tuple(base) not in seen:
                    break
            seen.add(tuple(base))
            members = [base]
            parts = rng.sample(range(len(PART_NAMES)), len(PART_NAMES))
            for j in range(min(fs, count - len(out)) - 1):
                part = parts[j % len(parts)]
                for _ in range(100):
                    sib = list(base)
                    sib[part] = _sample_part(rng, part)
                    if sib[part] != base[part] and tuple(sib) not in seen:
                        break
                else:  # pragma: no cover - vocabularies are large
                    continue
                seen.add(tuple(sib))
                members.append(sib)
            out.extend(members)
            families.extend([fam] * len(members))
            fam += 1
        return out, families

    def _assign_identities(self, rng: random.Random) -> None:
        """Draw the training and test identities (attributes, families, shuffled 1-based pids)."""
        cfg = self.config
        seen: set = set()
        train_attrs, train_fams = self._make_identities(rng, cfg.num_train_ids, seen, 0)
        test_attrs, test_fams = self._make_identities(rng, cfg.num_test_ids, seen, max(train_fams) + 1)
        n = cfg.num_train_ids + cfg.num_test_ids
        pids = rng.sample(range(1, n + 1), n)
        for i, (attrs, fam) in enumerate(zip(train_attrs + test_attrs, train_fams + test_fams)):
            self.identities.append(Identity(pids[i], fam, *attrs))
        self.train_identities = list(range(cfg.num_train_ids))
        self.test_identities = list(range(cfg.num_train_ids, n))

    def _build_metadata(self) -> None:
        cfg = self.config
        rng = random.Random(mix_seed(self.seed, 1))
        self._assign_identities(rng)

        frame = [0, 0, 0]

        def info(split: str, pid: int, cam: int, kind: str, ident: int) -> SampleInfo:
            s = _SPLIT_ID[split]
            frame[s] += rng.randint(5, 60)
            return SampleInfo(pid, cam, kind, ident, frame[s])

        train: list[SampleInfo] = []
        for i in self.train_identities:
            cams = rng.sample(range(cfg.num_cameras), rng.randint(*cfg.cameras_per_id))
            for cam in sorted(cams):
                for _ in range(rng.randint(*cfg.images_per_camera)):
                    train.append(info("train", self.identities[i].pid, cam, "person", i))
        query: list[SampleInfo] = []
        gallery: list[SampleInfo] = []
        for i in self.test_identities:
            cams = rng.sample(range(cfg.num_cameras), rng.randint(*cfg.cameras_per_id))
            pid = self.identities[i].pid
            for cam in sorted(cams[: cfg.query_cameras]):
                query.append(info("query", pid, cam, "person", i))
            for cam in sorted(cams):
                for _ in range(rng.randint(*cfg.images_per_camera)):
                    gallery.append(info("gallery", pid, cam, "person", i))
        for _ in range(cfg.num_distractors):
            gallery.append(info("gallery", 0, rng.randrange(cfg.num_cameras), "distractor", -1))
        for _ in range(cfg.num_junk):
            ident = rng.choice(self.test_identities)
            gallery.append(info("gallery", -1, rng.randrange(cfg.num_cameras), "junk", ident))
        self._splits = {"train": train, "query": query, "gallery": gallery}

    # -- public metadata API --------------------------------------------------------------------

    def samples(self, split: str) -> list[SampleInfo]:
        """Metadata of every image of a split ("train", "query" or "gallery")."""
        try:
            return self._splits[split]
        except KeyError:
            raise ValueError(f"unknown split {split!r}, expected one of {SPLITS}") from None

    def __len__(self) -> int:
        return sum(len(v) for v in self._splits.values())

    def identity_of_pid(self, pid: int) -> Identity:
        for ident in self.identities:
            if ident.pid == pid:
                return ident
        raise KeyError(pid)

    @property
    def train_pids(self) -> list[int]:
        return sorted(self.identities[i].pid for i in self.train_identities)

    @property
    def test_pids(self) -> list[int]:
        return sorted(self.identities[i].pid for i in self.test_identities)

    def dataset(self, split: str, variant: str = "labeled") -> "SyntheticReIDDataset":
        return SyntheticReIDDataset(self, split, variant)

    # -- rendering ------------------------------------------------------------------------------

    def render(
        self, split: str, index: int, variant: Literal["labeled", "detected"] = "labeled"
    ) -> RenderedSample:
        """Draw image ``index`` of ``split``. ``variant="detected"`` adds detector-like box jitter
        (a shifted / rescaled crop, as in CUHK03's detected boxes)."""
        with single_thread():
            return self._render(split, index, variant)

    def _render(self, split: str, index: int, variant: str) -> RenderedSample:
        meta = self.samples(split)[index]
        rng = random.Random(mix_seed(self.seed, _SPLIT_ID[split], index))
        cam = self.cameras[meta.camid]
        H, W = self.height, self.width
        rows: list[list[float]] = []

        # background clutter (below the person)
        n_clutter = rng.randint(4, 8) if meta.kind == "distractor" else rng.randint(1, 4)
        for _ in range(n_clutter):
            self._clutter(rng, rows, cam, H, W)

        first_person = len(rows)
        if meta.kind == "person":
            ph = H * rng.uniform(0.80, 0.95)
            y0 = rng.uniform(0.01 * H, max(0.011 * H, H - ph - 0.01 * H))
            cx = W / 2 + rng.uniform(-0.08, 0.08) * W
        elif meta.kind == "junk":
            if rng.random() < 0.5:  # zoomed-in part of a person
                ph = H * rng.uniform(1.5, 2.3)
                y0 = -rng.uniform(0.05, 0.95) * (ph - H * 0.6)
                cx = W / 2 + rng.uniform(-0.2, 0.2) * W
            else:  # person cut by the crop border
                ph = H * rng.uniform(0.8, 0.95)
                y0 = rng.uniform(0.0, 0.05 * H) + (rng.choice((-1, 1)) * rng.uniform(0.4, 0.6) * ph)
                cx = W / 2 + rng.choice((-1, 1)) * rng.uniform(0.45, 0.6) * W
        else:  # distractor: empty background or a small figure
            ph = H * rng.uniform(0.28, 0.45) if rng.random() < 0.5 else 0.0
            y0 = rng.uniform(0, H - ph) if ph else 0.0
            cx = rng.uniform(0.15, 0.85) * W
        if self.config.placement == "loose" and meta.kind == "person":
            lrng = random.Random(mix_seed(self.seed, _SPLIT_ID[split], index, 98))
            ph = H * lrng.uniform(0.5, 0.9)
            y0 = lrng.uniform(0.01 * H, H - ph - 0.01 * H)
            half = min(0.25 * ph, 0.45 * W)  # about half the body's width, arms included
            cx = lrng.uniform(half, W - half)
        if variant == "detected" and ph > 0:
            drng = random.Random(mix_seed(self.seed, _SPLIT_ID[split], index, 99))
            s = drng.uniform(0.9, 1.12)
            cx += drng.uniform(-0.12, 0.12) * W
            y0 += drng.uniform(-0.07, 0.05) * H + (1 - s) * ph / 2
            ph *= s
        if ph > 0:
            if meta.identity >= 0:
                parts = self.identities[meta.identity].parts()
            else:
                parts = tuple(_sample_parts(rng))
            front = rng.random() < cam.front_prob
            self._person(rng, rows, parts, cx, y0, ph, front)
        last_person = len(rows)

        over: list[list[float]] = []  # drawn over the person (not part of its full mask)
        if ph > 0 and meta.kind == "person" and rng.random() < self.config.occlusion_prob:
            self._occluder(rng, over, cx, y0, ph, H, W)

        return self._compose(rng, rows + over, first_person, last_person, cam, meta)

    # shapes: each appends one row -----------------------------------------------------------

    @staticmethod
    def _ellipse(rows, cx, cy, rx, ry, c1, part, c2=None, pattern=(0.0, 0.0, 0.0, 0.0)):
        rows.append([0.0, cx, cy, max(rx, 0.3), max(ry, 0.3), 0.0, 0.0, *c1, *(c2 or c1), *pattern,
                     float(part)])

    @staticmethod
    def _trap(rows, y0, y1, c0, c1, a0, a1, col, part, col2=None, pattern=(0.0, 0.0, 0.0, 0.0)):
        rows.append([1.0, y0, max(y1, y0 + 0.5), c0, c1, a0, a1, *col, *(col2 or col), *pattern, float(part)])

    def _clutter(self, rng: random.Random, rows, cam: _Camera, H: int, W: int) -> None:
        col = _muted(rng, 0.1, 0.95)
        if rng.random() < 0.5:  # the scene's own colours
            ref = cam.bg_a if rng.random() < 0.5 else cam.bg_b
            col = tuple(0.35 * c + 0.65 * r * rng.uniform(0.6, 1.3) for c, r in zip(col, ref))
        if rng.random() < 0.5:
            y0 = rng.uniform(-0.1, 0.9) * H
            h = rng.uniform(0.06, 0.35) * H
            c = rng.uniform(0, W)
            a = rng.uniform(0.05, 0.3) * W
            self._trap(rows, y0, y0 + h, c, c + rng.uniform(-0.1, 0.1) * W, a, a, col, _NOT_PERSON)
        else:
            self._ellipse(rows, rng.uniform(0, W), rng.uniform(0, H), rng.uniform(0.05, 0.3) * W,
                          rng.uniform(0.03, 0.2) * H, col, _NOT_PERSON)

    def _occluder(self, rng: random.Random, rows, cx, y0, ph, H, W) -> None:
        col = _muted(rng, 0.1, 0.9)
        if rng.random() < 0.6:  # a block in front of the legs (car, bench, bin)
            top = y0 + ph * rng.uniform(0.62, 0.82)
            c = cx + rng.uniform(-0.3, 0.3) * W
            a = rng.uniform(0.35, 0.7) * W
            self._trap(rows, top, H + 1.0, c, c, a, a, col, _NOT_PERSON)
        else:  # a block from one side (pole, passer-by)
            side = rng.choice((-1, 1))
            edge = cx + side * rng.uniform(-0.02, 0.1) * ph
            a = W
            c = edge + side * a
            top = rng.uniform(-0.1, 0.5) * H
            self._trap(rows, top, top + rng.uniform(0.5, 1.1) * H, c, c, a, a, col, _NOT_PERSON)

    def _person(self, rng: random.Random, rows, parts, cx, y0, ph, front: bool) -> None:
        (skin, hair_c, hair_s), (up_c, up_p, up_c2, sleeves), (lo_c, lo_s), (shoe_c,), (acc, acc_c) = parts

        def jit(c: tuple[float, float, float], a: float = 0.05) -> tuple[float, ...]:
            return tuple(min(1.0, max(0.0, v + rng.uniform(-a, a))) for v in c)

        skin_rgb = jit(SKIN_TONES[skin], 0.03)
        hair_rgb = jit(HAIR_COLOURS[hair_c])
        up1, up2 = jit(PALETTE[up_c]), jit(PALETTE[up_c2]) if up_c2 else None
        lo_rgb = jit(PALETTE[lo_c])
        shoe_rgb = jit(PALETTE[shoe_c])
        acc_rgb = jit(PALETTE[acc_c]) if acc_c else None

        ws = ph * rng.uniform(0.85, 1.15)  # horizontal unit (body width)
        stance = rng.uniform(-0.01, 0.06)
        swing = rng.uniform(-0.02, 0.04)
        lean = rng.uniform(-0.025, 0.025) * ws

        def Y(v: float) -> float:
            return y0 + v * ph

        def X(u: float, v: float = 0.5) -> float:  # lean: top of the body shifted by `lean`
            return cx + u * ws + lean * (0.5 - v) * 2

        # back layers: long hair, backpack seen from the front (sticks out at the sides)
        if hair_s == "long":
            self._ellipse(rows, X(0, 0.12), Y(0.12), 0.07 * ws, 0.125 * ph, hair_rgb, HEAD)
        if acc == "backpack" and front:
            self._trap(rows, Y(0.17), Y(0.44), X(0, 0.17), X(0, 0.44), 0.15 * ws, 0.15 * ws,
                       acc_rgb, ACCESSORY)

        # legs and lower body
        hip_top, knee, foot = 0.49, 0.69, 0.925
        for side in (-1, 1):
            lc0, lc1 = X(side * 0.05, hip_top), X(side * (0.05 + stance), foot)
            leg_col = lo_rgb if lo_s == "trousers" else skin_rgb
            self._trap(rows, Y(hip_top), Y(foot), lc0, lc1, 0.052 * ws, 0.042 * ws, leg_col, LOWER)
            if lo_s == "shorts":
                t = (knee - hip_top) / (foot - hip_top)
                self._trap(rows, Y(hip_top), Y(knee), lc0, lc0 + (lc1 - lc0) * t, 0.056 * ws, 0.05 * ws,
                           lo_rgb, LOWER)
        if lo_s == "skirt":
            self._trap(rows, Y(0.47), Y(0.73), X(0, 0.47), X(0, 0.73), 0.105 * ws, 0.16 * ws, lo_rgb, LOWER)
        else:
            self._trap(rows, Y(0.47), Y(0.56), X(0, 0.47), X(0, 0.56), 0.105 * ws, 0.108 * ws, lo_rgb, LOWER)
        # shoes
        for side in (-1, 1):
            self._ellipse(rows, X(side * (0.05 + stance) + side * 0.012, foot), Y(foot + 0.012),
                          0.052 * ws, 0.03 * ph, shoe_rgb, SHOES)

        # upper body: arms then torso, with the top's pattern
        if up_p == "hstripes":
            pattern = (1.0 / (0.055 * ph), Y(0.15), 0.0, 0.0)
        elif up_p == "vstripes":
            pattern = (0.0, 0.0, 1.0 / (0.045 * ws), X(0) + 0.0225 * ws)
        elif up_p == "two_tone":
            pattern = (1.0 / (0.5 * ph), Y(0.32) - 0.5 * ph, 0.0, 0.0)
        else:
            pattern = (0.0, 0.0, 0.0, 0.0)
        col2 = up2 if up_p in ("hstripes", "vstripes", "two_tone") else None
        for side in (-1, 1):
            a0 = X(side * 0.145, 0.16)
            a1 = X(side * (0.155 + swing), 0.5)
            if sleeves == "long":
                self._trap(rows, Y(0.16), Y(0.50), a0, a1, 0.036 * ws, 0.03 * ws, up1, UPPER, col2, pattern)
            else:
                self._trap(rows, Y(0.16), Y(0.50), a0, a1, 0.03 * ws, 0.026 * ws, skin_rgb, UPPER)
                t = 0.14 / 0.34
                self._trap(rows, Y(0.16), Y(0.30), a0, a0 + (a1 - a0) * t, 0.038 * ws, 0.036 * ws,
                           up1, UPPER, col2, pattern)
            self._ellipse(rows, a1, Y(0.515), 0.03 * ws, 0.025 * ph, skin_rgb, UPPER)
        self._trap(rows, Y(0.15), Y(0.52), X(0, 0.15), X(0, 0.52), 0.125 * ws, 0.105 * ws,
                   up1, UPPER, col2, pattern)
        if up_p == "logo" and front:
            self._trap(rows, Y(0.23), Y(0.31), X(0.02, 0.23), X(0.02, 0.31), 0.04 * ws, 0.04 * ws, up2, UPPER)
        if up_p == "logo" and not front:
            self._trap(rows, Y(0.2), Y(0.24), X(0, 0.2), X(0, 0.24), 0.1 * ws, 0.1 * ws, up2, UPPER)

        # accessories over the body
        if acc == "backpack":
            if front:  # straps
                for side in (-1, 1):
                    self._trap(rows, Y(0.15), Y(0.36), X(side * 0.075, 0.15), X(side * 0.08, 0.36),
                               0.014 * ws, 0.014 * ws, acc_rgb, ACCESSORY)
            else:
                self._trap(rows, Y(0.18), Y(0.46), X(0, 0.18), X(0, 0.46), 0.11 * ws, 0.115 * ws,
                           acc_rgb, ACCESSORY)
        elif acc == "bag":
            side = rng.choice((-1, 1))
            self._trap(rows, Y(0.15), Y(0.46), X(-side * 0.09, 0.15), X(side * 0.12, 0.46),
                       0.013 * ws, 0.013 * ws, acc_rgb, ACCESSORY)
            self._trap(rows, Y(0.42), Y(0.58), X(side * 0.15, 0.42), X(side * 0.15, 0.58),
                       0.06 * ws, 0.065 * ws, acc_rgb, ACCESSORY)

        # head: hair cap, face (front) or hair (back)
        if hair_s != "bald":
            self._ellipse(rows, X(0, 0.07), Y(0.07), 0.056 * ws, 0.07 * ph, hair_rgb, HEAD)
            face_rgb = skin_rgb if front else hair_rgb
            self._ellipse(rows, X(0, 0.09), Y(0.092), 0.048 * ws, 0.055 * ph, face_rgb, HEAD)
        else:
            self._ellipse(rows, X(0, 0.08), Y(0.08), 0.052 * ws, 0.068 * ph, skin_rgb, HEAD)
        if acc == "hat":
            self._trap(rows, Y(-0.005), Y(0.04), X(0, 0.0), X(0, 0.04), 0.045 * ws, 0.058 * ws,
                       acc_rgb, ACCESSORY)
            self._trap(rows, Y(0.035), Y(0.05), X(0.01, 0.035), X(0.01, 0.05), 0.075 * ws, 0.075 * ws,
                       acc_rgb, ACCESSORY)

    # composition ----------------------------------------------------------------------------

    def _background(self, rng: random.Random, cam: _Camera) -> np.ndarray:
        H, W = self.height, self.width
        ys, xs = self._ys_np.reshape(H, 1), self._xs_np.reshape(1, W)
        a = np.array([min(1.0, max(0.0, v + rng.uniform(-0.05, 0.05))) for v in cam.bg_a], np.float32)
        b = np.array([min(1.0, max(0.0, v + rng.uniform(-0.05, 0.05))) for v in cam.bg_b], np.float32)
        period = cam.period * rng.uniform(0.85, 1.15)
        horizon = (cam.horizon + rng.uniform(-0.06, 0.06)) * H
        if cam.style == 0:  # wall / floor
            f = np.broadcast_to((ys > horizon) * np.float32(0.9) + ys * np.float32(0.1 / H), (H, W))
        elif cam.style == 1:  # vertical gradient
            f = np.broadcast_to(ys * np.float32(1.0 / H), (H, W))
        elif cam.style == 2:  # horizontal bands (building)
            f = np.broadcast_to(np.floor((ys + np.float32(rng.uniform(0, period))) / np.float32(period)) % 2, (H, W))
        else:  # columns over a floor
            cols = np.floor((xs + np.float32(rng.uniform(0, period))) / np.float32(period)) % 2 * np.float32(0.7)
            f = np.where(ys > horizon, np.float32(1.0), cols)
        return a.reshape(3, 1, 1) + (b - a).reshape(3, 1, 1) * f  # [3, H, W]

    def _paint(self, top: np.ndarray, t: np.ndarray, offset: int) -> None:
        """Paint the 1-based level (+ ``offset``) of each shape of rows ``t`` into ``top`` [H*W] (max wins).

        Ellipses ``((x-cx)/rx)^2 + ((y-cy)/ry)^2 <= 1`` and trapezoids ``y0 <= y < y1, |x - c(y)| <= a(y)``
        (centre and half width linear in y) are both, row by row, an interval ``|x - c(y)| <= a(y)``:
        the inequalities are evaluated on the row coordinates of all shapes at once, and the covered
        column intervals are scattered into the image, so the cost is the covered area, not shapes x pixels.
        """
        H, W = self.height, self.width
        n = t.shape[0]
        ys = self._ys_np.reshape(1, H)
        g = t[:, 1:7].T[:, :, None]  # [6, n, 1]
        is_ell = (t[:, 0] == 0)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            e = 1.0 - np.square((ys - g[1]) / g[3])
            e_half = np.where(e < 0, -1.0, g[2] * np.sqrt(np.maximum(e, 0.0)))
            tt = np.clip((ys - g[0]) / (g[1] - g[0]), 0.0, 1.0)
        t_centre = g[2] + (g[3] - g[2]) * tt
        t_half = np.where((ys < g[0]) | (ys >= g[1]), -1.0, g[4] + (g[5] - g[4]) * tt)
        centre = np.where(is_ell, g[0], t_centre)
        half = np.where(is_ell, e_half, t_half)
        # pixel j (centre j + 0.5) is inside when c - a <= j + 0.5 <= c + a
        lo = np.maximum(np.ceil(centre - half - 0.5), 0.0)
        hi = np.minimum(np.floor(centre + half - 0.5), W - 1.0)
        lens = np.where(half < 0, 0.0, np.maximum(hi - lo + 1.0, 0.0)).astype(np.int64).ravel()  # [n*H]
        total = int(lens.sum())
        if total == 0:
            return
        starts = (lo.astype(np.int64) + self._row_start).ravel()
        first = np.cumsum(lens) - lens
        idx = np.arange(total) + np.repeat(starts - first, lens)
        level = np.repeat(np.repeat(np.arange(offset + 1, offset + 1 + n), H), lens)
        # shapes are listed bottom to top, so the highest level wins
        np.maximum.at(top, idx, level)

    def _compose(self, rng: random.Random, rows, first_person, last_person, cam: _Camera, meta: SampleInfo):
        H, W = self.height, self.width
        P = len(PART_NAMES)
        bg = self._background(rng, cam)
        L = len(rows)
        full = None
        if L:
            t = np.array(rows, dtype=np.float32)  # [L, _ROW]
            top = np.zeros(H * W, dtype=np.int64)
            self._paint(top, t[:last_person], 0)
            if last_person > first_person:
                # the person's shapes come after the clutter: its full (unoccluded) mask
                full = (top > first_person).reshape(H, W)
            if L > last_person:  # occluders over the person
                self._paint(top, t[last_person:], last_person)
            tab = np.concatenate([np.zeros((1, _ROW), np.float32), t])  # row 0 = background
            colours = np.concatenate([tab[:, 7:10], tab[:, 10:13]]).T  # [3, 2(L+1)]
            if tab[:, 13].any() or tab[:, 15].any():
                # stripe patterns: parity of floor((y-oy) fy) + floor((x-ox) fx) of the top shape
                py = np.floor((self._ys_np.reshape(1, H) - tab[:, 14:15]) * tab[:, 13:14])  # [L+1, H]
                px = np.floor((self._xs_np.reshape(1, W) - tab[:, 16:17]) * tab[:, 15:16])  # [L+1, W]
                parity = py.ravel()[top * H + self._row_of_pixel] + px.ravel()[top * W + self._col_of_pixel]
                sel = top + (parity % 2 > 0.5) * (L + 1)
            else:
                sel = top
            colour = colours[:, sel].reshape(3, H, W)
            img = np.where((top > 0).reshape(1, H, W), colour, bg)
            part_lut = tab[:, 17].astype(np.int64)
            part_lut[0] = _NOT_PERSON
            partmap = part_lut[top].reshape(H, W)
        else:
            img = bg
            partmap = np.full((H, W), _NOT_PERSON, dtype=np.int64)

        # soft body shading, camera light and cast, per-image exposure, sensor noise, to uint8
        exposure = rng.uniform(0.9, 1.1)
        gain = np.array([255.0 * gch * exposure for gch in cam.gain], np.float32).reshape(3, 1, 1)
        img = img * (np.where(partmap >= 0, self._shade, np.float32(1.0)) * gain)
        oy, ox = rng.randrange(H), rng.randrange(W)
        noise_std = 255.0 * cam.noise * rng.uniform(0.7, 1.3)
        img += self._noise_bank[:, oy:oy + H, ox:ox + W] * np.float32(noise_std) + np.float32(255.0 * cam.offset + 0.5)
        if cam.lowres:
            img = img.reshape(3, H // 2, 2, W // 2, 2).mean((2, 4)).repeat(2, 1).repeat(2, 2)
        image = torch.from_numpy(np.clip(img, 0.0, 255.0).astype(np.uint8))

        masks_out = torch.from_numpy(partmap[None] == np.arange(P).reshape(P, 1, 1))
        box = torch.zeros(4)
        if full is not None:
            rows_any = np.flatnonzero(full.any(1))
            if rows_any.size:
                cols_any = np.flatnonzero(full.any(0))
                box = torch.tensor([float(cols_any[0]), float(rows_any[0]), float(cols_any[-1]) + 1.0,
                                    float(rows_any[-1]) + 1.0])
        return RenderedSample(image=image, masks=masks_out, box=box, pid=meta.pid, camid=meta.camid,
                              kind=meta.kind)


class SyntheticReIDDataset(Dataset):
    """One split of a :class:`SyntheticReID` as a map-style Dataset.

    Items are dicts ``{"image": tv_tensors.Image uint8 [3,H,W], "pid": int, "camid": int (0-based),
    "box": tv_tensors.BoundingBoxes [1,4] XYXY, "mask": tv_tensors.Mask uint8 [P,H,W]}``. An item
    may also be requested as ``(index, sample_seed)`` (what :class:`~datamodules.samplers.PKSampler`
    yields); the image itself does not depend on the sample seed.
    """

    def __init__(self, generator: SyntheticReID, split: str, variant: str = "labeled") -> None:
        self.generator = generator
        self.split = split
        self.variant = variant
        self.infos = generator.samples(split)
        self.part_names = generator.part_names

    def __len__(self) -> int:
        return len(self.infos)

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.infos]

    @property
    def camids(self) -> list[int]:
        return [s.camid for s in self.infos]

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        from torchvision import tv_tensors

        index = item[0] if isinstance(item, tuple) else item
        with single_thread():
            s = self.generator.render(self.split, int(index), self.variant)
            H, W = s.image.shape[-2:]
            masks = s.masks.to(torch.uint8)
        return {
            "image": tv_tensors.Image(s.image),
            "pid": s.pid,
            "camid": s.camid,
            "box": tv_tensors.BoundingBoxes(s.box.view(1, 4), format="XYXY", canvas_size=(H, W)),
            "mask": tv_tensors.Mask(masks),
        }


# ----------------------------------------------------------------------------------------------
# Writing the real layouts
# ----------------------------------------------------------------------------------------------

_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
LAYOUTS = ("market1501", "dukemtmc", "cuhk03")


def _market_name(info: SampleInfo, index: int) -> str:
    pid = "-1" if info.pid == -1 else f"{info.pid:04d}"
    seq = 1 + (info.frame // 997) % 6
    return f"{pid}_c{info.camid + 1}s{seq}_{info.frame:06d}_{1 + index % 8:02d}.jpg"


def _duke_name(info: SampleInfo, index: int) -> str:
    pid = "-1" if info.pid == -1 else f"{info.pid:04d}"
    return f"{pid}_c{info.camid + 1}_f{info.frame:07d}.jpg"


def write_reid_layout(
    root: str | Path,
    layout: Literal["market1501", "dukemtmc", "cuhk03"] = "market1501",
    generator: SyntheticReID | None = None,
    *,
    seed: int = 0,
    scale: str | float = "default",
    workers: int = 1,
    progress: bool = True,
    write_json: bool = True,
    jpeg_quality: int = 92,
    **config: Any,
) -> Path:
    """Write the synthetic re-ID data to ``root`` in a real data set's on-disk layout.

    * ``"market1501"``: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with names like
      ``0002_c1s1_000451_03.jpg`` (junk ``-1_c1s1_...``, distractors ``0000_...``);
    * ``"dukemtmc"``: the same folders with names like ``0001_c2_f0046182.jpg``;
    * ``"cuhk03"``: ``labeled/`` and ``detected/`` (detector-like jittered crops), each with the three
      folders and names like ``0001_c1_1.png``; no distractors or junk (``root`` plays the role of
      the ``cuhk03-np`` folder).

    Without a ``generator`` one is built from ``seed`` and ``config`` (fields of
    :class:`SyntheticReIDConfig`; for ``cuhk03`` the defaults are 2 cameras, no distractors, no junk).
    ``scale="real"`` instead draws the real data set's sizes (identities, images per split, queries,
    distractors, junk: :mod:`datamodules.real_sizes`), a fraction such as ``0.05`` that share of them;
    ``config`` may then only set the image size (``height``, ``width``). ``workers`` > 1 draws the
    images on that many processes (the files are the same). With ``write_json`` a
    ``synthetic_annotations.json`` (relative path -> pid, camid, box) is written next to the folders.
    Returns ``root``.
    """
    from .image_writer import ImageJob, write_images

    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}, expected one of {LAYOUTS}")
    omit: dict = {}
    if scale != "default":
        if generator is not None:
            raise TypeError("scale builds the generator from the real sizes: pass no generator with it")
        from .real_sizes import real_size_reid

        generator, omit = real_size_reid(layout, scale, seed=seed, **config)
    elif generator is None:
        if layout == "cuhk03":
            defaults = dict(num_cameras=2, cameras_per_id=(2, 2), query_cameras=2, num_distractors=0,
                            num_junk=0)
            config = {**defaults, **config}
        generator = SyntheticReID(seed=seed, **config)
    elif config:
        raise TypeError("pass either a generator or config fields, not both")
    root = Path(root)
    variants = ("labeled", "detected") if layout == "cuhk03" else ("labeled",)
    jobs: list[ImageJob] = []
    infos: list[tuple[str, int, SampleInfo]] = []
    for variant in variants:
        base = root / variant if layout == "cuhk03" else root
        for split in SPLITS:
            folder = base / _FOLDERS[split]
            folder.mkdir(parents=True, exist_ok=True)
            counters: dict[tuple[int, int], int] = {}
            omitted = omit.get((variant, split), ())
            for i, info in enumerate(generator.samples(split)):
                if (layout == "cuhk03" and info.pid <= 0) or i in omitted:
                    continue
                if layout == "market1501":
                    name, fmt = _market_name(info, i), "jpeg"
                elif layout == "dukemtmc":
                    name, fmt = _duke_name(info, i), "jpeg"
                else:
                    key = (info.pid, info.camid)
                    counters[key] = counters.get(key, 0) + 1
                    name, fmt = f"{info.pid:04d}_c{info.camid + 1}_{counters[key]}.png", "png"
                jobs.append(ImageJob(str((folder / name).relative_to(root)), (split, i, variant), fmt))
                infos.append((split, i, info))
    boxes = write_images(root, type(generator).render, generator, jobs, jpeg_quality=jpeg_quality,
                         workers=workers, progress=progress, desc=f"writing synthetic {layout}")
    if write_json:
        annotations = {job.path: {"pid": info.pid, "camid": info.camid, "split": split, "index": i,
                                  "box": [round(float(v), 2) for v in box]}
                       for job, (split, i, info), box in zip(jobs, infos, boxes)}
        meta = {"layout": layout, "seed": generator.seed, "part_names": list(PART_NAMES),
                "box_format": "xyxy pixels at native size", "images": annotations}
        (root / "synthetic_annotations.json").write_text(json.dumps(meta))
    return root


def benchmark(n: int = 500, seed: int = 0) -> float:
    """Images per second of :meth:`SyntheticReID.render` on the current thread settings."""
    import time

    gen = SyntheticReID(seed=seed)
    m = len(gen.samples("train"))
    for i in range(20):
        gen.render("train", i % m)
    t0 = time.perf_counter()
    for i in range(n):
        gen.render("train", i % m)
    return n / (time.perf_counter() - t0)


if __name__ == "__main__":  # pragma: no cover
    print(f"{benchmark():.0f} images/s")
