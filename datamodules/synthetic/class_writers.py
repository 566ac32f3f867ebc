"""Writing the synthetic classes to disk: CUB-200-2011, miniImageNet CSV, one folder per class."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Sequence

from ..image_writer import ImageJob, encode_image, write_images
from .common import rounded_box
from .objects import FEW_SHOT_SPLITS, SyntheticClasses

__all__ = ["CLASS_LAYOUTS", "write_classes_layout", "write_cub_layout", "write_miniimagenet_layout",
           "write_class_folders"]

CLASS_LAYOUTS: tuple[str, ...] = ("cub", "miniimagenet", "folders")


def _wnid(label: int) -> str:
    """A miniImageNet-like class id (``n`` + 8 digits) that no real WordNet id uses."""
    return f"n9{label:07d}"


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
    seed: int = 0, scale: str | float = "default", workers: int = 1,
    progress: bool = True, write_json: bool = True, jpeg_quality: int = 92,
    **config: Any,
) -> Path:
    """Write every class in the CUB-200-2011 layout under ``root`` (the ``CUB_200_2011`` folder).

    ``images/<NNN.class_name>/<class_name>_<NNNN>_<id>.jpg``; ``images.txt`` (``id path``),
    ``image_class_labels.txt`` (``id class``, 1-based), ``classes.txt`` (``id name``),
    ``bounding_boxes.txt`` (``id x y width height``, pixels), ``train_test_split.txt``
    (``id is_training``: every other image of a class). Class ``c`` of the generator is CUB class
    ``c + 1``. ``scale="real"`` writes CUB-200-2011's sizes (200 classes of 41-60 images, 11,788 in
    all: :mod:`datamodules.synthetic.real_sizes`), a fraction such as ``0.05`` that share of the images per
    class; ``config`` may then only set the image size. ``workers`` > 1 draws the images on that many
    processes. Returns ``root``.
    """
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
                                  "box": rounded_box(box)} for job, box in zip(jobs, boxes)}
        _write_annotations(root, "cub", gen, annotations)
    return root


def write_miniimagenet_layout(
    root: str | Path,
    generator: SyntheticClasses | None = None,
    *,
    seed: int = 0, scale: str | float = "default", workers: int = 1,
    progress: bool = True, write_json: bool = True, jpeg_quality: int = 92,
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
                                  "box": rounded_box(box)}
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
                    (folder / f"{name}_{i + 1:04d}.jpg").write_bytes(encode_image(s.image, "jpeg", jpeg_quality))
                    rel = f"{folder_name}/{name}/{name}_{i + 1:04d}.jpg"
                    annotations[rel] = {"label": label, "index": i, "split": split,
                                        "box": rounded_box(s.box)}
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

