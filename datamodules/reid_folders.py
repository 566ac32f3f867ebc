"""Your own re-ID data: one folder per identity, ``train/<id>/``, ``query/<id>/``, ``gallery/<id>/``.

:func:`scan_reid_folders` reads the tree into :class:`~datamodules.reid_scan.ReIDRecord` s. An
identity is a folder name (any string); the names of all splits, sorted, are numbered 1, 2, ... (a
stable mapping for a given tree). Two folder names are special: ``_distractors`` (pid 0, gallery
images of no query identity) and ``_junk`` (pid -1, ignored by the ranking). Cameras come from

* ``camera_pattern``: a regex searched in each file name whose group 1 is the camera number
  (e.g. ``"c(\\d+)"`` for ``0001_c3.jpg``);
* else ``cameras.csv`` at the root, if there is one: columns ``path,camid``, ``path`` relative to
  the root, one row for every image;
* else none: every query image is camera 0 and every gallery image camera 1 (training images 0), so the
  Market-1501 rule "a gallery image of the query's identity and camera is not a match" removes
  nothing (the query's own file is never in the gallery: the two are separate folders).

Bad input raises :class:`DatasetLayoutError` naming the file or folder and the expected layout.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DatasetLayoutError
from .images import IMAGE_EXTENSIONS
from .reid_scan import ReIDRecord

__all__ = ["FOLDER_SPLITS", "SPECIAL_FOLDERS", "CAMERAS_CSV", "EXPECTED_FOLDERS", "ReIDFolders",
           "scan_reid_folders"]

FOLDER_SPLITS = ("train", "query", "gallery")
SPECIAL_FOLDERS = {"_distractors": 0, "_junk": -1}
CAMERAS_CSV = "cameras.csv"
EXPECTED_FOLDERS = ("expected <root>/train/<identity>/<image>, <root>/query/<identity>/<image> and "
                    "<root>/gallery/<identity>/<image> (identity: any folder name; gallery/_distractors "
                    "and gallery/_junk for distractors and junk)")
_SHOWN = 5


@dataclass
class ReIDFolders:
    """The scanned tree: ``records`` per split, ``names`` pid -> identity folder name, ``cameras``
    where the camera ids came from (``"pattern"``, ``"csv"`` or ``"none"``)."""

    records: dict[str, list[ReIDRecord]]
    names: dict[int, str]
    cameras: str


def _listing(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def _split_images(root: Path, split: str) -> dict[str, list[Path]]:
    """Identity folder name -> its image files (sorted) in ``root/split``."""
    folder = root / split
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DatasetLayoutError(f"folders root {root} has no {split}/ folder (found: {found or 'nothing'}); "
                                 f"{EXPECTED_FOLDERS}")
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if loose:
        raise DatasetLayoutError(f"{folder} holds images outside identity folders ({_listing(loose)}); "
                                 f"{EXPECTED_FOLDERS}")
    images = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            images[sub.name] = files
    if not images:
        raise DatasetLayoutError(f"the {split} split {folder} holds no identity folder with images "
                                 f"({', '.join(IMAGE_EXTENSIONS)}); {EXPECTED_FOLDERS}")
    return images


def _read_cameras_csv(path: Path, root: Path) -> dict[str, int]:
    """Relative image path -> camera id, from ``path`` (columns ``path,camid``)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["path", "camid"]:
        raise DatasetLayoutError(f"{path}: the first line must be the header 'path,camid' "
                                 f"(path relative to {root}), got {rows[0] if rows else 'an empty file'}")
    cameras: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or not row[1].strip().lstrip("-").isdigit():
            raise DatasetLayoutError(f"{path} line {line}: expected '<path>,<integer camid>', got {row}")
        rel = Path(row[0].strip()).as_posix()
        if rel in cameras:
            raise DatasetLayoutError(f"{path} line {line}: {rel} is listed twice")
        cameras[rel] = int(row[1])
    return cameras


