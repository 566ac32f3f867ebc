"""Writing the synthetic re-ID set to disk in the Market-1501, DukeMTMC-reID, CUHK03-NP or MSMT17
layout, or in the ``folders`` layout of your own data (one folder per identity)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from ..image_writer import ImageJob, write_images
from .common import rounded_box
from .msmt17_writer import msmt17_plan
from .people import PART_NAMES
from .reid import SPLITS, SampleInfo, SyntheticReID

__all__ = ["LAYOUTS", "write_reid_layout", "write_reid_folders", "folder_name"]

_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
LAYOUTS = ("market1501", "dukemtmc", "cuhk03", "msmt17")


def _market_name(info: SampleInfo, index: int) -> str:
    pid = "-1" if info.pid == -1 else f"{info.pid:04d}"
    seq = 1 + (info.frame // 997) % 6
    return f"{pid}_c{info.camid + 1}s{seq}_{info.frame:06d}_{1 + index % 8:02d}.jpg"


def _duke_name(info: SampleInfo, index: int) -> str:
    pid = "-1" if info.pid == -1 else f"{info.pid:04d}"
    return f"{pid}_c{info.camid + 1}_f{info.frame:07d}.jpg"


def write_reid_layout(
    root: str | Path,
    layout: Literal["market1501", "dukemtmc", "cuhk03", "msmt17"] = "market1501",
    generator: SyntheticReID | None = None,
    *,
    seed: int = 0,
    scale: str | float = "default",
    workers: int = 1,
    progress: bool = True,
    write_json: bool = True,
    jpeg_quality: int = 92,
    msmt17_version: Literal["V1", "V2"] = "V1",
    **config: Any,
) -> Path:
    """Write the synthetic re-ID data to ``root`` in a real data set's on-disk layout.

    * ``"market1501"``: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with names like
      ``0002_c1s1_000451_03.jpg`` (junk ``-1_c1s1_...``, distractors ``0000_...``);
    * ``"dukemtmc"``: the same folders with names like ``0001_c2_f0046182.jpg``;
    * ``"cuhk03"``: ``labeled/`` and ``detected/`` (detector-like jittered crops), each with the three
      folders and names like ``0001_c1_1.png``; no distractors or junk (``root`` plays the role of
      the ``cuhk03-np`` folder);
    * ``"msmt17"``: ``MSMT17_V1/`` (``msmt17_version="V2"``: ``MSMT17_V2/``) with the training and test
      image folders (``train/``, ``test/``; V2 ``mask_train_v2/``, ``mask_test_v2/``), one folder per
      identity, and ``list_train.txt``, ``list_val.txt``, ``list_query.txt``, ``list_gallery.txt``
      (:mod:`datamodules.synthetic.msmt17_writer`); no distractors or junk.

    Without a ``generator`` one is built from ``seed`` and ``config`` (fields of
    :class:`SyntheticReIDConfig`; for ``cuhk03`` the defaults are 2 cameras, no distractors, no junk; for
    ``msmt17`` 15 cameras, no distractors, no junk).
    ``scale="real"`` instead draws the real data set's sizes (identities, images per split, queries,
    distractors, junk: :mod:`datamodules.synthetic.real_sizes`), a fraction such as ``0.05`` that share of them;
    ``config`` may then only set the image size (``height``, ``width``). ``workers`` > 1 draws the
    images on that many processes (the files are the same). With ``write_json`` a
    ``synthetic_annotations.json`` (relative path -> pid, camid, box) is written next to the folders.
    Returns ``root``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}, expected one of {LAYOUTS}")
    omit: dict = {}
    if scale != "default":
        if generator is not None:
            raise TypeError("scale builds the generator from the real sizes: pass no generator with it")
        from .real_sizes import real_size_reid

        generator, omit = real_size_reid(layout, scale, seed=seed, **config)
    elif generator is None:
        no_extras = {"num_distractors": 0, "num_junk": 0}
        defaults = {"cuhk03": {"num_cameras": 2, "cameras_per_id": (2, 2), "query_cameras": 2, **no_extras},
                    "msmt17": {"num_cameras": 15, **no_extras}}.get(layout, {})
        config = {**defaults, **config}
        generator = SyntheticReID(seed=seed, **config)
    elif config:
        raise TypeError("pass either a generator or config fields, not both")
    root = Path(root)
    if layout == "msmt17":
        return _write_msmt17(root, generator, msmt17_version, workers, progress, write_json, jpeg_quality)
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
    _write(root, generator, layout, jobs, infos, workers, progress, write_json, jpeg_quality)
    return root


