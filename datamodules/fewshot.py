"""Few-shot classification data: miniImageNet (CSV), CUB-200-2011, one folder per class, synthetic.

:class:`FewShotDataModule` gives episodic loaders (:class:`~datamodules.episodes.EpisodeSampler`,
one N-way K-shot Q-query episode per batch, supports first then queries) over disjoint class splits:

* training episodes from the base classes, new ones every epoch (a function of ``seed`` and the
  epoch), with augmentation (resize, pad + random crop, flip, optional colour jitter) seeded per item;
* validation and test episodes from the unseen classes: a fixed set (a function of ``eval_seed``),
  the same every epoch, no augmentation.

Batches are ``{"image": float [B,3,H,W] (ImageNet-normalised), "label": long [B] (class within the
split, 0..C-1), "index": long [B] (dataset index), "episode_labels": long [B] (0..N-1),
"is_query": bool [B]}`` plus, where the data has them, ``"box": float [B,4]`` (x1, y1, x2, y2 in
pixels of the transformed image: synthetic and CUB) and ``"mask": bool [B,1,H,W]`` (the object's
pixels: synthetic). ``predict`` gives plain batches of the test split (no episode keys).

Layouts (``dataset``):

* ``"miniimagenet"``: ``root`` holds ``images/`` and ``train.csv``, ``val.csv``, ``test.csv`` with
  the header ``filename,label`` (Ravi & Larochelle's split, 64 / 16 / 20 classes) or
  ``class_name,image_name`` (columns found by name, in any order); images in ``images/<file>`` or
  ``images/<label>/<file>``;
* ``"cub"``: the CUB-200-2011 folder (``images/``, ``images.txt``, ``image_class_labels.txt``,
  ``classes.txt``, ``bounding_boxes.txt``; ``root`` may be its parent). The few-shot split of Chen et
  al. ("A closer look at few-shot classification", used by the FAM paper): the ``i``-th class
  (0-based, in ``classes.txt`` order) is a training class when ``i % 2 == 0``, validation when
  ``i % 4 == 1``, test when ``i % 4 == 3`` (100 / 50 / 50 of the 200 classes); boxes from
  ``bounding_boxes.txt``;
* ``"folders"``: ``root/<split>/<class>/<image>`` for the splits ``train`` (or ``base``), ``val``
  (``validation``), ``test`` (``novel``); a class is any folder below the split folder that holds
  images directly, so nested layouts (Omniglot's ``alphabet/character``) work, the class name being
  the relative path;
* ``"synthetic"``: :class:`~datamodules.synthetic_classes.SyntheticClasses`, drawn on the fly
  (64 / 16 / 20 classes by default), with box and mask.

A missing root, split file or folder, an empty split, an unreadable image, too few classes for N
ways and a class with fewer than K+Q images stop the run with :class:`DatasetLayoutError`
(:class:`UnreadableImageError` for images) naming the file, split or class.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from .episodes import EpisodeCollate, EpisodeSampler
from .image_check import check_split_images
from .reid import (
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetLayoutError,
    UnreadableImageError,
    denormalize_images,
    load_image,
)
from .samplers import run_seeded, split_item
from .seeding import mix_seed, single_thread
from .synthetic_classes import SyntheticClasses, SyntheticClassesConfig

__all__ = [
    "ClassImagesDataModule",
    "DatasetLayoutError",
    "UnreadableImageError",
    "FEW_SHOT_DATASETS",
    "FewShotRecord",
    "FewShotImageDataset",
    "FewShotTransformDataset",
    "FewShotDataModule",
    "NormalizeImage",
    "scan_miniimagenet_split",
    "scan_cub",
    "scan_class_folders",
    "resolve_cub_root",
    "cub_few_shot_split",
]

FEW_SHOT_DATASETS = ("synthetic", "miniimagenet", "cub", "folders")
SPLITS = ("train", "val", "test")
_FOLDER_CANDIDATES = {"train": ("train", "base"), "val": ("val", "validation"), "test": ("test", "novel")}
_CSV_COLUMNS = (("filename", "label"), ("image_name", "class_name"))


@dataclass(frozen=True)
class FewShotRecord:
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


def scan_miniimagenet_split(root: str | Path, split: str) -> list[FewShotRecord]:
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
    return [FewShotRecord(str(images / label / f if nested else images / f), label) for f, label in rows]


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


def cub_few_shot_split(class_position: int) -> str | None:
    """Chen et al.'s split of the ``i``-th class: ``i % 2 == 0`` train, ``% 4 == 1`` val, ``% 4 == 3`` test."""
    if class_position % 2 == 0:
        return "train"
    return "val" if class_position % 4 == 1 else "test"


