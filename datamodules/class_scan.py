"""The on-disk layouts of labelled class images, for few-shot classification and retrieval.

Few-shot: miniImageNet's CSV split files (:func:`scan_miniimagenet_split`), CUB-200-2011 with Chen et
al.'s class split (:func:`scan_cub`), one folder per class under split folders
(:func:`scan_class_folders`). Retrieval: CUB-200-2011's first / second half of the classes
(:func:`scan_cub_retrieval`) and class folders with or without split folders
(:func:`scan_retrieval_folders`). Every scan returns :class:`ClassRecord` s; a missing root, file or
folder, a broken line or an empty split raises :class:`DatasetLayoutError` naming the path.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .split_rules import cub_few_shot_split
from .errors import DatasetLayoutError
from .images import IMAGE_EXTENSIONS

__all__ = [
    "SPLITS",
    "RETRIEVAL_SPLITS",
    "ClassRecord",
    "scan_miniimagenet_split",
    "resolve_cub_root",
    "scan_cub",
    "scan_class_folders",
    "scan_cub_retrieval",
    "scan_retrieval_folders",
]

SPLITS = ("train", "val", "test")
_FOLDER_CANDIDATES = {"train": ("train", "base"), "val": ("val", "validation"), "test": ("test", "novel")}
_CSV_COLUMNS = (("filename", "label"), ("image_name", "class_name"))
RETRIEVAL_SPLITS = ("train", "test")


@dataclass(frozen=True)
class ClassRecord:
    """One labelled image (few-shot, retrieval and classification alike): file, class name, box."""

    path: str
    class_name: str
    box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 in pixels of the file


# -- scanning the layouts ------------------------------------------------------------------------


def _read_csv_split(path: Path) -> list[tuple[str, str]]:
    """``(file name, class name)`` rows of a miniImageNet split file, columns found by header name."""
    if not path.is_file():
        raise DatasetLayoutError(
            f"missing miniImageNet split file {path}: expected train.csv, val.csv and test.csv "
            f"(header 'filename,label' or 'class_name,image_name') next to images/ in {path.parent}"
        )
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise DatasetLayoutError(f"miniImageNet split file {path} is empty")
    header = [c.strip().lower() for c in rows[0]]
    for file_col, class_col in _CSV_COLUMNS:
        if file_col in header and class_col in header:
            fi, ci = header.index(file_col), header.index(class_col)
            break
    else:
        raise DatasetLayoutError(
            f"cannot read the header of {path}: {rows[0]}; expected the columns 'filename,label' "
            "or 'class_name,image_name'"
        )
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) <= max(fi, ci):
            raise DatasetLayoutError(f"{path} line {line}: expected {len(header)} columns, got {row}")
        out.append((row[fi].strip(), row[ci].strip()))
    if not out:
        raise DatasetLayoutError(f"miniImageNet split file {path} lists no images")
    return out


def scan_miniimagenet_split(root: str | Path, split: str) -> list[ClassRecord]:
    """Records of ``<root>/<split>.csv``; images in ``<root>/images/<file>`` or ``images/<label>/<file>``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"miniimagenet root {root} does not exist or is not a folder")
    images = root / "images"
    if not images.is_dir():
        raise DatasetLayoutError(f"miniimagenet root {root} has no images/ folder")
    rows = _read_csv_split(root / f"{split}.csv")
    name, label = rows[0]
    nested = not (images / name).is_file() and (images / label / name).is_file()
    return [ClassRecord(str(images / label / f if nested else images / f), label) for f, label in rows]


