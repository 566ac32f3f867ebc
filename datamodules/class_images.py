"""Labelled class images as network inputs: the datasets (:class:`ClassImageDataset`,
:class:`ClassTransformDataset`) and the data module (:class:`ClassImagesDataModule`) that the
few-shot, retrieval and classification data modules share."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from .base import ImageDataModule, synthetic_options
from .batch_augment import BatchPadCropFlip
from .class_layouts import ClassLayout, SyntheticClassesOptions
from .class_scan import ClassRecord
from .errors import DatasetLayoutError
from .images import SeededTransformDataset, colour_jitter, flip, load_image, resize_pad_crop, resized
from .registry import class_layout
from .samplers import split_item

__all__ = ["ClassImageDataset", "ClassTransformDataset", "ClassImagesDataModule"]


class ClassImageDataset(Dataset):
    """Images listed by :class:`~datamodules.class_scan.ClassRecord` s; classes numbered by sorted class name.

    Items ``{"image": tv_tensors.Image uint8, "label": int}`` plus ``"box"`` (``BoundingBoxes``
    XYXY) when every record has one.
    """

    def __init__(self, records: Sequence[ClassRecord]) -> None:
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


class ClassTransformDataset(SeededTransformDataset):
    """Applies a transform to the items of a base labelled dataset and relabels the classes
    (:class:`~datamodules.images.SeededTransformDataset`).

    ``post`` turns the image output of ``transform`` into the network input (e.g.
    :class:`~datamodules.images.NormalizeImage`). With ``cache`` (a deterministic ``transform`` only)
    the output of ``transform`` is kept in memory, per process, and only ``post`` runs again:
    evaluation episodes reuse the same images many times.

    Items: ``{"image": float [3,H,W], "label": long, "index": long}`` plus ``"box": float [4]`` and
    ``"mask": bool [1,H,W]`` when ``targets`` and the base dataset has them.
    """

    @property
    def class_names(self) -> dict[int, str]:
        names = self.base.class_names  # type: ignore[attr-defined]
        if self.label_map is None:
            return dict(names)
        return {self.label_map[k]: v for k, v in names.items()}


class ClassImagesDataModule(ImageDataModule):
    """What the data modules over labelled class images share (few-shot, retrieval, classification).

    A subclass passes the options below to ``__init__`` and implements ``_raw_datasets()`` (split name
    -> untransformed dataset with ``labels``). This class looks ``dataset`` up among the class layouts
    (:func:`~datamodules.registry.class_layout`; it must give the subclass's :attr:`splits`) and gives
    (besides :class:`ImageDataModule`'s generator, image check and normalisation) the raw splits of
    the layout, the number of training classes, the default augmentation and the wrapping of a raw
    split into network inputs.

    Args:
        dataset, root, num_workers, check_images: as for :class:`~datamodules.base.ImageDataModule`.
        layout_values: the values of the subclass's ``layout_options``.
        image_size: (height, width) of the network input.
        padding: zero padding before the random crop back to ``image_size`` (0: no crop).
        flip_prob: probability of a horizontal flip.
        color_jitter: strength of brightness / contrast / saturation jitter (0 disables it).
        eval_cache: keep the transformed evaluation images in memory (per worker process).
        synthetic: the synthetic classes (a generated layout only), a :attr:`synthetic_type` or a
            mapping of its fields (the others keep :attr:`synthetic_type`'s defaults); ``None``: the defaults.
    """

    #: the splits the subclass reads (few-shot: train / val / test; retrieval: train / test)
    splits: tuple[str, ...] = ("train", "test")
    #: the type (and so the defaults) of the subclass's ``synthetic`` option
    synthetic_type: type[SyntheticClassesOptions] = SyntheticClassesOptions

    def __init__(
        self,
        dataset: str,
        root: str | None,
        layout_values: Mapping[str, Any],
        image_size: Sequence[int],
        padding: int,
        flip_prob: float,
        color_jitter: float,
        num_workers: int,
        eval_cache: bool,
        synthetic: SyntheticClassesOptions | Mapping[str, Any] | None,
        check_images: bool,
    ) -> None:
        layout_class = class_layout(dataset, ClassLayout)
        if self.splits not in layout_class.split_sets:
            raise ValueError(
                f"dataset {dataset!r} ({layout_class.__qualname__}) has no {' / '.join(self.splits)} split "
                f"for {type(self).__name__}: it gives {[' / '.join(s) for s in layout_class.split_sets]}"
            )
        options = synthetic_options(synthetic, self.synthetic_type, self.synthetic_type())
        super().__init__(dataset, root, layout_class, layout_values, num_workers, check_images, options)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.padding = int(padding)
        self.flip_prob = float(flip_prob)
        self.color_jitter = float(color_jitter)
        self.eval_cache = bool(eval_cache)
        #: names of the masks (``batch["mask"][:, i]`` is ``mask_names[i]``); empty without masks
        self.mask_names: tuple[str, ...] = tuple(self.layout.mask_names)
        #: split -> network inputs, filled by ``setup``
        self.datasets: dict[str, ClassTransformDataset] = {}

    def _layout_datasets(self) -> dict[str, Dataset]:
        """The layout's untransformed :attr:`splits`: the generator's datasets, or the records on disk
        as :class:`ClassImageDataset` s (an empty split is an error naming it)."""
        if self.layout.generated:
            return self.layout.datasets(self.generator, self.splits)
        records = self.layout.records(self.splits)
        for split in self.splits:
            if not records.get(split):
                raise DatasetLayoutError(f"{self.layout.describe(split, self.dataset)} has no images")
        return {s: ClassImageDataset(records[s]) for s in self.splits}

    def _setup_split(self, split: str) -> None:
        """``setup`` for the stage that reads ``split`` (only its images are checked)."""
        self.setup({"train": "fit", "val": "validate"}.get(split, "test"))

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
        return self.layout.generated or bool(getattr(raw, "has_boxes", False))

    # -- transforms ------------------------------------------------------------------------------

    def train_transform(self) -> v2.Compose:
        """Resize to ``image_size``, pad + random crop back, flip, optional colour jitter."""
        return v2.Compose(resize_pad_crop(self.image_size, self.padding) + flip(self.flip_prob)
                          + colour_jitter(self.color_jitter))

    def eval_transform(self) -> v2.Compose:
        return v2.Compose(resized(self.image_size))

    def batch_augmentation(self) -> BatchPadCropFlip | None:
        """:meth:`train_transform` after the resize, on whole batches; None with colour jitter."""
        if self.color_jitter > 0:
            return None
        return BatchPadCropFlip(self.padding, self.flip_prob, self.normalize())

    def _transformed(self, raw: Dataset, train: bool) -> ClassTransformDataset:
        """A raw split as network inputs, its labels remapped to 0..C-1 in sorted order. With the
        batched augmentation the training items are only resized and keep their seeds."""
        labels = sorted(set(raw.labels))  # type: ignore[attr-defined]
        batched = train and self.batch_augmentation() is not None
        if batched:  # not eval_transform(): retrieval's centre-crops
            transform = v2.Compose(resized(self.image_size))
        else:
            transform = self.train_transform() if train else self.eval_transform()
        return ClassTransformDataset(
            raw,
            transform,
            post=None if batched else self.normalize(),
            label_map={label: i for i, label in enumerate(labels)},
            targets=not train,
            cache=(self.eval_cache and not train) or (batched and self.layout.generated),
            keep_seed=batched,
        )