def scan_cub(root: str | Path) -> dict[str, list[FewShotRecord]]:
    """Records of the three few-shot splits of CUB-200-2011 (:func:`cub_few_shot_split`), with boxes."""
    base = resolve_cub_root(root)
    images = _read_table(base / "images.txt", 2)
    labels = _read_table(base / "image_class_labels.txt", 2)
    classes = _read_table(base / "classes.txt", 2)
    boxes = _read_table(base / "bounding_boxes.txt", 5) if (base / "bounding_boxes.txt").is_file() else {}
    position = {cid: i for i, cid in enumerate(sorted(classes))}
    out: dict[str, list[FewShotRecord]] = {s: [] for s in SPLITS}
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
        out[split].append(FewShotRecord(str(base / "images" / rel), classes[cid][0], box))
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


def scan_class_folders(root: str | Path, split: str, split_folders: Sequence[str] | None = None) -> list[FewShotRecord]:
    """Records of ``root/<split>/<class>/<image>``; a class is any folder holding images directly."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"folders root {root} does not exist or is not a folder")
    folder = _split_folder(root, split, split_folders)
    records = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and path.parent != folder:
            records.append(FewShotRecord(str(path), path.parent.relative_to(folder).as_posix()))
    if not records:
        raise DatasetLayoutError(f"split folder {folder} holds no class folder with images ({IMAGE_EXTENSIONS})")
    return records


# -- datasets ------------------------------------------------------------------------------------


class FewShotImageDataset(Dataset):
    """Images listed by :class:`FewShotRecord` s; classes numbered by sorted class name.

    Items ``{"image": tv_tensors.Image uint8, "label": int}`` plus ``"box"`` (``BoundingBoxes``
    XYXY) when every record has one.
    """

    def __init__(self, records: Sequence[FewShotRecord]) -> None:
        self.records = list(records)
        names = sorted({r.class_name for r in self.records})
        self._label = {n: i for i, n in enumerate(names)}
        self.names = names
        self.has_boxes = bool(self.records) and all(r.box is not None for r in self.records)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [self._label[r.class_name] for r in self.records]

    @property
    def class_names(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, _ = split_item(item)
        r = self.records[index]
        image = load_image(r.path)
        out: dict[str, Any] = {"image": tv_tensors.Image(image), "label": self._label[r.class_name]}
        if self.has_boxes:
            H, W = image.shape[-2:]
            out["box"] = tv_tensors.BoundingBoxes(torch.tensor([r.box], dtype=torch.float32), format="XYXY",
                                                  canvas_size=(H, W))
        return out


class NormalizeImage:
    """uint8 image -> float in [0, 1] -> ``(x - mean) / std`` (the cheap, deterministic last step)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.as_subclass(torch.Tensor).float().div_(255.0).sub_(self.mean).div_(self.std)


