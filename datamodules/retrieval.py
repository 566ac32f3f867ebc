"""Image retrieval data: CUB-200-2011 (retrieval split), one folder per class, the synthetic classes.

:class:`RetrievalDataModule` gives

* a training loader of class-balanced batches, ``m_per_class`` images of each of
  ``batch_size / m_per_class`` classes (:class:`~datamodules.samplers.MPerClassBatchSampler`: the
  draw of pytorch-metric-learning's ``MPerClassSampler`` on its own generator, deterministic per
  ``(seed, epoch)``, whole batches split between DDP processes), with augmentation; batches ``{"image": float [B,3,H,W]
  (ImageNet-normalised), "label": long [B] (training class, 0..C-1), "index": long [B]}``;
* evaluation loaders in a fixed order, ``{"image", "label" (class within the split, 0..C'-1), "index"
  (position in the split)}`` plus, where the data has them, ``"box": float [B,4]`` (x1, y1, x2, y2 in
  pixels of the transformed image: CUB and synthetic) and ``"mask": bool [B,1,H,W]`` (the object's
  pixels: synthetic); every image is a query and the other images of its split its references
  (``cama.metrics.RetrievalMetric``). The test (and predict) loader is the test split; the
  validation loader the last ``val_classes`` training classes, held out of training
  (:mod:`datamodules.holdout`), or with ``validate_on_test`` the test split.

Layouts (``dataset``, looked up among the class layouts of :mod:`datamodules.class_layouts`, or the
class path of a :class:`~datamodules.class_layouts.ClassLayout` of your own):

* ``"cub200"`` (or ``"cub"``): the CUB-200-2011 folder (``images.txt``, ``image_class_labels.txt``, ``classes.txt``,
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
* ``"synthetic"``: :class:`~datamodules.synthetic.SyntheticClasses` drawn on the fly
  (shape x texture x colour on clutter, with box and mask): the first half of the classes trains,
  the second half is the test split; its options are the nested ``synthetic``
  (:class:`~datamodules.class_layouts.SyntheticClassesOptions`).

A missing root or file, a broken annotation line, a class id that ``classes.txt`` does not list, an
empty split and an unreadable image stop the run with :class:`DatasetLayoutError`
(:class:`UnreadableImageError` for images) naming the file and the layout expected.

The layouts are read by :mod:`datamodules.class_scan` (:func:`scan_cub_retrieval`,
:func:`scan_retrieval_folders`, re-exported here).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .batch_augment import BatchPadCropFlip
from .class_images import ClassImagesDataModule
from .class_layouts import SyntheticClassesOptions
from .class_scan import RETRIEVAL_SPLITS, scan_cub_retrieval, scan_retrieval_folders
from .errors import DatasetLayoutError, UnreadableImageError
from .eval_order import SpreadSampler
from .holdout import HeldOutSubset, check_validation_options, default_val_ids, hold_out_classes
from .images import colour_jitter, flip
from .samplers import MPerClassBatchSampler

__all__ = [
    "DatasetLayoutError",
    "UnreadableImageError",
    "MPerClassBatchSampler",
    "RetrievalDataModule",
    "scan_cub_retrieval",
    "scan_retrieval_folders",
]

# -- the data module -----------------------------------------------------------------------------


class RetrievalDataModule(ClassImagesDataModule):
    """Image retrieval data: CUB-200-2011, class folders or the synthetic classes (module docstring).

    Args:
        dataset: ``"synthetic"`` (no ``root``), ``"cub200"``, ``"folders"`` or another registered class
            layout or layout class path giving train / test splits.
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
        synthetic: the synthetic classes (a generated layout only; first half train, second half
            test), a nested mapping in a config: ``num_classes``, ``images_per_class``, ``height``,
            ``width``, ``seed``, ... (:class:`~datamodules.class_layouts.SyntheticClassesOptions`;
            ``None``: its defaults, 100 classes of 60 84x84 images).
        check_images: at ``setup``, check that every image file the stage needs can be read (size, header
            and end marker, :mod:`datamodules.image_check`); ``fit`` checks both splits.
        val_classes: the last training classes (by label), held out as the validation split (every
            image a query against the others, as the test split); they no longer train. ``None``: a
            tenth of the training classes. Must be ``None`` or 0 with ``validate_on_test``.
        validate_on_test: validate on the test split (the MS-loss paper's practice: the checkpoint
            chosen by its validation score has then seen the test classes); every training class trains.
    """

    splits = RETRIEVAL_SPLITS
    layout_options = ("cub_train_classes",)

    def __init__(
        self,
        dataset: str = "synthetic",
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
        synthetic: SyntheticClassesOptions | None = None,
        check_images: bool = True,
        val_classes: int | None = None,
        validate_on_test: bool = False,
    ) -> None:
        check_validation_options(val_classes, validate_on_test, "val_classes", "training classes")
        if crop_scale is not None and not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale}")
        if int(batch_size) % int(m_per_class) or int(m_per_class) < 1:
            raise ValueError(
                f"batch_size={batch_size} must be a positive multiple of m_per_class={m_per_class}"
            )
        super().__init__(dataset, root, {"cub_train_classes": cub_train_classes}, image_size, padding, flip_prob,
                         color_jitter, num_workers, eval_cache, synthetic, check_images)
        self.save_hyperparameters(ignore=self.inapplicable_options())
        self._plain_synthetic_hparams()
        self.resize_size = int(resize_size) if resize_size else None
        self.crop_scale = tuple(float(s) for s in crop_scale) if crop_scale is not None else None
        self.m_per_class = int(m_per_class)
        self.batch_size = int(batch_size)
        self.batches_per_epoch = int(batches_per_epoch) if batches_per_epoch else None
        self.eval_batch_size = int(eval_batch_size)
        self.seed = int(seed)
        self.cub_train_classes = cub_train_classes
        self.val_classes = None if val_classes is None else int(val_classes)
        self.validate_on_test = bool(validate_on_test)

    # -- raw data --------------------------------------------------------------------------------

    def _raw_datasets(self) -> dict[str, Dataset]:
        """Untransformed train / test datasets (scanned once, cached)."""
        if self._raw is None:
            self._raw = self._layout_datasets()
            if not self.validate_on_test:
                train = self._raw["train"]
                labels = train.labels  # type: ignore[attr-defined]
                count = self.val_classes if self.val_classes is not None else default_val_ids(len(set(labels)))
                kept, held = hold_out_classes(labels, count)
                self._raw.update(train=HeldOutSubset(train, kept), val=HeldOutSubset(train, held))
                rank_zero_info(f"validation: the last {count} of the {len(set(labels))} training classes of "
                               f"{self.dataset} held out ({len(held)} images; val_classes sets how many, "
                               "validate_on_test: true validates on the test split instead)")
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
        return v2.Compose(t + flip(self.flip_prob) + colour_jitter(self.color_jitter))

    def batch_augmentation(self) -> BatchPadCropFlip | None:
        """None with random resized crops (they run per image), else the few-shot augmentation's."""
        return None if self.crop_scale is not None else super().batch_augmentation()

    def eval_transform(self) -> v2.Compose:
        if self.resize_size:
            return v2.Compose([v2.Resize(self.resize_size, antialias=True), v2.CenterCrop(self.image_size)])
        return super().eval_transform()

    # -- Lightning hooks -------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        held_out = () if self.validate_on_test else ("val",)
        needed = {"fit": (*RETRIEVAL_SPLITS, *held_out), "validate": held_out or ("test",)}
        self._check_image_files(needed.get(stage or "fit", ("test",)))
        if self.datasets:
            return
        raw = self._raw_datasets()
        for split in (*RETRIEVAL_SPLITS, *held_out):
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
        return DataLoader(self.datasets["train"], batch_sampler=sampler, collate_fn=self.train_collate(),
                          **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        """The held-out training classes (the test split with ``validate_on_test``)."""
        return self._eval_loader(split="test" if self.validate_on_test else "val")

    def _eval_loader(self, spread: bool = True, split: str = "test") -> DataLoader:
        """A split (the test split by default); ``spread``: the classes interleaved so that any prefix
        (a sanity check, ``limit_val_batches``) holds every class in proportion
        (:mod:`datamodules.eval_order`)."""
        self.setup("validate" if split == "val" else "test")
        dataset = self.datasets[split]
        sampler = SpreadSampler(dataset.labels) if spread else None
        return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=sampler, shuffle=False,
                          **self._loader_kwargs())
