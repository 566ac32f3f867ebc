"""The synthetic data trees of ``bench/real_scale.py``: written once at the real sizes, then reused.

:func:`ensure_tree` writes one data set (``market1501``, ``dukemtmc``, ``cuhk03``, ``msmt17`` (V1),
``miniimagenet``, ``cub``) under ``<data_root>/<name>-<scale>[-HxW]`` in its real layout unless the
completion marker ``.real_scale_complete.json`` is there already; a folder without the marker (an
interrupted write) is removed and written again. After writing, the files on disk are counted per
split (images, identities, distractors, junk; MSMT17: the lines of its lists, and its image files;
classes) and compared with the targets of :mod:`datamodules.synthetic.real_sizes`; the marker keeps
the counts, the writing time and the size on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

from datamodules.synthetic.real_sizes import (  # noqa: E402
    CLASS_SIZES,
    REID_SIZES,
    class_counts,
    parse_scale,
    real_size_classes,
    reid_targets,
)

__all__ = ["TREES", "TreeInfo", "ensure_tree", "count_on_disk", "target_counts", "tree_folder"]

TREES = ("market1501", "dukemtmc", "cuhk03", "msmt17", "miniimagenet", "cub")
MARKER = ".real_scale_complete.json"
_REID_FOLDERS = (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test"))


@dataclass(frozen=True)
class TreeInfo:
    """A written tree: where, how long the writing took (``cached``: written by an earlier run), its
    size on disk, and the counts on disk next to the targets."""

    name: str
    path: Path
    seconds: float
    cached: bool
    bytes_on_disk: int
    counts: dict[str, int]
    targets: dict[str, int]

    def mismatches(self) -> list[str]:
        """``key: actual vs target (x.x%)`` for every count that misses its target by more than 1%."""
        out = []
        for key, target in self.targets.items():
            actual = self.counts.get(key, 0)
            if abs(actual - target) > 0.01 * max(target, 1):
                out.append(f"{key}: {actual} vs {target} ({100 * (actual - target) / max(target, 1):+.1f}%)")
        return out


def scale_tag(scale: str | float) -> str:
    fraction = parse_scale(scale)
    return "real" if fraction == 1.0 else f"{fraction:g}"


def tree_folder(data_root: str | Path, name: str, scale: str | float,
                size: tuple[int, int] | None = None) -> Path:
    """``<data_root>/<name>-<scale>`` (``-HxW`` appended for a non-default native image size)."""
    if name not in TREES:
        raise ValueError(f"unknown tree {name!r}, expected one of {TREES}")
    suffix = f"-{size[0]}x{size[1]}" if size else ""
    return Path(data_root).expanduser().resolve() / f"{name}-{scale_tag(scale)}{suffix}"


def _reid_names(folder: Path) -> list[str]:
    return [e.name for e in os.scandir(folder) if e.is_file() and e.name.endswith((".jpg", ".png"))]


def _msmt17_counts(path: Path) -> dict[str, int]:
    """MSMT17's counts from its lists (train = list_train + list_val), and its image files."""
    from datamodules.split_rules import MSMT17_FOLDERS

    (base,) = [p for p in path.iterdir() if p.is_dir() and p.name.startswith("MSMT17_")]
    out: dict[str, int] = {}
    for split, lists in (("train", ("list_train", "list_val")), ("query", ("list_query",)),
                         ("gallery", ("list_gallery",))):
        pids = [int(line.split()[1]) for name in lists
                for line in (base / f"{name}.txt").read_text().splitlines() if line.strip()]
        out[f"labeled/{split} images"], out[f"labeled/{split} ids"] = len(pids), len(set(pids))
    out["labeled/gallery distractors"] = out["labeled/gallery junk"] = 0
    folders = MSMT17_FOLDERS[base.name.removeprefix("MSMT17_")]
    out["image files"] = sum(len(_reid_names(Path(d))) for f in folders for d, _, _ in os.walk(base / f))
    return out