def _write(root: Path, generator: SyntheticReID, layout: str, jobs: list[ImageJob],
           infos: list[tuple[str, int, SampleInfo]], workers: int, progress: bool, write_json: bool,
           jpeg_quality: int) -> None:
    """Draw the ``jobs``' images; with ``write_json`` the annotations of every file."""
    boxes = write_images(root, type(generator).render, generator, jobs, jpeg_quality=jpeg_quality,
                         workers=workers, progress=progress, desc=f"writing synthetic {layout}")
    if write_json:
        annotations = {job.path: {"pid": info.pid, "camid": info.camid, "split": split, "index": i,
                                  "box": rounded_box(box)}
                       for job, (split, i, info), box in zip(jobs, infos, boxes)}
        meta = {"layout": layout, "seed": generator.seed, "part_names": list(PART_NAMES),
                "box_format": "xyxy pixels at native size", "images": annotations}
        (root / "synthetic_annotations.json").write_text(json.dumps(meta))


def _write_msmt17(root: Path, generator: SyntheticReID, version: str, workers: int, progress: bool,
                  write_json: bool, jpeg_quality: int) -> Path:
    """The images and the four lists of :func:`~datamodules.synthetic.msmt17_writer.msmt17_plan`."""
    plan = msmt17_plan(generator, version)
    jobs: list[ImageJob] = []
    infos: list[tuple[str, int, SampleInfo]] = []
    for name, entries in plan.lists.items():
        for e in entries:
            path = plan.image_path(name, e)
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            jobs.append(ImageJob(path, (e.split, e.index, "labeled"), "jpeg"))
            infos.append((e.split, e.index, generator.samples(e.split)[e.index]))
    _write(root, generator, "msmt17", jobs, infos, workers, progress, write_json, jpeg_quality)
    for name in plan.lists:  # the lists last: a tree with its lists has all its images
        (root / plan.folder / name).write_text(plan.list_text(name))
    return root



def folder_name(pid: int) -> str:
    """The identity folder of a pid in :func:`write_reid_folders` (0: distractors, -1: junk)."""
    return {0: "_distractors", -1: "_junk"}.get(pid, f"person{pid:04d}")


def write_reid_folders(
    root: str | Path,
    generator: SyntheticReID | None = None,
    *,
    cameras: Literal["csv", "pattern", "none"] = "csv",
    seed: int = 0,
    progress: bool = True,
    jpeg_quality: int = 92,
    **config: Any,
) -> Path:
    """Write the synthetic re-ID data to ``root`` in the ``folders`` layout (:mod:`datamodules.reid_folders`):
    ``train/``, ``query/``, ``gallery/``, each with one folder per identity (``person0007``, gallery
    ``_distractors`` and ``_junk``) of JPEG files ``<index>.jpg``.

    ``cameras``: ``"csv"`` writes ``cameras.csv`` (``path,camid``, the generator's 0-based camera);
    ``"pattern"`` names the files ``<index>_c<camid>.jpg`` (read with ``camera_pattern: '_c(\\d+)'``);
    ``"none"`` records no camera. Without a ``generator`` one is built from ``seed`` and ``config``
    (fields of :class:`SyntheticReIDConfig`). Returns ``root``.
    """
    if cameras not in ("csv", "pattern", "none"):
        raise ValueError(f"cameras must be 'csv', 'pattern' or 'none', got {cameras!r}")
    if generator is None:
        generator = SyntheticReID(seed=seed, **config)
    elif config:
        raise TypeError("pass either a generator or config fields, not both")
    root = Path(root)
    jobs, rows = [], ["path,camid"]
    for split in SPLITS:
        for i, info in enumerate(generator.samples(split)):
            suffix = f"_c{info.camid}" if cameras == "pattern" else ""
            path = f"{split}/{folder_name(info.pid)}/{i:05d}{suffix}.jpg"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            jobs.append(ImageJob(path, (split, i, "labeled"), "jpeg"))
            rows.append(f"{path},{info.camid}")
    write_images(root, type(generator).render, generator, jobs, jpeg_quality=jpeg_quality,
                 progress=progress, desc="writing synthetic re-ID folders")
    if cameras == "csv":
        (root / "cameras.csv").write_text("\n".join(rows) + "\n")
    return root
