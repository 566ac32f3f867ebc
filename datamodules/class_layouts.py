"""The layouts of labelled class images, one class each, registered by name: what the few-shot,
retrieval and classification data modules read.

* ``miniimagenet``: CSV split files (few-shot only);
* ``cub`` (alias ``cub200``): CUB-200-2011; Chen et al.'s train / val / test class split for
  few-shot, the first / second half of the classes for retrieval (``cub_train_classes``);
* ``folders``: one folder per class (under ``train/val/test`` for few-shot; under ``train/test`` or
  directly under the root, halved, for retrieval);
* ``synthetic``: :class:`~datamodules.synthetic.SyntheticClasses`, drawn on the fly, with the options
  :class:`SyntheticClassesOptions` (the data modules' ``synthetic``).

A data module asks a layout for the splits it uses, ``("train", "val", "test")`` (few-shot) or
``("train", "test")`` (retrieval); a layout lists the split sets it can give in ``split_sets``. A
layout of your own subclasses :class:`ClassLayout` and implements :meth:`ClassLayout.records`
(``docs/data.md``, "Your own layout").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from torch.utils.data import Dataset

from .class_scan import (
    RETRIEVAL_SPLITS, SPLITS, ClassRecord, scan_class_folders, scan_cub, scan_cub_retrieval, scan_miniimagenet_split,
    scan_retrieval_folders,
)
from .errors import DatasetLayoutError
from .registry import register_class_layout
from .synthetic import SyntheticClasses, SyntheticClassesConfig
from .synthetic.common import SeededOptions

__all__ = ["ClassLayout", "MiniImageNet", "CUB200", "ClassFolders", "SyntheticClassesLayout",
           "SyntheticClassesOptions"]


@dataclass(frozen=True)
class SyntheticClassesOptions(SeededOptions, SyntheticClassesConfig):
    """The synthetic classes of a data module (its ``synthetic`` option): the generator's
    :class:`~datamodules.synthetic.SyntheticClassesConfig` and the seed of the data.

    Attributes:
        num_classes: classes in all (few-shot: split by ``few_shot_splits``; retrieval: first half
            train, second half test; classification: every class in both splits).
        images_per_class: images of each class.
        height: native image height (draw at the network's size to skip the resize).
        width: native image width.
        few_shot_splits: few-shot train / val / test class counts adding up to ``num_classes``
            (``None``: miniImageNet's 64 / 16 / 20 proportions); unused by retrieval and classification.
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

    seed: int = 0

    generator_config: ClassVar[type] = SyntheticClassesConfig


class ClassLayout:
    """A layout of labelled class images: where the images of each split are and their classes.

    A subclass on disk implements :meth:`records`; a generated one sets ``generated = True`` and
    implements :meth:`generator` and :meth:`datasets`. The data module makes one,
    ``Layout(root, **{name: value for name in Layout.options})``.

    Attributes:
        name: the name in messages.
        generated: drawn on the fly (no root, no files to check; box and masks).
        options: the data module's options the layout reads (``split_folders``, ``cub_train_classes``),
            passed to ``__init__`` by name where the data module has them.
        split_sets: the split sets the layout can give (few-shot's three, retrieval's two).
        mask_names: names of the masks of the evaluation items (generated layouts).
    """

    name: ClassVar[str] = "custom"
    generated: ClassVar[bool] = False
    options: ClassVar[tuple[str, ...]] = ()
    split_sets: ClassVar[tuple[tuple[str, ...], ...]] = (SPLITS, RETRIEVAL_SPLITS)
    mask_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: str | None = None, **options: Any) -> None:
        self.root = root
        self.settings = options

    def records(self, splits: Sequence[str]) -> dict[str, list[ClassRecord]]:
        """``splits`` (one of ``split_sets``) -> the records of each."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement records()")

    def describe(self, split: str, dataset: str) -> str:
        """The split in messages (``dataset``: the name the data module was given)."""
        return f"the {split} split of {dataset} at {self.root}"

    def generator(self, options: SyntheticClassesOptions) -> Any:
        raise NotImplementedError(f"{type(self).__qualname__} is not a generated layout")

    def datasets(self, generator: Any, splits: Sequence[str]) -> dict[str, Dataset]:
        raise NotImplementedError(f"{type(self).__qualname__} is not a generated layout")


class MiniImageNet(ClassLayout):
    """``root/images/`` and ``train.csv``, ``val.csv``, ``test.csv`` (:func:`scan_miniimagenet_split`)."""

    name = "miniimagenet"
    split_sets = (SPLITS,)

    def records(self, splits: Sequence[str]) -> dict[str, list[ClassRecord]]:
        if self.root is None:
            raise DatasetLayoutError("dataset='miniimagenet' needs a root folder (root=None)")
        return {s: scan_miniimagenet_split(self.root, s) for s in splits}

    def describe(self, split: str, dataset: str) -> str:
        return f"the {split} split ({Path(self.root or '.') / f'{split}.csv'})"


class CUB200(ClassLayout):
    """CUB-200-2011 with boxes: Chen et al.'s few-shot class split (:func:`scan_cub`) or the retrieval
    split (:func:`scan_cub_retrieval`, ``cub_train_classes``)."""

    name = "cub"
    options = ("cub_train_classes",)

    def records(self, splits: Sequence[str]) -> dict[str, list[ClassRecord]]:
        if tuple(splits) == RETRIEVAL_SPLITS:
            return scan_cub_retrieval(self.root, self.settings.get("cub_train_classes"))
        return scan_cub(self.root)  # type: ignore[arg-type]


class ClassFolders(ClassLayout):
    """One folder per class: ``root/<split>/<class>/<image>`` (few-shot, ``split_folders``), or
    ``root/{train,test}/<class>/`` or ``root/<class>/`` halved (retrieval)."""

    name = "folders"
    options = ("split_folders",)

    def records(self, splits: Sequence[str]) -> dict[str, list[ClassRecord]]:
        if tuple(splits) == RETRIEVAL_SPLITS:
            return scan_retrieval_folders(self.root)
        if self.root is None:
            raise DatasetLayoutError("dataset='folders' needs a root folder (root=None)")
        return {s: scan_class_folders(self.root, s, self.settings.get("split_folders")) for s in splits}


class SyntheticClassesLayout(ClassLayout):
    """The synthetic classes (:class:`~datamodules.synthetic.SyntheticClasses`), with box and mask."""

    name = "synthetic"
    generated = True
    mask_names = SyntheticClasses.mask_names

    def describe(self, split: str, dataset: str) -> str:
        return f"the synthetic {split} split"

    def generator(self, options: SyntheticClassesOptions) -> SyntheticClasses:
        return SyntheticClasses(seed=options.seed, config=options.config())

    def datasets(self, generator: SyntheticClasses, splits: Sequence[str]) -> dict[str, Dataset]:
        # the raw renders are cached (per process): drawing costs more than augmenting
        if tuple(splits) == RETRIEVAL_SPLITS:
            return {s: generator.dataset(generator.retrieval_classes(s), cache=True) for s in splits}
        return {s: generator.dataset(s, cache=True) for s in splits}


register_class_layout("miniimagenet", MiniImageNet)
register_class_layout("cub", CUB200)
register_class_layout("cub200", CUB200)
register_class_layout("folders", ClassFolders)
register_class_layout("synthetic", SyntheticClassesLayout)
