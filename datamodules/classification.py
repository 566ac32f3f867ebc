"""Image classification data: training and held-out test images of the *same* classes (synthetic).

The few-shot and retrieval modules test on classes never seen in training; a softmax classifier (the
network of dist-cam Table 1 and of ltgrad-cam's experiments) is tested on new images of its own
classes. :class:`ClassificationDataModule` draws ``synthetic.num_classes`` classes of the embedded
generator (:class:`~datamodules.synthetic.SyntheticClasses`: an object of a shape x texture x colour
class at a random place on clutter, with box and mask) and, since every image is a function of
``(seed, class, index)``, splits each class by image index:

* ``train``: images ``0 .. train_images_per_class - 1`` of every class, in class-balanced batches of
  ``m_per_class`` images of ``batch_size / m_per_class`` classes
  (:class:`~datamodules.samplers.MPerClassBatchSampler`: deterministic per ``(seed, epoch)``), with
  augmentation (resize, pad + random crop, flip, optional colour jitter); batches ``{"image": float
  [B,3,H,W] (ImageNet-normalised), "label": long [B], "index": long [B]}``;
* ``val`` (only with ``val_images_per_class > 0``): the next ``val_images_per_class`` images of every
  class, neither trained on nor tested (what a bench chooses its thresholds on, and what Lightning's
  validation loop runs on; without them it runs on the test images);
* ``test``: the other ``synthetic.images_per_class - train_images_per_class - val_images_per_class``
  images of every class,
  never seen in training; the evaluation loader (validation, test and predict alike: there is no
  separate validation split) yields them in a fixed order with the classes interleaved, with
  ``"box": float [B,4]`` (x1, y1, x2, y2 in pixels) and ``"mask": bool [B,1,H,W]`` (the object).

:meth:`ClassificationDataModule.eval_dataloader` also gives the *training* images without
augmentation and with their boxes and masks (class prototypes, dist-cam Eq. 7; scores on the
training images, ltgrad-cam Fig. 5). ``index`` is the position within the split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from torch.utils.data import DataLoader, Dataset

from .class_images import ClassImagesDataModule
from .class_layouts import SyntheticClassesOptions
from .errors import DatasetLayoutError
from .eval_order import SpreadSampler
from .samplers import MPerClassBatchSampler, split_item

__all__ = ["CLASSIFICATION_SPLITS", "ClassificationSyntheticOptions", "ImageSubset", "ClassificationDataModule"]

CLASSIFICATION_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ClassificationSyntheticOptions(SyntheticClassesOptions):
    """The synthetic classes of :class:`ClassificationDataModule`: :class:`SyntheticClassesOptions`
    with smaller defaults (30 classes of 60 64x64 images).

    Attributes:
        num_classes: number of classes.
        images_per_class: images of each class (train + test).
        height: native image height (draw at the network's size to skip the resize).
        width: native image width.
        few_shot_splits: unused here.
        object_size: (min, max) radius of the object as a fraction of the shorter image side.
        aspect: (min, max) aspect-ratio jitter of the object.
        clutter: (min, max) number of small clutter shapes behind the object.
        clutter_size: (min, max) clutter radius as a fraction of the shorter side.
        colour_jitter: per-channel jitter of the object's colour (in [0, 1] units).
        gain: (min, max) global light gain.
        noise_std: (min, max) Gaussian noise standard deviation (in [0, 1] units).
        scene: ``"plain"`` (a class is a shape x texture x colour) or ``"cluttered"`` (a class is an
            arrangement of two shapes of random colours among distractors of the same palette).
        object_area: (min, max) area of the cluttered scene's object as a fraction of the image.
        distractors: (min, max) number of the cluttered scene's distractor shapes.
        rotation: the cluttered scene's largest rotation of a shape, in radians.
        distractor_pairs: the share of the cluttered scene's distractors that are pairs of shapes.
        background: the cluttered scene's background: ``"gradient"``, ``"cells"`` (solid cells of the
            palette) or ``"patchwork"`` (textured cells; :mod:`datamodules.synthetic.cluttered`).
        seed: seed of the synthetic data (which classes, which images).
    """

    num_classes: int = 30
    height: int = 64
    width: int = 64


class ImageSubset(Dataset):
    """The items ``positions`` of a labelled base dataset (with ``labels`` and ``class_names``)."""

    def __init__(self, base: Dataset, positions: Sequence[int]) -> None:
        self.base = base
        self.positions = [int(p) for p in positions]
        base_labels = base.labels  # type: ignore[attr-defined]
        self._labels = [int(base_labels[p]) for p in self.positions]

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def labels(self) -> list[int]:
        return list(self._labels)

    @property
    def class_names(self) -> dict[int, str]:
        return self.base.class_names  # type: ignore[attr-defined]

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, _ = split_item(item)  # the base images do not depend on the sample seed
        return self.base[self.positions[index]]


class ClassificationDataModule(ClassImagesDataModule):
    """Train / held-out test images of the same synthetic classes (module docstring).

    Args:
        dataset: a generated class layout (``"synthetic"``, the only one built in).
        image_size: (height, width) of the network input.
        padding: zero padding before the random crop back to ``image_size`` (0: no crop).
        flip_prob: probability of a horizontal flip.
        color_jitter: strength of brightness / contrast / saturation jitter (0 disables it).
        m_per_class: images per class in a training batch.
        batch_size: training batch size, a multiple of ``m_per_class``.
        batches_per_epoch: training batches per epoch (default: training images // batch_size).
        eval_batch_size: batch size of the evaluation loaders.
        num_workers: data-loader worker processes.
        eval_cache: keep the transformed evaluation images in memory (per worker process).
        seed: seed of the training batches and augmentation (a function of seed and epoch only).
        train_images_per_class: the first images of each class that train; the others are the test split.
        val_images_per_class: the images after the training ones that form the ``val`` split of
            :meth:`eval_dataloader` (0: none; the test split starts after them).
        synthetic: the synthetic classes, a nested mapping in a config: ``num_classes``,
            ``images_per_class`` (train + test), ``height``, ``width``, ``seed`` (which classes, which
            images), ... (:class:`ClassificationSyntheticOptions`; ``None``: its defaults, 30
            classes of 60 64x64 images).
    """

    synthetic_type = ClassificationSyntheticOptions

    def __init__(
        self,
        dataset: str = "synthetic",
        image_size: tuple[int, int] = (64, 64),
        padding: int = 6,
        flip_prob: float = 0.5,
        color_jitter: float = 0.0,
        m_per_class: int = 4,
        batch_size: int = 64,
        batches_per_epoch: int | None = None,
        eval_batch_size: int = 250,
        num_workers: int = 0,
        eval_cache: bool = True,
        seed: int = 0,
        train_images_per_class: int = 40,
        val_images_per_class: int = 0,
        synthetic: ClassificationSyntheticOptions | None = None,
    ) -> None:
        if int(batch_size) % int(m_per_class) or int(m_per_class) < 1:
            raise ValueError(
                f"batch_size={batch_size} must be a positive multiple of m_per_class={m_per_class}")
        super().__init__(dataset, None, {}, image_size, padding, flip_prob, color_jitter, num_workers, eval_cache,
                         synthetic, check_images=False)
        if not self.layout.generated:
            raise ValueError(
                f"ClassificationDataModule draws the synthetic classes only, got dataset={dataset!r}")
        per_class = self.synthetic.images_per_class
        if not 1 <= int(train_images_per_class) < per_class:
            raise ValueError(
                f"train_images_per_class must be in [1, synthetic.images_per_class={per_class}), "
                f"got {train_images_per_class}: the test split needs images"
            )
        if not 0 <= int(val_images_per_class) < per_class - int(train_images_per_class):
            raise ValueError(
                f"val_images_per_class must be in [0, {per_class - int(train_images_per_class)}) (the images "
                f"after the {train_images_per_class} training ones), got {val_images_per_class}: the test "
                "split needs images"
            )
        self.save_hyperparameters()
        self._plain_synthetic_hparams()
        self.m_per_class = int(m_per_class)
        self.batch_size = int(batch_size)
        self.batches_per_epoch = int(batches_per_epoch) if batches_per_epoch else None
        self.eval_batch_size = int(eval_batch_size)
        self.seed = int(seed)
        self.train_images_per_class = int(train_images_per_class)
        self.val_images_per_class = int(val_images_per_class)

    # -- raw data --------------------------------------------------------------------------------

    def _raw_datasets(self) -> dict[str, Dataset]:
        """Untransformed train / test subsets of every class's images (built once)."""
        if self._raw is None:
            gen = self.generator
            assert gen is not None
            everything = gen.dataset(None, cache=True)  # item j: image j % per_class of class j // per_class
            per_class, cut = gen.images_per_class, self.train_images_per_class
            val_end = cut + self.val_images_per_class
            positions = range(len(everything))
            self._raw = {
                "train": ImageSubset(everything, [p for p in positions if p % per_class < cut]),
                "val": ImageSubset(everything, [p for p in positions if cut <= p % per_class < val_end]),
                "test": ImageSubset(everything, [p for p in positions if p % per_class >= val_end]),
            }
        return self._raw

    # -- Lightning hooks -------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        raw = self._raw_datasets()
        self.datasets["train"] = self._transformed(raw["train"], train=True)
        self.datasets["test"] = self._transformed(raw["test"], train=False)
        self.datasets["train_eval"] = self._transformed(raw["train"], train=False)
        if len(raw["val"]):
            self.datasets["val"] = self._transformed(raw["val"], train=False)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        try:
            sampler = MPerClassBatchSampler(self.datasets["train"].labels, self.m_per_class, self.batch_size,
                                            seed=self.seed, batches_per_epoch=self.batches_per_epoch)
        except ValueError as e:
            raise DatasetLayoutError(f"the training split of {self.dataset}: {e}") from e
        return DataLoader(self.datasets["train"], batch_sampler=sampler, collate_fn=self.train_collate(),
                          **self._loader_kwargs())

    def eval_dataloader(self, split: str = "test", spread: bool = True) -> DataLoader:
        """The images of ``split`` (``"train"``, ``"val"`` or ``"test"``) without augmentation, with box
        and mask; ``spread``: the classes interleaved so that any prefix holds every class in proportion."""
        if split not in CLASSIFICATION_SPLITS:
            raise ValueError(f"split must be one of {CLASSIFICATION_SPLITS}, got {split!r}")
        if split == "val" and not self.val_images_per_class:
            raise ValueError("there is no val split: set val_images_per_class > 0")
        self.setup("test")
        dataset = self.datasets["train_eval" if split == "train" else split]
        sampler = SpreadSampler(dataset.labels) if spread else None
        return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=sampler, shuffle=False,
                          **self._loader_kwargs())

    def _eval_loader(self, spread: bool = True) -> DataLoader:
        return self.eval_dataloader("test", spread)

    def val_dataloader(self) -> DataLoader:
        """The ``val`` split where there is one (``val_images_per_class > 0``), else the test images
        (the classifier keeps its last epoch: no checkpoint is chosen by them)."""
        return self.eval_dataloader("val" if self.val_images_per_class else "test")
