"""The synthetic re-ID set: its configuration, metadata (identities, cameras, splits) and rendering.

:class:`SyntheticReID` draws the identities and the image list of every split at construction and
renders an image on demand, deterministically per ``(seed, split, index)``: people from
:mod:`~datamodules.synthetic.people`, painted by :class:`~datamodules.synthetic.canvas.Canvas`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from ..seeding import mix_seed, single_thread
from .canvas import Canvas, make_camera
from .common import target_item, with_overrides
from .people import (
    PART_NAMES, Identity, _sample_part, _sample_parts, discriminative_parts, draw_clutter, draw_occluder, draw_person,
)

__all__ = ["SPLITS", "SampleInfo", "RenderedSample", "SyntheticReIDConfig", "SyntheticReID", "SyntheticReIDDataset"]

SPLITS: tuple[str, ...] = ("train", "query", "gallery")
_SPLIT_ID = {"train": 0, "query": 1, "gallery": 2}



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


class SyntheticReID:
    """Deterministic procedural re-ID data: metadata at construction, images on demand.

    Args:
        seed: the data seed; every image is a function of ``(seed, split, index)`` (and the config).
        config: a :class:`SyntheticReIDConfig`; keyword arguments override its fields.

    Attributes:
        evidence: bool ``[len(identities), P]``, the parts in which each identity differs from at
            least one sibling (:func:`~datamodules.synthetic.people.discriminative_parts`).
            Families never mix training and test identities, and every test identity has both
            query and gallery images, so a query's evidence is what separates it from the gallery
            identities of its family.
        evidence_required: the same with ``sole=True``: the parts that are the *only* difference
            to some sibling (a model has to see each of them to tell the identity from every
            sibling). In a full family (``family_size`` 5) every member differs from some sibling in
            the same 4 parts (``evidence``), while a sibling's required part is the one it changed
            and the base identity's are the siblings' changed parts.
    """

    part_names: tuple[str, ...] = PART_NAMES

    def __init__(self, seed: int = 0, config: SyntheticReIDConfig | None = None, **overrides: Any) -> None:
        config = with_overrides(SyntheticReIDConfig, config, overrides)
        self.seed = int(seed)
        self.config = config
        self.height, self.width = config.height, config.width
        self.canvas = Canvas(config.height, config.width, self.seed)
        self.cameras = [make_camera(self.seed, c, config) for c in range(config.num_cameras)]
        self.identities: list[Identity] = []
        self._splits: dict[str, list[SampleInfo]] = {}
        self._build_metadata()

    # -- metadata ------------------------------------------------------------------------------

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
        self.evidence = discriminative_parts(self.identities)
        self.evidence_required = discriminative_parts(self.identities, sole=True)

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

    @property
    def train_pids(self) -> list[int]:
        return sorted(self.identities[i].pid for i in self.train_identities)

    @property
    def test_pids(self) -> list[int]:
        return sorted(self.identities[i].pid for i in self.test_identities)

    def dataset(self, split: str, variant: str = "labeled", cache: bool = False) -> "SyntheticReIDDataset":
        return SyntheticReIDDataset(self, split, variant, cache=cache)

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
            draw_clutter(rng, rows, cam, H, W)

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
            draw_person(rng, rows, parts, cx, y0, ph, front)
        last_person = len(rows)

        over: list[list[float]] = []  # drawn over the person (not part of its full mask)
        if ph > 0 and meta.kind == "person" and rng.random() < self.config.occlusion_prob:
            draw_occluder(rng, over, cx, y0, ph, H, W)

        image, masks, box = self.canvas.compose(rng, rows + over, first_person, last_person, cam)
        return RenderedSample(image=image, masks=masks, box=box, pid=meta.pid, camid=meta.camid, kind=meta.kind)


class SyntheticReIDDataset(Dataset):
    """One split of a :class:`SyntheticReID` as a map-style Dataset.

    Items are dicts ``{"image": tv_tensors.Image uint8 [3,H,W], "pid": int, "camid": int (0-based),
    "evidence": bool [P], "evidence_required": bool [P], "box": tv_tensors.BoundingBoxes [1,4] XYXY,
    "mask": tv_tensors.Mask uint8 [P,H,W]}``: the evidence vectors are those of the identity drawn
    (:attr:`SyntheticReID.evidence`, one row per item in :attr:`evidence` / :attr:`evidence_required`;
    junk is a cut image of a test identity, a distractor has none set). An item may also be
    requested as ``(index, sample_seed)`` (what :class:`~datamodules.samplers.PKSampler` yields); the
    image itself does not depend on the sample seed. With ``cache`` rendered images are kept in
    memory (per process: a persistent data-loader worker renders each image once per run).
    """

    def __init__(self, generator: SyntheticReID, split: str, variant: str = "labeled", cache: bool = False) -> None:
        self.generator = generator
        self.split = split
        self.variant = variant
        self.cache = cache
        self._cache: dict[int, RenderedSample] = {}
        self.infos = generator.samples(split)
        self.part_names = generator.part_names
        identity = torch.tensor([s.identity for s in self.infos], dtype=torch.long).view(-1, 1)
        drawn = identity >= 0  # [n, 1]; -1: a random figure (distractor)
        self.evidence = generator.evidence[identity.clamp_min(0).view(-1)] & drawn
        self.evidence_required = generator.evidence_required[identity.clamp_min(0).view(-1)] & drawn

    def __len__(self) -> int:
        return len(self.infos)

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.infos]

    @property
    def camids(self) -> list[int]:
        return [s.camid for s in self.infos]

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index = int(item[0] if isinstance(item, tuple) else item)
        s = self._cache.get(index) if self.cache else None
        if s is None:
            s = self.generator.render(self.split, index, self.variant)
            if self.cache:
                self._cache[index] = s
        return target_item(s.image, s.box, s.masks, pid=s.pid, camid=s.camid, evidence=self.evidence[index].clone(),
                           evidence_required=self.evidence_required[index].clone())
