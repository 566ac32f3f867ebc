"""What the re-ID, few-shot and retrieval data modules share: state, image check, normalisation, loaders."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import asdict, fields
from functools import partial
from typing import Any, Callable, ClassVar, Sequence, TypeVar

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, default_collate

from .batch_augment import BatchPadCropFlip, collate_augmented
from .image_check import check_split_images
from .images import IMAGENET_MEAN, IMAGENET_STD, NormalizeImage, denormalize_images

__all__ = ["ImageDataModule", "REAL_DATA_OPTIONS", "synthetic_options"]

#: options that apply only to a data set on disk (``synthetic`` applies only to a generated one)
REAL_DATA_OPTIONS = ("root", "test_dataset", "test_root", "check_images")

O = TypeVar("O")


def synthetic_options(value: O | Mapping[str, Any] | None, options_type: type[O], default: O) -> O:
    """A data module's ``synthetic`` option: ``None`` -> ``default``, a mapping (e.g. the
    hyper-parameters a checkpoint saved) -> ``options_type(**value)``, a dataclass as it is."""
    if value is None:
        return default
    if isinstance(value, options_type):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in fields(options_type)}  # type: ignore[arg-type]
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"synthetic: unknown option(s) {unknown} of {options_type.__name__}; "
                             f"its options are {sorted(known)}")
        return options_type(**value)
    raise TypeError(f"synthetic must be a {options_type.__name__} or a mapping of its fields, got {value!r}")


class ImageDataModule(LightningDataModule):
    """A data module over a synthetic generator or a data set on disk, with ImageNet normalisation.

    A subclass looks its layout class up in the registry (:mod:`datamodules.registry`), passes it with
    its common options to ``__init__`` and implements ``_raw_datasets()`` (split name -> untransformed
    dataset; on disk with ``records`` having a ``path``) and ``_eval_loader(spread)``. This class makes
    the layout object (:meth:`make_layout`), gives the lazy generator of a generated layout, the one
    check of the image files a stage needs (:meth:`_check_image_files`), the normalisation and its
    inverse (:meth:`denormalize`), the loader options and the evaluation loaders.

    Args:
        dataset: the data set name (registered, or a layout class path).
        root: the folder of a data set on disk.
        layout_class: the layout class of ``dataset``.
        layout_values: the values of the subclass's :attr:`layout_options`.
        num_workers: data-loader worker processes.
        check_images: at ``setup``, check that every image file the stage needs can be read.
        synthetic: the generator's options (kept for a generated layout only).
    """

    #: the ``__init__`` options that some layouts read (a layout names those it reads in ``options``)
    layout_options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        dataset: str,
        root: str | None,
        layout_class: type,
        layout_values: Mapping[str, Any],
        num_workers: int,
        check_images: bool,
        synthetic: Any,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.root = root
        self._layout_values = dict(layout_values)
        #: the layout object of ``dataset`` at ``root`` (:mod:`datamodules.reid_layouts`,
        #: :mod:`datamodules.class_layouts`)
        self.layout = self.make_layout(layout_class, root)
        #: the generator's options (``None`` unless the layout is generated)
        self.synthetic = synthetic if self.layout.generated else None
        self.num_workers = int(num_workers)
        self.check_images = bool(check_images)
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD
        self._images_checked: set[str] = set()
        self._generator: Any = None
        self._raw: dict[str, Dataset] | None = None

    def make_layout(self, layout_class: type, root: str | None) -> Any:
        """``layout_class(root, **options)`` with the options it reads (its ``options``) that this data
        module has (e.g. CUB's ``cub_train_classes`` is retrieval's only: few-shot CUB goes without)."""
        return layout_class(root, **{o: self._layout_values[o] for o in layout_class.options
                                     if o in self._layout_values})

    def inapplicable_options(self, *layouts: Any) -> list[str]:
        """The ``__init__`` options that do not apply to ``self.layout`` (nor to ``layouts``, e.g. a
        cross-domain test layout): left out of ``save_hyperparameters``, so the logged
        hyperparameters (TensorBoard's HPARAMS, ``hparams.yaml``) are the run's own."""
        used = [self.layout, *(x for x in layouts if x is not None)]
        generated = any(x.generated for x in used)
        out = []
        for name in inspect.signature(type(self).__init__).parameters:
            if name == "synthetic":
                applies = generated
            elif name in REAL_DATA_OPTIONS:
                applies = not all(x.generated for x in used)
            else:
                applies = name not in self.layout_options or any(name in x.options for x in used)
            if not applies:
                out.append(name)
        return out

    def _plain_synthetic_hparams(self) -> None:
        """After ``save_hyperparameters``: ``synthetic`` as a plain mapping of the options in use (a
        checkpoint is read with ``weights_only=True``, which loads no dataclass; the logged
        hyper-parameters show every field, ``synthetic/num_classes`` ...)."""
        if "synthetic" in self.hparams:
            self.hparams["synthetic"] = asdict(self.synthetic) if self.synthetic is not None else None

    # -- raw data ------------------------------------------------------------------------------

    @property
    def generator(self) -> Any:
        """The synthetic generator (``None`` for real data), built on first use."""
        if self.layout.generated and self._generator is None:
            self._generator = self.layout.generator(self.synthetic)
        return self._generator

    def _raw_datasets(self) -> dict[str, Dataset]:
        raise NotImplementedError

    def _check_image_files(self, splits: Sequence[str]) -> None:
        """At ``setup``: check the image files of ``splits`` once (:mod:`datamodules.image_check`)."""
        if self.check_images and not self.layout.generated:
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
