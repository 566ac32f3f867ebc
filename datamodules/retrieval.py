"""Image retrieval data: CUB-200-2011 (retrieval split), one folder per class, the synthetic classes.

:class:`RetrievalDataModule` gives

* a training loader of class-balanced batches, ``m_per_class`` images of each of
  ``batch_size / m_per_class`` classes (pytorch-metric-learning's ``MPerClassSampler`` inside
  :class:`MPerClassBatchSampler`, which makes it deterministic per ``(seed, epoch)`` and splits whole
  batches between DDP processes), with augmentation; batches ``{"image": float [B,3,H,W]
  (ImageNet-normalised), "label": long [B] (training class, 0..C-1), "index": long [B]}``;
* one evaluation loader (validation, test and predict alike: the retrieval protocol has no separate
  validation split) over the whole test split, in a fixed order, ``{"image", "label" (test class,
  0..C'-1), "index" (position in the test split)}`` plus, where the data has them, ``"box": float
  [B,4]`` (x1, y1, x2, y2 in pixels of the transformed image: CUB and synthetic) and ``"mask": bool
  [B,1,H,W]`` (the object's pixels: synthetic). Every test image is a query and the other test
  images its references (``cama.metrics.RetrievalMetric``).

Layouts (``dataset``):

* ``"cub200"``: the CUB-200-2011 folder (``images.txt``, ``image_class_labels.txt``, ``classes.txt``,
  ``bounding_boxes.txt``, ``images/``; ``root`` may be its parent). The retrieval split of the
  MS-loss paper (and fam Sec. V-A): the classes with the smallest ids are the training classes,
  the others the test classes -- classes 1-100 (5,864 images) and 101-200 (5,924 images) of the
  200; ``cub_train_classes`` changes the count (default: half of ``classes.txt``).
  ``train_test_split.txt`` is not used. Boxes from ``bounding_boxes.txt`` (``x y width height``)
  become ``x1, y1, x2, y2`` and follow the image through resizing and cropping;
* ``"folders"``: one folder per class, either under split folders, ``root/train/<class>/<image>``
  and ``root/test/<class>/<image>`` (``base`` / ``novel`` are accepted too), or directly under
  ``root`` (``root/<class>/<image>``), when the classes sorted by name are split in two: the first
  half (rounded down) trains, the second half is the test split (the CUB convention). A class is any
  folder holding images directly (nested class folders keep their relative path as the name);
* ``"synthetic"``: :class:`~datamodules.synthetic_classes.SyntheticClasses` drawn on the fly
  (shape x texture x colour on clutter, with box and mask): the first half of the classes trains,
  the second half is the test split.

A missing root or file, a broken annotation line, a class id that ``classes.txt`` does not list, an
empty split and an unreadable image stop the run with :class:`DatasetLayoutError`
(:class:`UnreadableImageError` for images) naming the file and the layout expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils import common_functions as pml_common
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from .fewshot import (
    ClassImagesDataModule,
    FewShotImageDataset,
    FewShotRecord,
    _read_table,
    resolve_cub_root,
    scan_class_folders,
)
from .errors import DatasetLayoutError, UnreadableImageError
from .eval_order import SpreadSampler
from .samplers import PKSampler
from .seeding import mix_seed
from .synthetic_classes import SyntheticClassesConfig

__all__ = [
    "DatasetLayoutError",
    "UnreadableImageError",
    "RETRIEVAL_DATASETS",
    "MPerClassBatchSampler",
    "RetrievalDataModule",
    "scan_cub_retrieval",
    "scan_retrieval_folders",
]

RETRIEVAL_DATASETS = ("synthetic", "cub200", "folders")
RETRIEVAL_SPLITS = ("train", "test")


# -- scanning the layouts ------------------------------------------------------------------------


def scan_cub_retrieval(
    root: str | Path | None, num_train_classes: int | None = None
) -> dict[str, list[FewShotRecord]]:
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
    out: dict[str, list[FewShotRecord]] = {s: [] for s in RETRIEVAL_SPLITS}
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
        out[split].append(FewShotRecord(str(base / "images" / rel), classes[cid][0], box))
    if boxes and any(r.box is None for s in out.values() for r in s):
        missing = next(r.path for s in out.values() for r in s if r.box is None)
        raise DatasetLayoutError(f"{base / 'bounding_boxes.txt'} has no box for the image {missing}")
    return out


def scan_retrieval_folders(root: str | Path | None) -> dict[str, list[FewShotRecord]]:
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


# -- sampling ------------------------------------------------------------------------------------


class MPerClassBatchSampler(PKSampler):
    """Batches of ``batch_size / m`` classes x ``m`` images, drawn by pytorch-metric-learning's
    ``MPerClassSampler``, as ``(index, sample_seed)`` pairs.

    ``MPerClassSampler`` draws from NumPy's global generator; here every epoch's index list is drawn
    with a generator seeded by ``(seed, epoch)`` (the global one is left alone), so the batches, and
    the augmentations seeded per item, depend only on the seed and the epoch. An epoch has
    ``batches_per_epoch`` global batches (default ``len(labels) // batch_size``), and under DDP rank
    ``r`` gets whole batches ``r, r + R, ...`` (the machinery of
    :class:`~datamodules.samplers.PKSampler`), so every process sees ``m`` images per class.

    Args:
        labels: the class of each dataset index.
        m: images per class in a batch (a class with fewer images is sampled with replacement).
        batch_size: images per batch, a multiple of ``m``; at most ``m`` x the number of classes.
        seed, num_replicas, rank, batches_per_epoch, sampler, drop_last: as for ``PKSampler``.
    """

    def __init__(
        self,
        labels: Sequence[int],
        m: int,
        batch_size: int,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        batches_per_epoch: int | None = None,
        sampler: Sampler | None = None,
        drop_last: bool = True,
    ) -> None:
        m, batch_size = int(m), int(batch_size)
        if m < 1 or batch_size < 1 or batch_size % m:
            raise ValueError(f"batch_size={batch_size} must be a positive multiple of m_per_class={m}")
        num_labels = len(set(int(x) for x in labels))
        if batch_size // m > num_labels:
            raise ValueError(
                f"a batch of {batch_size} images with m_per_class={m} needs {batch_size // m} classes, "
                f"the training split has {num_labels}"
            )
        super().__init__(labels, batch_size // m, m, seed=seed, num_replicas=num_replicas, rank=rank,
                         batches_per_epoch=batches_per_epoch, sampler=sampler, drop_last=drop_last)
        self.m = m

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All global batches (index lists, every rank's) of an epoch."""
        total = self.batches_per_rank * self.num_replicas
        sampler = MPerClassSampler(self.labels, self.m, batch_size=self.batch_size,
                                   length_before_new_iter=total * self.batch_size)
        saved = pml_common.NUMPY_RANDOM
        pml_common.NUMPY_RANDOM = np.random.RandomState(mix_seed(self.seed, epoch) % (2**32))
        try:
            order = [int(i) for i in sampler]
        finally:
            pml_common.NUMPY_RANDOM = saved
        return [order[b * self.batch_size : (b + 1) * self.batch_size] for b in range(total)]


# -- the data module -----------------------------------------------------------------------------


class RetrievalDataModule(ClassImagesDataModule):
    """Image retrieval data: CUB-200-2011, class folders or the synthetic classes (module docstring).

    Args:
        dataset: ``"synthetic"`` (no ``root``), ``"cub200"`` or ``"folders"``.
        root: the folder holding the layout.
        image_size: (height, width) of the network input.
        resize_size: when set, evaluation images are resized so that their shorter side is this
            long (256 in the MS-loss paper) and cropped to ``image_size`` at the centre, and training
            images are resized so before the random resized crop (``crop_scale``); when ``None``
            images are resized to ``image_size`` directly.
        crop_scale: (min, max) area fraction of the training ``RandomResizedCrop`` to ``image_size``
            ((0.16, 1) in the MS-loss code); ``None``: training images are resized to ``image_size``,
            padded by ``padding`` and cropped back at random.
        padding: zero padding before the random crop when ``crop_scale`` is ``None`` (0: no crop).
        flip_prob: probability of a horizontal flip.
        color_jitter: strength of brightness / contrast / saturation jitter (0 disables it).
        m_per_class: images per class in a training batch (5 in the MS-loss paper).
        batch_size: training batch size, a multiple of ``m_per_class`` (80 in the MS-loss paper).
        batches_per_epoch: training batches per epoch (default: training images // batch_size).
        eval_batch_size: batch size of the evaluation loader.
        num_workers: data-loader worker processes.
        eval_cache: keep the transformed evaluation images in memory (per worker process).
        seed: seed of the training batches and augmentation (a function of seed and epoch only).
        cub_train_classes: CUB classes (smallest ids) used for training (default: half, 100 of 200).
        synthetic_num_classes: synthetic classes in all (first half train, second half test).
        synthetic_images_per_class: images of each synthetic class.
        synthetic_size: native size of the synthetic images (square).
        synthetic_seed: seed of the synthetic data.
        check_images: at ``setup``, check that every image file the stage needs can be read (size, header
            and end marker, :mod:`datamodules.image_check`); ``fit`` checks both splits.
    """

    def __init__(
        self,
        dataset: Literal["synthetic", "cub200", "folders"] = "synthetic",
        root: str | None = None,
        image_size: tuple[int, int] = (224, 224),
        resize_size: int | None = None,
        crop_scale: tuple[float, float] | None = None,
        padding: int = 0,
        flip_prob: float = 0.5,
        color_jitter: float = 0.0,
        m_per_class: int = 5,
        batch_size: int = 80,
        batches_per_epoch: int | None = None,
        eval_batch_size: int = 128,
        num_workers: int = 2,
        eval_cache: bool = True,
        seed: int = 0,
        cub_train_classes: int | None = None,
        synthetic_num_classes: int = 100,
        synthetic_images_per_class: int = 60,
        synthetic_size: int = 84,
        synthetic_seed: int = 0,
        check_images: bool = True,
    ) -> None:
        super().__init__()
        if dataset not in RETRIEVAL_DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}, expected one of {RETRIEVAL_DATASETS}")
        if crop_scale is not None and not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale}")
        if int(batch_size) % int(m_per_class) or int(m_per_class) < 1:
            raise ValueError(
                f"batch_size={batch_size} must be a positive multiple of m_per_class={m_per_class}"
            )
        self.save_hyperparameters()
        self.dataset = dataset
        self.root = root
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.resize_size = int(resize_size) if resize_size else None
        self.crop_scale = tuple(float(s) for s in crop_scale) if crop_scale is not None else None
        self.padding = int(padding)
        self.flip_prob = float(flip_prob)
        self.color_jitter = float(color_jitter)
        self.m_per_class = int(m_per_class)
        self.batch_size = int(batch_size)
        self.batches_per_epoch = int(batches_per_epoch) if batches_per_epoch else None
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.eval_cache = bool(eval_cache)
        self.seed = int(seed)
        self.cub_train_classes = cub_train_classes
        self._init_images(
            SyntheticClassesConfig(
                num_classes=synthetic_num_classes,
                images_per_class=synthetic_images_per_class,
                height=synthetic_size,
                width=synthetic_size,
            ) if dataset == "synthetic" else None,
            synthetic_seed,
            check_images,
        )

    # -- raw data --------------------------------------------------------------------------------

    def _raw_datasets(self) -> dict[str, Dataset]:
        """Untransformed train / test datasets (scanned once, cached)."""
        if self._raw is None:
            if self.dataset == "synthetic":
                gen = self.generator
                assert gen is not None
                # the raw renders are cached (per process): drawing costs more than augmenting
                self._raw = {s: gen.dataset(gen.retrieval_classes(s), cache=True) for s in RETRIEVAL_SPLITS}
            else:
                if self.dataset == "cub200":
                    records = scan_cub_retrieval(self.root, self.cub_train_classes)
                else:
                    records = scan_retrieval_folders(self.root)
                for split, recs in records.items():
                    if not recs:
                        raise DatasetLayoutError(
                            f"the {split} split of {self.dataset} at {self.root} has no images"
                        )
                self._raw = {s: FewShotImageDataset(records[s]) for s in RETRIEVAL_SPLITS}
        return self._raw

    @property
    def num_test_classes(self) -> int:
        return len(set(self._raw_datasets()["test"].labels))  # type: ignore[attr-defined]

    # -- transforms ------------------------------------------------------------------------------

    def train_transform(self) -> v2.Compose:
        if self.crop_scale is None:  # resize, pad + random crop, flip, jitter: the few-shot augmentation
            return super().train_transform()
        t: list[Any] = [v2.Resize(self.resize_size, antialias=True)] if self.resize_size else []
        t.append(v2.RandomResizedCrop(self.image_size, scale=self.crop_scale, antialias=True))
        if self.flip_prob > 0:
            t.append(v2.RandomHorizontalFlip(self.flip_prob))
        if self.color_jitter > 0:
            j = self.color_jitter
            t.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
        return v2.Compose(t)

    def eval_transform(self) -> v2.Compose:
        if self.resize_size:
            return v2.Compose([v2.Resize(self.resize_size, antialias=True), v2.CenterCrop(self.image_size)])
        return super().eval_transform()

    # -- Lightning hooks -------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        self._check_image_files(RETRIEVAL_SPLITS if stage in (None, "fit") else ("test",))
        if self.datasets:
            return
        raw = self._raw_datasets()
        for split in RETRIEVAL_SPLITS:
            self.datasets[split] = self._transformed(raw[split], train=split == "train")

    def train_sampler(self) -> MPerClassBatchSampler:
        self.setup("fit")
        try:
            return MPerClassBatchSampler(self.datasets["train"].labels, self.m_per_class, self.batch_size,
                                         seed=self.seed, batches_per_epoch=self.batches_per_epoch)
        except ValueError as e:
            raise DatasetLayoutError(f"the training split of {self.dataset}: {e}") from e

    def train_dataloader(self) -> DataLoader:
        sampler = self.train_sampler()
        return DataLoader(self.datasets["train"], batch_sampler=sampler, **self._loader_kwargs())

    def _eval_loader(self, spread: bool = True) -> DataLoader:
        """The test split; ``spread``: the classes interleaved so that any prefix (a sanity check,
        ``limit_val_batches``) holds every class in proportion (:mod:`datamodules.eval_order`)."""
        self.setup("test")
        dataset = self.datasets["test"]
        sampler = SpreadSampler(dataset.labels) if spread else None
        return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=sampler, shuffle=False,
                          **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(spread=False)
