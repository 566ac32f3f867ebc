"""A validation split of its own: training identities (re-ID) or classes (retrieval) held out.

Re-ID: :func:`hold_out_identities` and :class:`HeldOutSubset`; retrieval: :func:`hold_out_classes` and
the same subset class (the last training classes, each image a query against the others, as the test
split is ranked).

Re-ID data sets ship a training set and a test query + gallery, nothing else; torchreid and fast-reid
validate on the test split, so a checkpoint chosen by its validation score has seen the test set.
:func:`hold_out_identities` picks ``count`` training identities (seeded, among those seen by at least
two cameras) and splits their images by the test split's protocol (Market-1501's: one query per
identity and camera, the rest in the gallery), so the validation score is measured the way the test
score is, on identities that neither training nor test sees.

Rule per held-out identity: in every camera where it has at least two images, one image (drawn with the
seed) is a query; every other image is in the gallery. Each query thus has at least one true match
in another camera (the ranking excludes same-camera matches), and an identity seen by one image per
camera stays a gallery-only identity (a hard negative for the others). A training set without
camera information (one camera for every image, e.g. ``folders`` without cameras) is read as the
``folders`` layout reads its test split: the held-out identities with two or more images give one
query each, the queries are camera 0 and the gallery camera 1 (:attr:`HeldOutSplit.camera_free`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from torch.utils.data import Dataset

from .samplers import split_item

__all__ = ["HeldOutSplit", "HeldOutSubset", "check_validation_options", "default_val_ids", "hold_out_classes",
           "hold_out_identities"]


@dataclass(frozen=True)
class HeldOutSplit:
    """Positions in the training set: what still trains, the validation queries and gallery, and the
    held-out identities (original pids, sorted)."""

    train: list[int]
    query: list[int]
    gallery: list[int]
    identities: list[int]
    #: the training set has one camera: the queries are to be read as camera 0, the gallery as camera 1
    camera_free: bool = False


def default_val_ids(num_identities: int) -> int:
    """The validation identities (or classes) when their count is not given: a tenth of the training
    ones (rounded), at least one."""
    return max(1, round(num_identities / 10))


def check_validation_options(count: int | None, validate_on_test: bool, name: str, what: str) -> None:
    """A data module's validation options: ``count`` (``val_ids`` / ``val_classes``) held out, or
    ``validate_on_test``; ``what`` names the held-out units in the messages."""
    if validate_on_test and count:
        raise ValueError(f"{name}={count!r} holds {what} out for a validation split, while "
                         "validate_on_test: true validates on the test split; set one of them")
    if count is not None and (int(count) != count or count < 0):
        raise ValueError(f"{name} must be a whole number >= 0 (or null: a tenth of the {what}), got {count!r}")
    if count == 0 and not validate_on_test:
        raise ValueError(f"{name}: 0 leaves no validation split; give {name} > 0, or validate on the test "
                         "split with validate_on_test: true")


def hold_out_identities(pids: Sequence[int], camids: Sequence[int], count: int, seed: int = 0) -> HeldOutSplit:
    """Hold ``count`` identities out of a training set (``pids`` / ``camids`` per image) as a validation
    query + gallery (the module's rule: one query per identity and camera with two or more images).

    Args:
        pids: identity of each training image.
        camids: camera of each training image.
        count: identities to hold out (>= 1); they are drawn with ``seed`` among the identities seen
            by two or more cameras, and at least one identity must remain for training.
        seed: seed of the draw and of the query images (the same split whatever the training seed).

    Raises:
        ValueError: ``count`` < 1, or more identities asked for than can be held out.
    """
    if len(pids) != len(camids):
        raise ValueError(f"pids and camids differ in length: {len(pids)} vs {len(camids)}")
    if int(count) != count or count < 1:
        raise ValueError(f"val_ids must be a whole number >= 1, got {count!r}")
    images: dict[int, dict[int, list[int]]] = {}  # pid -> camera -> positions
    for position, (pid, cam) in enumerate(zip(pids, camids)):
        images.setdefault(int(pid), {}).setdefault(int(cam), []).append(position)
    camera_free = len(set(int(c) for c in camids)) == 1
    if camera_free:  # one camera: an identity with two or more images can give a query and its match
        eligible = sorted(pid for pid, cams in images.items() if sum(map(len, cams.values())) >= 2)
        seen = "have two or more images (the training set has one camera)"
    else:
        eligible = sorted(pid for pid, cams in images.items() if len(cams) >= 2)
        seen = "are seen by two or more cameras"
    limit = min(len(eligible), len(images) - 1)
    if count > limit:
        raise ValueError(
            f"val_ids={count}: at most {limit} of the {len(images)} training identities can be held out "
            f"for validation ({len(eligible)} {seen}, and one must remain to train); "
            "or validate on the test split with validate_on_test: true")
    rng = random.Random(seed)
    held = sorted(rng.sample(eligible, int(count)))
    query: list[int] = []
    gallery: list[int] = []
    for pid in held:
        for cam in sorted(images[pid]):
            positions = images[pid][cam]
            chosen = rng.choice(positions) if len(positions) >= 2 else None
            query.extend(p for p in positions if p == chosen)
            gallery.extend(p for p in positions if p != chosen)
    held_set = set(held)
    train = [p for p, pid in enumerate(pids) if int(pid) not in held_set]
    return HeldOutSplit(train=train, query=sorted(query), gallery=sorted(gallery), identities=held,
                        camera_free=camera_free)


def hold_out_classes(labels: Sequence[int], count: int) -> tuple[list[int], list[int]]:
    """Positions of the training images that still train and of those of the ``count`` held-out
    classes: the classes with the largest labels (CUB's retrieval split holds out the classes with the
    largest ids for test in the same way), at least one class left to train."""
    classes = sorted(set(int(x) for x in labels))
    if int(count) != count or not 1 <= count <= len(classes) - 1:
        raise ValueError(f"val_classes={count!r}: hold out between 1 and {len(classes) - 1} of the "
                         f"{len(classes)} training classes (one must remain to train); or validate on "
                         "the test split with validate_on_test: true")
    held = set(classes[len(classes) - int(count):])
    train = [i for i, x in enumerate(labels) if int(x) not in held]
    val = [i for i, x in enumerate(labels) if int(x) in held]
    return train, val


class HeldOutSubset(Dataset):
    """Items ``indices`` of a re-ID or class dataset, indexed ``0 .. len(indices) - 1`` (an ``(index,
    seed)`` item keeps its seed), with the per-item lists its base has -- ``pids``, ``camids``,
    ``labels``, ``records`` (what the image check reads), ``paths`` -- and its ``class_names`` (of the
    classes present) and ``has_boxes``; a list the base lacks raises ``AttributeError`` here too.

    Args:
        base: the dataset the items come from.
        indices: their positions in ``base``.
        camid: every item's camera, when given (a camera-free training set's held-out query or gallery).
    """

    def __init__(self, base: Any, indices: Sequence[int], camid: int | None = None) -> None:
        self.base = base
        self.indices = [int(i) for i in indices]
        self.camid = camid

    def __len__(self) -> int:
        return len(self.indices)

    def _select(self, name: str) -> list[Any]:
        values = getattr(self.base, name)
        return [values[i] for i in self.indices]

    @property
    def pids(self) -> list[int]:
        return self._select("pids")

    @property
    def camids(self) -> list[int]:
        return [self.camid] * len(self.indices) if self.camid is not None else self._select("camids")

    @property
    def labels(self) -> list[int]:
        return self._select("labels")

    @property
    def records(self) -> list[Any]:
        return self._select("records")

    @property
    def paths(self) -> list[str] | None:
        return None if getattr(self.base, "paths", None) is None else self._select("paths")

    @property
    def class_names(self) -> dict[int, str]:
        present = set(self.labels)
        return {k: v for k, v in self.base.class_names.items() if k in present}

    @property
    def has_boxes(self) -> bool:
        return bool(getattr(self.base, "has_boxes", False))

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = split_item(item)
        position = self.indices[index]
        item = self.base[(position, seed) if seed is not None else position]
        return {**item, "camid": self.camid} if self.camid is not None else item