class FewShotTransformDataset(Dataset):
    """Applies a transform to the items of a base few-shot dataset and relabels the classes.

    ``__getitem__`` accepts an index or ``(index, sample_seed)``; with a seed the (random)
    ``transform`` runs under a forked torch RNG seeded with it. ``transform`` gets the uint8 image
    (with ``box`` / ``mask`` when ``targets``) and ``post`` turns its image output into the network
    input (e.g. :class:`NormalizeImage`). With ``cache`` (a deterministic ``transform`` only) the
    output of ``transform`` is kept in memory, per process, and only ``post`` runs again: evaluation
    episodes reuse the same images many times.

    Items: ``{"image": float [3,H,W], "label": long, "index": long}`` plus ``"box": float [4]`` and
    ``"mask": bool [1,H,W]`` when ``targets`` and the base dataset has them.
    """

    def __init__(
        self,
        base: Dataset,
        transform: Callable,
        post: Callable | None = None,
        label_map: dict[int, int] | None = None,
        targets: bool = True,
        cache: bool = False,
    ) -> None:
        self.base = base
        self.transform = transform
        self.post = post
        self.label_map = label_map
        self.targets = targets
        self.cache = cache
        self._cache: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    @property
    def labels(self) -> list[int]:
        labels = list(self.base.labels)  # type: ignore[attr-defined]
        return [self.label_map[x] for x in labels] if self.label_map is not None else labels

    @property
    def class_names(self) -> dict[int, str]:
        names = self.base.class_names  # type: ignore[attr-defined]
        if self.label_map is None:
            return dict(names)
        return {self.label_map[k]: v for k, v in names.items()}

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        with single_thread():
            index, seed = split_item(item)
            out = self._cache.get(index) if self.cache else None
            if out is None:
                out = self._transformed(index, seed)
                if self.cache:
                    self._cache[index] = out
            out = dict(out)
            if self.post is not None:
                out["image"] = self.post(out["image"])
            return out

    def _transformed(self, index: int, seed: int | None) -> dict[str, Any]:
        sample = self.base[index]
        label = int(sample["label"])
        out: dict[str, Any] = {
            "label": torch.tensor(self.label_map[label] if self.label_map is not None else label, dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long),
        }
        keys = [k for k in ("box", "mask") if self.targets and k in sample]
        results = run_seeded(self.transform, sample["image"], *(sample[k] for k in keys), seed=seed)
        if not keys:
            results = (results,)
        image, *extras = results
        for key, value in zip(keys, extras):
            value = value.as_subclass(torch.Tensor)
            out[key] = value.reshape(4).float() if key == "box" else value.bool()
        out["image"] = image.as_subclass(torch.Tensor)
        return out


# -- the data module -----------------------------------------------------------------------------


