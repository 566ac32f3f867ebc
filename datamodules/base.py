"""What the re-ID, few-shot and retrieval data modules share: state, image check, normalisation, loaders."""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable, Sequence

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, default_collate

from .batch_augment import BatchPadCropFlip, collate_augmented
from .image_check import check_split_images
from .images import IMAGENET_MEAN, IMAGENET_STD, NormalizeImage, denormalize_images

__all__ = ["ImageDataModule", "DATASET_OPTIONS", "REAL_DATA_OPTIONS"]

#: options that apply only to a data set on disk (``synthetic_*`` apply only to ``"synthetic"``)
REAL_DATA_OPTIONS = ("root", "test_dataset", "test_root", "check_images")
#: options that apply only to some data sets
DATASET_OPTIONS = {
    "cuhk03_variant": ("cuhk03",),
    "camera_pattern": ("folders",),
    "min_train_images": ("folders",),
    "split_folders": ("folders",),
    "cub_train_classes": ("cub200",),
}


class ImageDataModule(LightningDataModule):
    """A data module over a synthetic generator or a data set on disk, with ImageNet normalisation.

    A subclass passes its common options to ``__init__`` and implements ``_raw_datasets()`` (split
    name -> untransformed dataset; on disk with ``records`` having a ``path``), ``_make_generator()``
    (the synthetic generator) and ``_eval_loader(spread)``. This class gives the lazy generator, the
    one check of the image files a stage needs (:meth:`_check_image_files`), the normalisation and its
    inverse (:meth:`denormalize`), the loader options and the evaluation loaders.

    Args:
        dataset: the data set name; ``"synthetic"`` is drawn on the fly (no files to check).
        root: the folder of a data set on disk.
        num_workers: data-loader worker processes.
        check_images: at ``setup``, check that every image file the stage needs can be read.
    """

    def __init__(self, dataset: str, root: str | None, num_workers: int, check_images: bool) -> None:
        super().__init__()
        self.dataset = dataset
        self.root = root
        self.num_workers = int(num_workers)
        self.check_images = bool(check_images)
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD
        self._images_checked: set[str] = set()
        self._generator: Any = None
        self._raw: dict[str, Dataset] | None = None

    def inapplicable_options(self, *datasets: str | None) -> list[str]:
        """The ``__init__`` options that do not apply to ``self.dataset`` (nor to ``datasets``, e.g. a
        cross-domain ``test_dataset``): left out of ``save_hyperparameters``, so the logged
        hyperparameters (TensorBoard's HPARAMS, ``hparams.yaml``) are the run's own."""
        used = {self.dataset, *(d for d in datasets if d)}
        real = bool(used - {"synthetic"})
        out = []
        for name in inspect.signature(type(self).__init__).parameters:
            if name.startswith("synthetic_"):
                applies = "synthetic" in used
            elif name in REAL_DATA_OPTIONS:
                applies = real
            else:
                applies = name not in DATASET_OPTIONS or bool(used & set(DATASET_OPTIONS[name]))
            if not applies:
                out.append(name)
        return out

    # -- raw data ------------------------------------------------------------------------------

    def _make_generator(self) -> Any:
        raise NotImplementedError

    @property
    def generator(self) -> Any:
        """The synthetic generator (``None`` for real data), built on first use."""
        if self.dataset == "synthetic" and self._generator is None:
            self._generator = self._make_generator()
        return self._generator

    def _raw_datasets(self) -> dict[str, Dataset]:
        raise NotImplementedError

    def _check_image_files(self, splits: Sequence[str]) -> None:
        """At ``setup``: check the image files of ``splits`` once (:mod:`datamodules.image_check`)."""
        if self.check_images and self.dataset != "synthetic":
            source = f"{self.dataset} at {self.root}"
            check_split_images(self._raw_datasets(), splits, self._images_checked, source)

    # -- normalisation ---------------------------------------------------------------------------

    def normalize(self) -> NormalizeImage:
        """uint8 image -> normalised float network input."""
        return NormalizeImage(self.mean, self.std)

    def denormalize(self, images: torch.Tensor, as_uint8: bool = False) -> torch.Tensor:
        """Undo the normalisation: float images in [0, 1] (or uint8 with ``as_uint8``), same shape."""
        return denormalize_images(images, self.mean, self.std, as_uint8)

    # -- loaders ---------------------------------------------------------------------------------

    def batch_augmentation(self) -> BatchPadCropFlip | None:
        """The training augmentation after the resize, on whole batches (:mod:`datamodules.batch_augment`:
        the per-image steps' images), or None where it runs per image (the default)."""
        return None

    def train_collate(
        self, collate: Callable[[list[Any]], Any] | None = None
    ) -> Callable[[list[Any]], Any] | None:
        """The training loader's ``collate_fn``: ``collate`` (None: PyTorch's), then the batched
        augmentation."""
        augment = self.batch_augmentation()
        if augment is None:
            return collate
        return partial(collate_augmented, augment=augment, collate=collate or default_collate)

    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
        }

    def _eval_loader(self, spread: bool = True) -> DataLoader:
        raise NotImplementedError

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(spread=False)
