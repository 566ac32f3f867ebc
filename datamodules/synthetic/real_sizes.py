"""The sizes of the real data sets, and synthetic generators that draw exactly those sizes.

The layout writers take ``scale="real"`` (or a fraction such as ``0.05``) and come here for the
generator: :func:`real_size_reid` for Market-1501, DukeMTMC-reID, CUHK03-NP and MSMT17,
:func:`real_size_classes` for miniImageNet and CUB-200-2011. ``"real"`` gives every count of the
tables below exactly (:func:`reid_counts` / :func:`class_counts` count what a writer will write, from
the metadata, without drawing an image). A fraction scales every count and rounds it, raising the
few that would leave an identity, camera or class without images to the least that works.

Only the layout writers (``scale=...``), the real-size rehearsal (``bench/real_scale*.py``) and its
test use it; no data module imports it.

Re-ID: :class:`RealSizeReID` is a :class:`~datamodules.synthetic.SyntheticReID` whose metadata hits
given totals: identities get ``cameras_per_id`` cameras at random, each (identity, camera) at least
one image and the rest of the split's total spread at random over them; a query identity gets
``ceil`` or ``floor`` of queries / identities query images, one per camera, and at least as many
cameras, so every query has gallery images in another camera. CUHK03-NP's two box variants differ by
a few images: the metadata is drawn for the larger count of each split and the other variant leaves
out that many images (:func:`real_size_reid` returns them), never the last of an (identity, camera).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Mapping

from ..seeding import mix_seed
from ..split_rules import cub_few_shot_split
from .objects import SyntheticClasses
from .reid import SPLITS, SampleInfo, SyntheticReID

__all__ = [
    "ReIDSizes",
    "ClassSizes",
    "REID_SIZES",
    "CLASS_SIZES",
    "parse_scale",
    "RealSizeReID",
    "real_size_reid",
    "real_size_classes",
    "cub_images_per_class",
    "reid_counts",
    "reid_targets",
    "class_counts",
]

# every field of SyntheticReIDConfig / SyntheticClassesConfig that a real-size generator may override
_IMAGE_FIELDS = frozenset({"height", "width", "occlusion_prob", "noise_std", "placement", "family_size"})
#: layouts whose files hold persons only: the writers skip the generator's distractors and junk
PERSONS_ONLY = ("cuhk03", "msmt17")
_CLASS_IMAGE_FIELDS = frozenset({"height", "width", "object_size", "aspect", "clutter", "clutter_size",
                                 "colour_jitter", "gain", "noise_std"})


@dataclass(frozen=True)
class ReIDSizes:
    """The sizes of a re-ID data set. ``gallery_images`` counts distractors (pid 0) and junk (pid -1);
    ``variants`` (CUHK03-NP) lists ``(name, train images, gallery images)`` per box variant;
    ``val_images`` (MSMT17) are the training images its ``list_val.txt`` names (of ``train_images``)."""

    name: str
    train_ids: int
    train_images: int
    test_ids: int
    query_ids: int
    query_images: int
    gallery_images: int
    distractors: int = 0
    junk: int = 0
    cameras: int = 6
    cameras_per_id: tuple[int, int] = (2, 6)
    variants: tuple[tuple[str, int, int], ...] = (("labeled", 0, 0),)
    val_images: int = 0

    def variant_sizes(self) -> dict[str, tuple[int, int]]:
        """``variant -> (train images, gallery images)``."""
        return {v: (t or self.train_images, g or self.gallery_images) for v, t, g in self.variants}

    def scaled(self, fraction: float) -> "ReIDSizes":
        """Every count times ``fraction`` (rounded), raised where too few images would remain."""
        if fraction == 1.0:
            return self

        def r(x: int, least: int = 0) -> int:
            return max(least, round(x * fraction))

        train_ids, query_ids = r(self.train_ids, 2), r(self.query_ids, 2)
        test_ids = query_ids + r(self.test_ids - self.query_ids)
        most = self.cameras_per_id[1]
        queries = min(max(r(self.query_images), query_ids), query_ids * self.cameras)
        distractors, junk = r(self.distractors), r(self.junk)

        def train(n: int) -> int:
            return max(r(n), train_ids * most)

        def gallery(n: int) -> int:
            return max(r(n - self.distractors - self.junk), test_ids * most) + distractors + junk

        variants = tuple((v, train(t or self.train_images), gallery(g or self.gallery_images))
                         for v, t, g in self.variants)
        return replace(self, train_ids=train_ids, train_images=max(t for _, t, _ in variants),
                       test_ids=test_ids, query_ids=query_ids, query_images=queries,
                       gallery_images=max(g for _, _, g in variants), distractors=distractors, junk=junk,
                       variants=variants, val_images=r(self.val_images))


@dataclass(frozen=True)
class ClassSizes:
    """The sizes of a class data set: images of each class (``images_per_class`` or ``per_class``
    drawn to add up to ``halves``, the images of the first and second half of the classes)."""

    name: str
    classes: int
    images: int
    splits: tuple[int, int, int]
    images_per_class: int
    halves: tuple[int, int] | None = None
    least_per_class: int = 1
    #: a fraction never leaves a class fewer images than this (5 shots + 15 queries)
    least_when_scaled: int = 20


REID_SIZES: Mapping[str, ReIDSizes] = MappingProxyType({
    # Zheng et al. 2015: 751 / 750 ids; the gallery holds 2,793 distractors and 3,819 junk images
    "market1501": ReIDSizes("market1501", 751, 12936, 750, 750, 3368, 19732, distractors=2793, junk=3819,
                            cameras=6, cameras_per_id=(2, 6)),
    # Zheng et al. 2017: 702 query ids, the gallery adds 408 ids that have no query
    "dukemtmc": ReIDSizes("dukemtmc", 702, 16522, 1110, 702, 2228, 17661, cameras=8, cameras_per_id=(2, 6)),
    # Zhong et al. 2017 (CUHK03-NP, 767 / 700 split): two cameras, one query per identity and camera
    "cuhk03": ReIDSizes("cuhk03", 767, 7368, 700, 700, 1400, 5332, cameras=2, cameras_per_id=(2, 2),
                        variants=(("labeled", 7368, 5328), ("detected", 7365, 5332))),
    # Wei et al. 2018: 15 cameras; 1,041 training ids (list_train 30,248 + list_val 2,373 images), 3,060
    # test ids, all with queries; how many cameras an identity crosses is not published (any 2 to 15 here)
    "msmt17": ReIDSizes("msmt17", 1041, 32621, 3060, 3060, 11659, 82161, cameras=15, cameras_per_id=(2, 15),
                        val_images=2373),
})

CLASS_SIZES: Mapping[str, ClassSizes] = MappingProxyType({
    # Vinyals et al. / Ravi & Larochelle: 100 classes x 600 images, 64 / 16 / 20 classes
    "miniimagenet": ClassSizes("miniimagenet", 100, 60000, (64, 16, 20), 600, least_per_class=600),
    # Wah et al. 2011: 200 classes, 11,788 images (41-60 a class); classes 1-100 5,864, 101-200 5,924
    "cub": ClassSizes("cub", 200, 11788, (100, 50, 50), 60, halves=(5864, 5924), least_per_class=41),
})


def parse_scale(scale: str | float) -> float:
    """``"real"`` -> 1.0; a fraction in (0, 1] (a number or its text) -> itself."""
    if scale == "real":
        return 1.0
    try:
        fraction = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be 'default', 'real' or a fraction in (0, 1], got {scale!r}") from None
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"a scale fraction must be in (0, 1], got {fraction}")
    return fraction


def _check_overrides(overrides: Mapping[str, Any], allowed: frozenset) -> None:
    bad = set(overrides) - allowed
    if bad:
        raise TypeError(f"a real-size generator sets its own counts; it accepts only {sorted(allowed)}, "
                        f"got {sorted(bad)}")


def _spread(rng: random.Random, total: int, slots: int) -> list[int]:
    """``slots`` counts >= 1 adding up to ``total``: the extra images spread at random (largest remainder)."""
    if slots < 1 or total < slots:
        raise ValueError(f"cannot spread {total} images over {slots} (identity, camera) pairs")
    weights = [rng.uniform(0.3, 1.7) for _ in range(slots)]
    extra, norm = total - slots, sum(weights)
    shares = [extra * w / norm for w in weights]
    counts = [1 + int(s) for s in shares]
    left = total - sum(counts)
    for i in sorted(range(slots), key=lambda j: int(shares[j]) - shares[j])[:left]:
        counts[i] += 1
    return counts


class RealSizeReID(SyntheticReID):
    """A :class:`SyntheticReID` with exactly the identities and images of ``sizes`` (see the module).

    Args:
        sizes: the counts (:data:`REID_SIZES` or :meth:`ReIDSizes.scaled`).
        seed: the data seed.
        overrides: image fields of :class:`~datamodules.synthetic.SyntheticReIDConfig` (``height``,
            ``width``, ...); the counts come from ``sizes``.
    """

    def __init__(self, sizes: ReIDSizes, seed: int = 0, **overrides: Any) -> None:
        _check_overrides(overrides, _IMAGE_FIELDS)
        self.sizes = sizes
        counts = dict(num_train_ids=sizes.train_ids, num_test_ids=sizes.test_ids, num_cameras=sizes.cameras,
                      cameras_per_id=sizes.cameras_per_id, query_cameras=sizes.cameras_per_id[0],
                      num_distractors=sizes.distractors, num_junk=sizes.junk)
        super().__init__(seed, **counts, **overrides)

    def _build_metadata(self) -> None:
        cfg, sz = self.config, self.sizes
        rng = random.Random(mix_seed(self.seed, 1))
        self._assign_identities(rng)
        frame = {s: 0 for s in SPLITS}

        def info(split: str, ident: int, cam: int, kind: str = "person",
                 pid: int | None = None) -> SampleInfo:
            frame[split] += rng.randint(1, 50)  # keeps Market's 6-digit frame numbers
            pid = self.identities[ident].pid if pid is None else pid
            return SampleInfo(pid, cam, kind, ident, frame[split])

        def cameras(least: int = 0) -> list[int]:
            k = max(rng.randint(*cfg.cameras_per_id), least)
            return rng.sample(range(cfg.num_cameras), k)

        slots = [(i, cam) for i in self.train_identities for cam in sorted(cameras())]
        train_total = max(t for t, _ in sz.variant_sizes().values())
        counts = _spread(rng, train_total, len(slots))
        train = [info("train", i, cam) for (i, cam), c in zip(slots, counts) for _ in range(c)]
        base, more = divmod(sz.query_images, sz.query_ids)
        per_query = [base + 1] * more + [base] * (sz.query_ids - more)
        rng.shuffle(per_query)
        query: list[SampleInfo] = []
        slots = []
        for j, i in enumerate(self.test_identities):
            q = per_query[j] if j < sz.query_ids else 0
            cams = cameras(q)
            query.extend(info("query", i, cam) for cam in sorted(cams[:q]))
            slots.extend((i, cam) for cam in sorted(cams))
        persons = max(g for _, g in sz.variant_sizes().values()) - sz.distractors - sz.junk
        counts = _spread(rng, persons, len(slots))
        gallery = [info("gallery", i, cam) for (i, cam), c in zip(slots, counts) for _ in range(c)]
        gallery += [info("gallery", -1, rng.randrange(cfg.num_cameras), "distractor", 0)
                    for _ in range(sz.distractors)]
        for _ in range(sz.junk):
            ident = rng.choice(self.test_identities)
            gallery.append(info("gallery", ident, rng.randrange(cfg.num_cameras), "junk", -1))
        self._splits = {"train": train, "query": query, "gallery": gallery}


def _omissions(gen: RealSizeReID, seed: int) -> dict[tuple[str, str], frozenset[int]]:
    """Images each variant leaves out to reach its own counts (never the last of an identity and camera)."""
    out: dict[tuple[str, str], frozenset[int]] = {}
    sizes = gen.sizes.variant_sizes()
    for split, pick in (("train", 0), ("gallery", 1)):
        infos = gen.samples(split)
        seen: set[tuple[int, int]] = set()
        spare = []  # every image but the first of its (pid, camera)
        for i, s in enumerate(infos):
            key = (s.pid, s.camid)
            if s.pid > 0 and key in seen:
                spare.append(i)
            seen.add(key)
        for v, (variant, counts) in enumerate(sizes.items()):
            drop = len(infos) - counts[pick]
            if drop > len(spare):
                raise ValueError(f"cannot leave {drop} {split} images out of {gen.sizes.name} {variant}")
            if drop:
                rng = random.Random(mix_seed(seed, 0x0417, v, pick))
                out[(variant, split)] = frozenset(rng.sample(spare, drop))
    return out


def real_size_reid(layout: str, scale: str | float = "real", seed: int = 0,
                   **overrides: Any) -> tuple[RealSizeReID, dict[tuple[str, str], frozenset[int]]]:
    """The generator of a re-ID layout at ``scale`` and the ``(variant, split) -> indices`` to leave out."""
    if layout not in REID_SIZES:
        raise ValueError(f"no real sizes for {layout!r}, expected one of {sorted(REID_SIZES)}")
    gen = RealSizeReID(REID_SIZES[layout].scaled(parse_scale(scale)), seed=seed, **overrides)
    return gen, _omissions(gen, seed)


def cub_images_per_class(sizes: ClassSizes, seed: int = 0) -> list[int]:
    """Images of each class adding up to ``sizes.halves``: one class of each half at the least count,
    the rest of the shortfall from the full count taken from classes at random."""
    assert sizes.halves is not None
    half = sizes.classes // 2
    rng = random.Random(mix_seed(seed, 0xCB))
    out: list[int] = []
    for total, n in zip(sizes.halves, (half, sizes.classes - half)):
        counts = [sizes.images_per_class] * n
        short = n * sizes.images_per_class - total
        room = sizes.images_per_class - sizes.least_per_class
        if not 0 <= short <= n * room:
            raise ValueError(f"{n} classes of {sizes.least_per_class}-{sizes.images_per_class} images "
                             f"cannot add up to {total}")
        if short >= room:
            first = rng.randrange(n)
            counts[first], short = sizes.least_per_class, short - room
        while short:
            c = rng.randrange(n)
            d = min(short, rng.randint(1, room), counts[c] - sizes.least_per_class)
            counts[c] -= d
            short -= d
        out.extend(counts)
    return out


def real_size_classes(kind: str, scale: str | float = "real", seed: int = 0,
                      **overrides: Any) -> tuple[SyntheticClasses, list[int]]:
    """The generator of ``"miniimagenet"`` or ``"cub"`` at ``scale`` and the images of each class.

    A fraction scales the images of each class (at least ``least_when_scaled``, 20: 5 shots + 15
    queries), never the number of classes (the few-shot splits need their ways)."""
    if kind not in CLASS_SIZES:
        raise ValueError(f"no real sizes for {kind!r}, expected one of {sorted(CLASS_SIZES)}")
    _check_overrides(overrides, _CLASS_IMAGE_FIELDS)
    sizes, fraction = CLASS_SIZES[kind], parse_scale(scale)
    counts = cub_images_per_class(sizes, seed) if sizes.halves else [sizes.images_per_class] * sizes.classes
    if fraction != 1.0:
        counts = [max(min(c, sizes.least_when_scaled), round(c * fraction)) for c in counts]
    gen = SyntheticClasses(seed=seed, num_classes=sizes.classes, images_per_class=max(counts),
                           few_shot_splits=sizes.splits, **overrides)
    return gen, counts


def reid_counts(gen: SyntheticReID, omit: Mapping[tuple[str, str], frozenset[int]] | None = None,
                variants: tuple[str, ...] = ("labeled",), layout: str = "market1501") -> dict[str, dict]:
    """What a writer writes, per ``variant/split``: images, identities (pid > 0), distractors, junk."""
    omit = omit or {}
    out = {}
    for variant in variants:
        for split in SPLITS:
            skip = omit.get((variant, split), ())
            infos = [s for i, s in enumerate(gen.samples(split)) if i not in skip
                     and not (layout in PERSONS_ONLY and s.pid <= 0)]
            out[f"{variant}/{split}"] = {
                "images": len(infos), "ids": len({s.pid for s in infos if s.pid > 0}),
                "distractors": sum(s.pid == 0 for s in infos), "junk": sum(s.pid == -1 for s in infos)}
    return out


def reid_targets(sizes: ReIDSizes) -> dict[str, dict]:
    """The counts of ``sizes`` in the form of :func:`reid_counts`."""
    out = {}
    for variant, (train, gallery) in sizes.variant_sizes().items():
        out[f"{variant}/train"] = {"images": train, "ids": sizes.train_ids, "distractors": 0, "junk": 0}
        out[f"{variant}/query"] = {"images": sizes.query_images, "ids": sizes.query_ids, "distractors": 0,
                                   "junk": 0}
        out[f"{variant}/gallery"] = {"images": gallery, "ids": sizes.test_ids,
                                     "distractors": sizes.distractors, "junk": sizes.junk}
    return out


def class_counts(gen: SyntheticClasses, counts: list[int], kind: str = "miniimagenet") -> dict[str, int]:
    """Classes and images of each few-shot split (CUB: Chen et al.'s split by class position, as the
    loader reads it), of each half of the classes (the retrieval split) and in all."""
    if kind == "cub":
        splits = {s: [c for c in range(gen.num_classes) if cub_few_shot_split(c) == s]
                  for s in ("train", "val", "test")}
    else:
        splits = {s: gen.split_classes(s) for s in ("train", "val", "test")}
    out = {f"{split} classes": len(classes) for split, classes in splits.items()}
    out.update({f"{split} images": sum(counts[c] for c in classes) for split, classes in splits.items()})
    half = gen.num_classes // 2
    out.update({"first half images": sum(counts[:half]), "second half images": sum(counts[half:]),
                "images": sum(counts), "least per class": min(counts), "most per class": max(counts)})
    return out