class ClassImagesDataModule(LightningDataModule):
    """What the data modules over labelled class images share (few-shot and retrieval).

    A subclass calls :meth:`_init_images` in its ``__init__`` and implements ``_raw_datasets()``
    (split name -> untransformed dataset with ``labels``); it sets ``image_size``, ``padding``,
    ``flip_prob``, ``color_jitter``, ``num_workers`` and ``eval_cache``. This class gives the lazy
    synthetic generator, the ImageNet normalisation and its inverse, the number of training classes,
    the default augmentation and the wrapping of a raw split into network inputs.
    """

    dataset: str

    def _init_images(self, synthetic_config: SyntheticClassesConfig | None, synthetic_seed: int,
                     check_images: bool = True) -> None:
        self.check_images = bool(check_images)
        self._images_checked: set[str] = set()
        self.synthetic_config = synthetic_config if self.dataset == "synthetic" else None
        self.synthetic_seed = int(synthetic_seed)
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD
        #: names of the masks (``batch["mask"][:, i]`` is ``mask_names[i]``); empty without masks
        self.mask_names: tuple[str, ...] = SyntheticClasses.mask_names if self.dataset == "synthetic" else ()
        self._generator: SyntheticClasses | None = None
        self._raw: dict[str, Dataset] | None = None
        self.datasets: dict[str, FewShotTransformDataset] = {}

    def _raw_datasets(self) -> dict[str, Dataset]:
        raise NotImplementedError

    def _check_image_files(self, splits: Sequence[str]) -> None:
        """At ``setup``: check the image files of ``splits`` once (:mod:`datamodules.image_check`)."""
        if self.check_images and self.dataset != "synthetic":
            source = f"{self.dataset} at {self.root}"
            check_split_images(self._raw_datasets(), splits, self._images_checked, source)

    def _setup_split(self, split: str) -> None:
        """``setup`` for the stage that reads ``split`` (only its images are checked)."""
        self.setup({"train": "fit", "val": "validate"}.get(split, "test"))

    @property
    def generator(self) -> SyntheticClasses | None:
        """The synthetic generator (``None`` for real data)."""
        if self.dataset == "synthetic" and self._generator is None:
            self._generator = SyntheticClasses(seed=self.synthetic_seed, config=self.synthetic_config)
        return self._generator

    @property
    def num_classes(self) -> int:
        """Number of training (base) classes (reads the training split on first use, before ``setup``);
        ``train.py`` links it to the model (classifiers, proxy and classification losses)."""
        return len(set(self._raw_datasets()["train"].labels))  # type: ignore[attr-defined]

    def class_names(self, split: str) -> dict[int, str]:
        """Name of each class (by its label within the split, as in ``batch["label"]``)."""
        self._setup_split(split)
        return self.datasets[split].class_names

    @property
    def has_boxes(self) -> bool:
        """Whether evaluation batches carry ``box`` (synthetic and CUB)."""
        raw = self._raw_datasets()["test"]
        return self.dataset == "synthetic" or bool(getattr(raw, "has_boxes", False))

    # -- transforms ------------------------------------------------------------------------------

    def train_transform(self) -> v2.Compose:
        """Resize to ``image_size``, pad + random crop back, flip, optional colour jitter."""
        t: list[Any] = [v2.Resize(self.image_size, antialias=True)]
        if self.padding > 0:
            t += [v2.Pad(self.padding), v2.RandomCrop(self.image_size)]
        if self.flip_prob > 0:
            t.append(v2.RandomHorizontalFlip(self.flip_prob))
        if self.color_jitter > 0:
            j = self.color_jitter
            t.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
        return v2.Compose(t)

    def eval_transform(self) -> v2.Compose:
        return v2.Compose([v2.Resize(self.image_size, antialias=True)])

    def normalize(self) -> NormalizeImage:
        return NormalizeImage(self.mean, self.std)

    def denormalize(self, images: torch.Tensor, as_uint8: bool = False) -> torch.Tensor:
        """Undo the normalisation: float images in [0, 1] (or uint8 with ``as_uint8``), same shape."""
        return denormalize_images(images, self.mean, self.std, as_uint8)

    def _transformed(self, raw: Dataset, train: bool) -> FewShotTransformDataset:
        """A raw split as network inputs, its labels remapped to 0..C-1 in sorted order."""
        labels = sorted(set(raw.labels))  # type: ignore[attr-defined]
        return FewShotTransformDataset(
            raw,
            self.train_transform() if train else self.eval_transform(),
            post=self.normalize(),
            label_map={label: i for i, label in enumerate(labels)},
            targets=not train,
            cache=self.eval_cache and not train,
        )

    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
        }


