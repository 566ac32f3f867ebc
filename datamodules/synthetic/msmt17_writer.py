"""What the synthetic re-ID set looks like in MSMT17's released layout: the files and the list lines.

:func:`msmt17_plan` lays a generator's images out as MSMT17 (Wei et al., CVPR 2018) ships them,
without drawing one: ``MSMT17_<version>/`` with the training and the test image folder
(:data:`~datamodules.split_rules.MSMT17_FOLDERS`), one sub-folder per identity
(``0000/0000_000_01_0303morning_0015_0.jpg``: 0-based pid, image index of the identity, 1-based
camera, date and time of day, frame, a last digit) and the four lists, ``<path under the image folder>
<0-based pid>`` a line. Training and test pids are each numbered from 0, as in the release; the
query and gallery images of an identity share its test folder. ``list_val.txt`` takes MSMT17's share
of the training images (2,373 of 32,621) at random, never the first image of an identity, so every
identity stays in ``list_train.txt``. :func:`~datamodules.synthetic.write_reid_layout` draws the files.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..seeding import mix_seed
from ..split_rules import MSMT17_FOLDERS, MSMT17_LISTS
from .reid import SampleInfo, SyntheticReID

__all__ = ["MSMT17_VAL_SHARE", "MSMT17Entry", "MSMT17Plan", "msmt17_plan", "msmt17_val_indices"]

#: list_val.txt's share of MSMT17's training images (2,373 of 32,621)
MSMT17_VAL_SHARE = (2373, 32621)
_DATES = ("0113", "0114", "0302", "0303")
_TIMES = ("morning", "noon", "afternoon")


@dataclass(frozen=True)
class MSMT17Entry:
    """One listed image: its path under the image folder, its list pid, and the generator's image."""

    path: str
    pid: int  # 0-based, as the list writes it
    split: str
    index: int


@dataclass
class MSMT17Plan:
    """``MSMT17_<version>/``'s image folders and ``lists``: list file name -> its entries, in order."""

    version: str
    lists: dict[str, list[MSMT17Entry]] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        return f"MSMT17_{self.version}"

    def image_path(self, list_name: str, entry: MSMT17Entry) -> str:
        """The file of ``entry`` relative to the writer's root (``MSMT17_V1/train/0000/...jpg``)."""
        which = dict(MSMT17_LISTS)[list_name]
        return f"{self.folder}/{MSMT17_FOLDERS[self.version][which]}/{entry.path}"

    def list_text(self, list_name: str) -> str:
        return "".join(f"{e.path} {e.pid}\n" for e in self.lists[list_name])


def msmt17_val_indices(train: Sequence[SampleInfo], seed: int = 0) -> frozenset[int]:
    """The training images for ``list_val.txt``: MSMT17's share of ``train`` (rounded), drawn at random
    among the images that are not the first of their identity."""
    count = round(len(train) * MSMT17_VAL_SHARE[0] / MSMT17_VAL_SHARE[1])
    seen: set[int] = set()
    spare = []
    for i, info in enumerate(train):
        if info.pid in seen:
            spare.append(i)
        seen.add(info.pid)
    return frozenset(random.Random(mix_seed(seed, 0x17)).sample(spare, min(count, len(spare))))


def _name(pid: int, number: int, info: SampleInfo, index: int) -> str:
    slot = info.frame // 1000
    when = f"{_DATES[slot // len(_TIMES) % len(_DATES)]}{_TIMES[slot % len(_TIMES)]}"
    name = f"{pid:04d}_{number:03d}_{info.camid + 1:02d}_{when}_{info.frame % 10000:04d}_{index % 8}.jpg"
    return f"{pid:04d}/{name}"


def msmt17_plan(generator: SyntheticReID, version: str = "V1") -> MSMT17Plan:
    """The files and list lines of ``generator``'s persons (no distractors or junk: MSMT17 has none)
    in the layout of MSMT17 ``version`` (``"V1"`` or ``"V2"``)."""
    if version not in MSMT17_FOLDERS:
        raise ValueError(f"msmt17_version must be one of {sorted(MSMT17_FOLDERS)}, got {version!r}")
    train_pids = {p: i for i, p in enumerate(generator.train_pids)}
    test_pids = {p: i for i, p in enumerate(generator.test_pids)}
    train = generator.samples("train")
    val = msmt17_val_indices(train, generator.seed)
    numbers: dict[tuple[int, int], int] = {}  # (folder, pid) -> images named so far

    def entry(split: str, index: int, info: SampleInfo) -> MSMT17Entry:
        folder = 0 if split == "train" else 1
        pid = (train_pids if folder == 0 else test_pids)[info.pid]
        number = numbers.get((folder, pid), 0)
        numbers[(folder, pid)] = number + 1
        return MSMT17Entry(_name(pid, number, info, index), pid, split, index)

    plan = MSMT17Plan(version, {name: [] for name, _ in MSMT17_LISTS})
    for split in ("train", "query", "gallery"):
        for i, info in enumerate(generator.samples(split)):
            if info.pid <= 0:
                continue
            name = {"query": "list_query.txt", "gallery": "list_gallery.txt"}.get(
                split, "list_val.txt" if i in val else "list_train.txt")
            plan.lists[name].append(entry(split, i, info))
    return plan