def _camera_ids(root: Path, files: dict[str, list[Path]], pattern: str | None) -> tuple[dict[Path, int], str]:
    """Camera id of every file (``files``: split -> paths) and where they came from."""
    csv_path = root / CAMERAS_CSV
    if pattern is not None:
        if csv_path.is_file():
            raise DatasetLayoutError(f"both camera_pattern '{pattern}' and {csv_path} give the cameras: "
                                     "remove the file or the option")
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise DatasetLayoutError(f"camera_pattern '{pattern}' is not a regular expression: {e}") from None
        cams = {}
        for path in (p for paths in files.values() for p in paths):
            m = regex.search(path.name)
            if m is None or not m.groups() or not (m.group(1) or "").isdigit():
                raise DatasetLayoutError(f"camera_pattern '{pattern}' finds no camera number (group 1) in "
                                         f"the file name of {path}")
            cams[path] = int(m.group(1))
        return cams, "pattern"
    if csv_path.is_file():
        listed = _read_cameras_csv(csv_path, root)
        cams = {p: listed.get(p.relative_to(root).as_posix()) for paths in files.values() for p in paths}
        unlisted = [str(p.relative_to(root)) for p, c in cams.items() if c is None]
        if unlisted:
            raise DatasetLayoutError(f"{len(unlisted)} image(s) have no row in {csv_path}: "
                                     f"{_listing(unlisted)}; every image needs a row 'path,camid' (path "
                                     "relative to the root)")
        missing = sorted(set(listed) - {p.relative_to(root).as_posix() for p in cams})
        if missing:
            raise DatasetLayoutError(f"{len(missing)} row(s) of {csv_path} name no image file of the tree: "
                                     f"{_listing(missing)}; {EXPECTED_FOLDERS}")
        return cams, "csv"  # type: ignore[return-value]
    default = {"train": 0, "query": 0, "gallery": 1}
    return {p: default[split] for split, paths in files.items() for p in paths}, "none"


def scan_reid_folders(
    root: str | Path | None, camera_pattern: str | None = None, min_train_images: int | None = None
) -> ReIDFolders:
    """Read a ``folders`` re-ID tree (see the module docstring).

    ``min_train_images``: ``None`` makes a training identity with a single image an error (metric
    learning needs two images of an identity); a number drops the training identities with fewer
    images than that (1 keeps all).
    """
    if root is None:
        raise DatasetLayoutError(f"dataset='folders' needs a root folder (root=None); {EXPECTED_FOLDERS}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"folders root {root} does not exist or is not a folder")
    images = {split: _split_images(root, split) for split in FOLDER_SPLITS}
    for split in ("train", "query"):
        special = sorted(set(images[split]) & set(SPECIAL_FOLDERS))
        if special:
            raise DatasetLayoutError(f"{root / split / special[0]}: {'/'.join(SPECIAL_FOLDERS)} belong in "
                                     f"gallery/ only; {EXPECTED_FOLDERS}")
    no_match = sorted(set(images["query"]) - set(images["gallery"]))
    if no_match:
        raise DatasetLayoutError(f"{len(no_match)} query identities have no folder in {root / 'gallery'}: "
                                 f"{_listing(no_match)}; every query identity needs gallery images")
    train = images["train"]
    if min_train_images is None:
        single = sorted(name for name, files in train.items() if len(files) < 2)
        if single:
            raise DatasetLayoutError(f"{len(single)} training identities of {root / 'train'} have a single "
                                     "image: "
                                     f"{_listing(single)}; add images, or drop them with min_train_images: 2")
    dropped = {n for n, f in train.items() if min_train_images is not None and len(f) < int(min_train_images)}
    if len(dropped) == len(train):
        raise DatasetLayoutError(f"no training identity of {root / 'train'} has {min_train_images} images "
                                 f"or more (min_train_images)")
    names = sorted({n for split in images.values() for n in split} - set(SPECIAL_FOLDERS))
    pids = {**{name: i for i, name in enumerate(names, start=1)}, **SPECIAL_FOLDERS}
    files = {split: [p for imgs in images[split].values() for p in imgs] for split in FOLDER_SPLITS}
    cams, source = _camera_ids(root, files, camera_pattern)
    records = {split: [ReIDRecord(str(p), pids[p.parent.name], cams[p]) for p in files[split]
                       if split != "train" or p.parent.name not in dropped]
               for split in FOLDER_SPLITS}
    return ReIDFolders(records, {pid: name for name, pid in pids.items()}, source)