class FewShotDataModule(ClassImagesDataModule):
    """Episodic few-shot data: miniImageNet, CUB-200-2011, class folders or the synthetic classes.

    Args:
        dataset: which layout (see the module docstring); ``"synthetic"`` needs no ``root``.
        root: the folder holding the layout.
        split_folders: names of the train / val / test folders for ``"folders"`` (default: found
            among ``train|base``, ``val|validation``, ``test|novel``).
        image_size: (height, width) of the network input (84x84 for miniImageNet and CUB).
        train_way: N of the training episodes (ProtoNet trains with more ways than it tests).
        train_shot: K of the training episodes.
        train_query: Q of the training episodes.
        eval_way: N of the validation and test episodes.
        eval_shot: K of the validation and test episodes.
        eval_query: Q of the validation and test episodes (15 in the FAM paper).
        train_episodes: training episodes per epoch.
        val_episodes: validation episodes (the same every epoch).
        test_episodes: test episodes (2,000 as in the FAM paper).
        eval_batch_size: batch size of the predict loader (test split, no episodes).
        num_workers: data-loader worker processes.
        padding: zero padding before the random crop back to ``image_size`` (0: no crop).
        flip_prob: probability of a horizontal flip.
        color_jitter: strength of brightness / contrast / saturation jitter (0 disables it).
        eval_cache: keep the resized evaluation images in memory (per worker process; 84x84 uint8 is
            21 KB an image, e.g. 250 MB for miniImageNet's 12,000 test images).
        seed: seed of the training episodes and augmentation (a function of seed and epoch only).
        eval_seed: seed of the fixed validation and test episodes.
        synthetic_num_classes: synthetic classes in all.
        synthetic_images_per_class: images of each synthetic class.
        synthetic_splits: synthetic train / val / test class counts (adding up to the number of classes;
            default: miniImageNet's 64 / 16 / 20 proportions, exactly those for 100 classes).
        synthetic_size: native size of the synthetic images (square).
        synthetic_seed: seed of the synthetic data.
        check_images: at ``setup``, check that every image file the stage needs can be read (size, header
            and end marker, :mod:`datamodules.image_check`); ``fit`` checks all three splits.
    """

    def __init__(
        self,
        dataset: Literal["synthetic", "miniimagenet", "cub", "folders"] = "synthetic",
        root: str | None = None,
        split_folders: tuple[str, str, str] | None = None,
        image_size: tuple[int, int] = (84, 84),
        train_way: int = 5,
        train_shot: int = 1,
        train_query: int = 15,
        eval_way: int = 5,
        eval_shot: int = 1,
        eval_query: int = 15,
        train_episodes: int = 100,
        val_episodes: int = 200,
        test_episodes: int = 2000,
        eval_batch_size: int = 128,
        num_workers: int = 2,
        padding: int = 8,
        flip_prob: float = 0.5,
        color_jitter: float = 0.0,
        eval_cache: bool = True,
        seed: int = 0,
        eval_seed: int = 0,
        synthetic_num_classes: int = 100,
        synthetic_images_per_class: int = 60,
        synthetic_splits: tuple[int, int, int] | None = None,
        synthetic_size: int = 84,
        synthetic_seed: int = 0,
        check_images: bool = True,
    ) -> None:
        super().__init__()
        if dataset not in FEW_SHOT_DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}, expected one of {FEW_SHOT_DATASETS}")
        self.save_hyperparameters()
        self.dataset = dataset
        self.root = root
        self.split_folders = tuple(split_folders) if split_folders else None
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.train_episode = (int(train_way), int(train_shot), int(train_query))
        self.eval_episode = (int(eval_way), int(eval_shot), int(eval_query))
        self.episodes = {"train": int(train_episodes), "val": int(val_episodes), "test": int(test_episodes)}
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.padding = int(padding)
        self.flip_prob = float(flip_prob)
        self.color_jitter = float(color_jitter)
        self.eval_cache = bool(eval_cache)
        self.seed = int(seed)
        self.eval_seed = int(eval_seed)
        self._init_images(
            SyntheticClassesConfig(
                num_classes=synthetic_num_classes,
                images_per_class=synthetic_images_per_class,
                height=synthetic_size,
                width=synthetic_size,
                few_shot_splits=tuple(synthetic_splits) if synthetic_splits else None,
            ) if dataset == "synthetic" else None,
            synthetic_seed,
            check_images,
        )

    # -- raw data --------------------------------------------------------------------------------

    def _source(self, split: str) -> str:
        if self.dataset == "synthetic":
            return f"the synthetic {split} split"
        if self.dataset == "miniimagenet":
            return f"the {split} split ({Path(self.root or '.') / f'{split}.csv'})"
        return f"the {split} split of {self.dataset} at {self.root}"

    def _raw_datasets(self) -> dict[str, Dataset]:
        """Untransformed train / val / test datasets (scanned once, cached)."""
        if self._raw is None:
            if self.dataset == "synthetic":
                gen = self.generator
                assert gen is not None
                self._raw = {s: gen.dataset(s) for s in SPLITS}
            elif self.dataset == "miniimagenet":
                if self.root is None:
                    raise DatasetLayoutError("dataset='miniimagenet' needs a root folder (root=None)")
                self._raw = {s: FewShotImageDataset(scan_miniimagenet_split(self.root, s)) for s in SPLITS}
            elif self.dataset == "cub":
                records = scan_cub(self.root)  # type: ignore[arg-type]
                for split, recs in records.items():
                    if not recs:
                        raise DatasetLayoutError(f"{self._source(split)} has no images")
                self._raw = {s: FewShotImageDataset(records[s]) for s in SPLITS}
            else:
                if self.root is None:
                    raise DatasetLayoutError("dataset='folders' needs a root folder (root=None)")
                self._raw = {s: FewShotImageDataset(scan_class_folders(self.root, s, self.split_folders))
                             for s in SPLITS}
        return self._raw

    # -- Lightning hooks -------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        eval_splits = {"validate": ("val",), "test": ("test",), "predict": ("test",)}
        self._check_image_files(eval_splits.get(stage, SPLITS))  # fit: every split
        if self.datasets:
            return
        raw = self._raw_datasets()
        for split in SPLITS:
            if not raw[split].labels:  # type: ignore[attr-defined]
                raise DatasetLayoutError(f"{self._source(split)} has no images")
            self.datasets[split] = self._transformed(raw[split], train=split == "train")

    def episode_sampler(self, split: str) -> EpisodeSampler:
        """The episode sampler of a split (training: new episodes every epoch; val / test: fixed)."""
        self._setup_split(split)
        dataset = self.datasets[split]
        way, shot, query = self.train_episode if split == "train" else self.eval_episode
        seed = self.seed if split == "train" else mix_seed(self.eval_seed, SPLITS.index(split))
        try:
            return EpisodeSampler(
                dataset.labels, way, shot, query, episodes_per_epoch=self.episodes[split], seed=seed,
                fixed=split != "train", source=self._source(split), class_names=dataset.class_names,
            )
        except ValueError as e:
            raise DatasetLayoutError(str(e)) from e

    def episode_batch(self, split: str, episode: int = 0) -> dict[str, Any]:
        """The collated batch of global ``episode`` of the fixed ``"val"`` / ``"test"`` episodes (the one
        the evaluation loader yields at that position with one process), e.g. fixed probes for callbacks."""
        if split not in ("val", "test"):
            raise ValueError(f"episode_batch is for the fixed val / test episodes, got {split!r}")
        sampler = self.episode_sampler(split)
        _, indices = sampler.episode(0, episode)
        dataset = self.datasets[split]
        return EpisodeCollate(sampler.n_way, sampler.k_shot, sampler.q_query)([dataset[i] for i in indices])

    def _episode_loader(self, split: str) -> DataLoader:
        sampler = self.episode_sampler(split)
        collate = EpisodeCollate(sampler.n_way, sampler.k_shot, sampler.q_query)
        return DataLoader(self.datasets[split], batch_sampler=sampler, collate_fn=collate, **self._loader_kwargs())

    def train_dataloader(self) -> DataLoader:
        return self._episode_loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._episode_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._episode_loader("test")

    def predict_dataloader(self) -> DataLoader:
        self.setup("predict")
        return DataLoader(self.datasets["test"], batch_size=self.eval_batch_size, shuffle=False,
                          **self._loader_kwargs())