def count_on_disk(name: str, path: Path) -> dict[str, int]:
    """The counts of a written tree, read from its files (names, CSVs, lists, CUB's text files)."""
    out: dict[str, int] = {}
    if name == "msmt17":
        return _msmt17_counts(path)
    if name in REID_SIZES:
        variants = ("labeled", "detected") if name == "cuhk03" else ("labeled",)
        for variant in variants:
            base = path / variant if name == "cuhk03" else path
            for split, folder in _REID_FOLDERS:
                pids = [int(n.split("_", 1)[0]) for n in _reid_names(base / folder)]
                key = f"{variant}/{split}"
                out[f"{key} images"] = len(pids)
                out[f"{key} ids"] = len({p for p in pids if p > 0})
                if split == "gallery":
                    out[f"{key} distractors"] = sum(p == 0 for p in pids)
                    out[f"{key} junk"] = sum(p == -1 for p in pids)
        return out
    if name == "miniimagenet":
        for split in ("train", "val", "test"):
            rows = (path / f"{split}.csv").read_text().splitlines()[1:]
            out[f"{split} images"] = len(rows)
            out[f"{split} classes"] = len({r.split(",")[1] for r in rows})
        out["images"] = sum(1 for _ in os.scandir(path / "images"))
        return out
    from datamodules.split_rules import cub_few_shot_split

    labels = [int(line.split()[1]) for line in (path / "image_class_labels.txt").read_text().splitlines()]
    classes = sorted(set(labels))
    per_class = {c: labels.count(c) for c in classes}
    half = len(classes) // 2
    out.update({"images": len(labels), "classes": len(classes),
                "first half images": sum(per_class[c] for c in classes[:half]),
                "second half images": sum(per_class[c] for c in classes[half:]),
                "least per class": min(per_class.values()), "most per class": max(per_class.values())})
    for split in ("train", "val", "test"):
        chosen = [c for i, c in enumerate(classes) if cub_few_shot_split(i) == split]
        out[f"{split} classes"] = len(chosen)
        out[f"{split} images"] = sum(per_class[c] for c in chosen)
    return out


def target_counts(name: str, scale: str | float) -> dict[str, int]:
    """What :func:`count_on_disk` should find: the real sizes (or their share at a fraction)."""
    fraction = parse_scale(scale)
    if name in REID_SIZES:
        out = {}
        for key, row in reid_targets(REID_SIZES[name].scaled(fraction)).items():
            out[f"{key} images"], out[f"{key} ids"] = row["images"], row["ids"]
            if key.endswith("gallery"):
                out[f"{key} distractors"], out[f"{key} junk"] = row["distractors"], row["junk"]
        if name == "msmt17":
            out["image files"] = sum(v for k, v in out.items() if k.endswith(" images"))
        return out
    gen, counts = real_size_classes(name, scale)
    full = class_counts(gen, counts, name)
    if name == "miniimagenet":
        keys = [f"{s} {what}" for s in ("train", "val", "test") for what in ("images", "classes")]
        keys.append("images")
    else:
        keys = list(full)
        full["classes"] = CLASS_SIZES[name].classes
        keys.append("classes")
    return {k: full[k] for k in keys}


def _du(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        total += sum(os.lstat(os.path.join(dirpath, f)).st_blocks * 512 for f in files)
    return total


def _write(name: str, path: Path, scale: str | float, workers: int, progress: bool,
           overrides: dict[str, Any]) -> None:
    from datamodules.synthetic import write_reid_layout
    from datamodules.synthetic import (
        write_cub_layout,
        write_miniimagenet_layout,
    )

    kwargs = dict(scale=scale, workers=workers, progress=progress, **overrides)
    if name in REID_SIZES:
        write_reid_layout(path, name, **kwargs)
    elif name == "miniimagenet":
        write_miniimagenet_layout(path, **kwargs)
    else:
        write_cub_layout(path, **kwargs)


def ensure_tree(data_root: str | Path, name: str, scale: str | float = "real", *, workers: int = 2,
                progress: bool = True, size: tuple[int, int] | None = None) -> TreeInfo:
    """The tree of data set ``name`` at ``scale`` under ``data_root``, written if its marker is absent.

    ``size`` (height, width) replaces the generator's native image size (128x64 re-ID, 84x84 classes).
    """
    path = tree_folder(data_root, name, scale, size)
    marker = path / MARKER
    if marker.is_file():
        meta = json.loads(marker.read_text())
        return TreeInfo(name, path, meta["seconds"], True, meta["bytes_on_disk"], meta["counts"],
                        meta["targets"])
    if path.exists():
        print(f"[real_scale] {path} has no completion marker (an interrupted write?): writing it again",
              flush=True)
        shutil.rmtree(path)
    overrides = {"height": size[0], "width": size[1]} if size else {}
    start = time.perf_counter()
    _write(name, path, scale, workers, progress, overrides)
    seconds = time.perf_counter() - start
    info = TreeInfo(name, path, seconds, False, _du(path), count_on_disk(name, path),
                    target_counts(name, scale))
    marker.write_text(json.dumps({"scale": str(scale), "size": size, "seconds": seconds,
                                  "bytes_on_disk": info.bytes_on_disk, "counts": info.counts,
                                  "targets": info.targets}, indent=1))
    return info