def resolve_cub_root(root: str | Path | None) -> Path:
    """The CUB-200-2011 folder (holding ``images.txt``): ``root`` itself or ``root/CUB_200_2011``."""
    if root is None:
        raise DatasetLayoutError("dataset='cub' needs a root folder (root=None)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"cub root {root} does not exist or is not a folder")
    for path in (root, root / "CUB_200_2011"):
        if (path / "images.txt").is_file():
            return path
    raise DatasetLayoutError(
        f"cub root {root} does not hold CUB-200-2011 (images.txt, image_class_labels.txt, classes.txt, "
        f"bounding_boxes.txt, images/), nor does {root / 'CUB_200_2011'}"
    )


def _read_table(path: Path, columns: int) -> dict[int, list[str]]:
    if not path.is_file():
        raise DatasetLayoutError(f"missing CUB-200-2011 file {path}")
    out = {}
    for line, text in enumerate(path.read_text().splitlines(), start=1):
        parts = text.split()
        if not parts:
            continue
        if len(parts) < columns or not parts[0].isdigit():
            raise DatasetLayoutError(f"{path} line {line}: expected '<id> ...' with {columns} fields, got {text!r}")
        out[int(parts[0])] = parts[1:]
    return out


def scan_cub(root: str | Path) -> dict[str, list[ClassRecord]]:
    """Records of the three few-shot splits of CUB-200-2011 (:func:`cub_few_shot_split`), with boxes."""
    base = resolve_cub_root(root)
    images = _read_table(base / "images.txt", 2)
    labels = _read_table(base / "image_class_labels.txt", 2)
    classes = _read_table(base / "classes.txt", 2)
    boxes = _read_table(base / "bounding_boxes.txt", 5) if (base / "bounding_boxes.txt").is_file() else {}
    position = {cid: i for i, cid in enumerate(sorted(classes))}
    out: dict[str, list[ClassRecord]] = {s: [] for s in SPLITS}
    for image_id, (rel, *_) in sorted(images.items()):
        if image_id not in labels:
            raise DatasetLayoutError(f"image {image_id} ({rel}) has no class in {base / 'image_class_labels.txt'}")
        cid = int(labels[image_id][0])
        if cid not in classes:
            raise DatasetLayoutError(f"class {cid} of image {image_id} is not in {base / 'classes.txt'}")
        box = None
        if image_id in boxes:
            x, y, w, h = (float(v) for v in boxes[image_id][:4])
            box = (x, y, x + w, y + h)
        split = cub_few_shot_split(position[cid])
        out[split].append(ClassRecord(str(base / "images" / rel), classes[cid][0], box))
    return out


def _split_folder(root: Path, split: str, names: Sequence[str] | None) -> Path:
    candidates = (names[SPLITS.index(split)],) if names else _FOLDER_CANDIDATES[split]
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    raise DatasetLayoutError(
        f"missing {split} split folder in {root}: expected one of {list(candidates)}, found {found or 'nothing'}"
    )


def scan_class_folders(root: str | Path, split: str, split_folders: Sequence[str] | None = None) -> list[ClassRecord]:
    """Records of ``root/<split>/<class>/<image>``; a class is any folder holding images directly."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"folders root {root} does not exist or is not a folder")
    folder = _split_folder(root, split, split_folders)
    records = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and path.parent != folder:
            records.append(ClassRecord(str(path), path.parent.relative_to(folder).as_posix()))
    if not records:
        raise DatasetLayoutError(f"split folder {folder} holds no class folder with images ({IMAGE_EXTENSIONS})")
    return records


def scan_cub_retrieval(
    root: str | Path | None, num_train_classes: int | None = None
) -> dict[str, list[ClassRecord]]:
    """Records of the retrieval split of CUB-200-2011: class ids ``1..n`` train, the rest test.

    The classes are ordered by their id in ``classes.txt``; the first ``num_train_classes`` (default:
    half of them, 100 of CUB's 200) are the training classes. Every record carries its box from
    ``bounding_boxes.txt`` as ``(x1, y1, x2, y2) = (x, y, x + width, y + height)`` in pixels of the
    file, when that file exists.
    """
    base = resolve_cub_root(root)
    layout = "expected: images.txt, image_class_labels.txt, classes.txt, bounding_boxes.txt, images/"
    images = _read_table(base / "images.txt", 2)
    labels = _read_table(base / "image_class_labels.txt", 2)
    classes = _read_table(base / "classes.txt", 2)
    boxes = _read_table(base / "bounding_boxes.txt", 5) if (base / "bounding_boxes.txt").is_file() else {}
    if not images:
        raise DatasetLayoutError(f"{base / 'images.txt'} lists no images ({layout})")
    class_ids = sorted(classes)
    n_train = len(class_ids) // 2 if num_train_classes is None else int(num_train_classes)
    if not 1 <= n_train < len(class_ids):
        raise DatasetLayoutError(
            f"cub_train_classes={n_train} must leave training and test classes among the "
            f"{len(class_ids)} classes of {base / 'classes.txt'}"
        )
    train_ids = set(class_ids[:n_train])
    out: dict[str, list[ClassRecord]] = {s: [] for s in RETRIEVAL_SPLITS}
    for image_id, (rel, *_) in sorted(images.items()):
        if image_id not in labels:
            raise DatasetLayoutError(
                f"image {image_id} ({rel}) has no class in {base / 'image_class_labels.txt'}"
            )
        if not labels[image_id][0].isdigit():
            raise DatasetLayoutError(
                f"{base / 'image_class_labels.txt'}: image {image_id} has class {labels[image_id][0]!r}, "
                f"expected an integer class id of {base / 'classes.txt'}"
            )
        cid = int(labels[image_id][0])
        if cid not in classes:
            raise DatasetLayoutError(
                f"class id {cid} of image {image_id} ({rel}) is out of range: {base / 'classes.txt'} lists "
                f"the ids {class_ids[0]}..{class_ids[-1]} ({len(class_ids)} classes)"
            )
        box = None
        if image_id in boxes:
            try:
                x, y, w, h = (float(v) for v in boxes[image_id][:4])
            except ValueError:
                raise DatasetLayoutError(
                    f"{base / 'bounding_boxes.txt'}: image {image_id} has the box {boxes[image_id]}, "
                    "expected '<image_id> <x> <y> <width> <height>' in pixels"
                ) from None
            box = (x, y, x + w, y + h)
        split = "train" if cid in train_ids else "test"
        out[split].append(ClassRecord(str(base / "images" / rel), classes[cid][0], box))
    if boxes and any(r.box is None for s in out.values() for r in s):
        missing = next(r.path for s in out.values() for r in s if r.box is None)
        raise DatasetLayoutError(f"{base / 'bounding_boxes.txt'} has no box for the image {missing}")
    return out


def scan_retrieval_folders(root: str | Path | None) -> dict[str, list[ClassRecord]]:
    """Records of a one-folder-per-class layout: ``root/{train,test}/<class>/`` or ``root/<class>/``.

    With split folders (``train`` or ``base``, and ``test`` or ``novel``) each split is read as it is;
    without, the classes under ``root`` sorted by name are halved: first half train, second half test.
    """
    if root is None:
        raise DatasetLayoutError("dataset='folders' needs a root folder (root=None)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"folders root {root} does not exist or is not a folder")
    train_dirs = [root / n for n in ("train", "base") if (root / n).is_dir()]
    test_dirs = [root / n for n in ("test", "novel") if (root / n).is_dir()]
    if train_dirs and test_dirs:
        return {s: scan_class_folders(root, s) for s in RETRIEVAL_SPLITS}
    if train_dirs or test_dirs:
        if train_dirs:
            found, missing = train_dirs[0], "test/ (or novel/)"
        else:
            found, missing = test_dirs[0], "train/ (or base/)"
        raise DatasetLayoutError(
            f"folders root {root} has the split folder {found} but no {missing}: expected "
            f"root/train/<class>/<image> and root/test/<class>/<image>, or root/<class>/<image> "
            f"(classes halved by sorted name)"
        )
    # a flat root/<class>/<image> tree: the root itself is the "split folder" of scan_class_folders
    records = scan_class_folders(root.parent, "train", (root.name, root.name, root.name))
    names = sorted({r.class_name for r in records})
    if len(names) < 2:
        raise DatasetLayoutError(
            f"folders root {root} holds {len(names)} class folder(s) with images; splitting classes in two "
            f"(first half train, second half test) needs at least 2, or use root/train/ and root/test/"
        )
    train_names = set(names[: len(names) // 2])
    return {
        "train": [r for r in records if r.class_name in train_names],
        "test": [r for r in records if r.class_name not in train_names],
    }
