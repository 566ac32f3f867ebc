"""Person re-ID data: Market-1501, DukeMTMC-reID, CUHK03-NP (labeled / detected), MSMT17 and the synthetic
set.

:class:`ReIDDataModule` gives

* a training loader of identity-balanced batches (:class:`~datamodules.samplers.PKSampler`, ``p``
  identities x ``k`` images) ``{"image": float [B,3,H,W], "pid": long [B] (relabelled 0..C-1),
  "camid": long [B] (0-based), "index": long [B]}`` with the paper's augmentation (resize, pad +
  random crop, horizontal flip, optional random erasing; ImageNet normalisation);
* evaluation loaders over a query set followed by a gallery ``{"image", "pid" (original: 0
  distractor, -1 junk), "camid", "index" (position in query + gallery), "is_query": bool [B]}``, plus,
  for the synthetic set, ``"box": float [B,4]`` (x1, y1, x2, y2 in pixels of the transformed image),
  ``"mask": bool [B,P,H,W]`` (visible pixels of each part, :attr:`ReIDDataModule.part_names`) and
  ``"evidence"``, ``"evidence_required"``: bool [B,P] (the parts that tell it from look-alikes):
  the test (and predict) loader over the data set's query + gallery; the validation loader over
  ``val_ids`` training identities held out of training (:mod:`datamodules.holdout`: query and
  gallery by the test protocol), so a checkpoint is selected without seeing the test identities --
  or, with ``validate_on_test``, over the test split as torchreid and fast-reid do.

The layouts are classes registered by name (:mod:`datamodules.reid_layouts`, :mod:`datamodules.registry`):
real ones read from file names (``0002_c1s1_000451_03.jpg``, ``0001_c2_f0046182.jpg``,
``0001_c1_1.png``) or from MSMT17's list files (:mod:`datamodules.reid_lists`), your own data
(``dataset="folders"``) from one folder per identity (:mod:`datamodules.reid_folders`), a layout of
your own registered or named by its class path; wrong roots, missing folders or list files,
unparsable names and unreadable images raise :class:`DatasetLayoutError` naming the path. With
``test_dataset`` / ``test_root`` the model trains on one data set and is validated and tested on
another's query + gallery (cross-domain).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .base import ImageDataModule, synthetic_options
from .batch_augment import BatchPadCropFlip
from .errors import DatasetLayoutError, UnreadableImageError
from .eval_order import SpreadSampler
from .image_check import check_split_images
from .images import NormalizeImage, flip, normalized, resize_pad_crop, resized
from .registry import reid_layout
from .reid_datasets import QueryGalleryDataset, ReIDImageDataset, ReIDTransformDataset
from .holdout import HeldOutSubset, check_validation_options, default_val_ids, hold_out_identities
from .reid_layouts import ReIDLayout, SyntheticReIDOptions
from .reid_scan import ReIDRecord
from .samplers import PKSampler

__all__ = [
    "DatasetLayoutError", "UnreadableImageError", "ReIDRecord", "ReIDLayout", "SyntheticReIDOptions",
    "ReIDImageDataset", "ReIDTransformDataset", "QueryGalleryDataset", "ReIDDataModule",
]


class ReIDDataModule(ImageDataModule):
    """Person re-ID data: Market-1501, DukeMTMC-reID, CUHK03-NP, MSMT17, your own folders or the synthetic
    set.

    Args:
        dataset: the layout, a name registered with :func:`~datamodules.registry.register_reid_layout`
            (``synthetic``, ``market1501``, ``dukemtmc``, ``cuhk03``, ``msmt17``, ``folders``) or the class
            path of a :class:`~datamodules.reid_layouts.ReIDLayout` (``mypkg.layouts.MyLayout``);
            ``"synthetic"`` is generated on the fly and needs no ``root``; ``"folders"`` is
            ``root/{train,query,gallery}/<identity>/<image>`` (:mod:`datamodules.reid_folders`).
        root: folder holding ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` (or its
            parent); for ``cuhk03`` the ``cuhk03-np`` folder (holding ``labeled/`` and ``detected/``)
            or its parent; for ``msmt17`` the ``MSMT17_V1`` / ``MSMT17_V2`` folder or its parent;
            for ``folders`` the folder holding ``train/``, ``query/``, ``gallery/``.
        test_dataset: cross-domain evaluation: validate and test on this data set's query + gallery
            (training and ``num_classes`` stay ``dataset``'s); ``None``: ``dataset`` (or, with a
            ``test_root``, the same kind of data set at that root).
        test_root: the root of ``test_dataset``.
        cuhk03_variant: CUHK03-NP boxes: hand-labelled or detected.
        msmt17_version: MSMT17 release, ``"V1"`` or ``"V2"`` (faces blurred); ``None``: the one under
            ``root`` (an error if it holds both).
        msmt17_val_in_train: MSMT17's training set is list_train + list_val (32,621 images); ``False``
            leaves list_val out (30,248 images, torchreid's and fast-reid's default).
        val_ids: training identities held out as the validation query + gallery (drawn with a fixed
            seed among those seen by two or more cameras: the same split whatever ``seed``); they no
            longer train (``num_classes`` drops by as many). ``None``: a tenth of the training
            identities. Must be ``None`` or 0 with ``validate_on_test``.
        validate_on_test: validate on the test query + gallery (torchreid's and fast-reid's practice:
            a checkpoint selected by its validation score has then seen the test set); every training
            identity trains.
        camera_pattern: ``folders``: a regex searched in each file name, group 1 the camera number
            (e.g. ``"c(\\d+)"``); without it the cameras come from ``root/cameras.csv`` if present,
            else query images are camera 0 and gallery images camera 1.
        min_train_images: ``folders``: ``None`` makes a training identity with one image an error;
            a number drops the training identities with fewer images.
        image_size: (height, width) of the network input.
        p: identities per training batch.
        k: images per identity in a training batch (batch size ``p * k``).
        eval_batch_size: batch size of the query + gallery loader.
        num_workers: data-loader worker processes.
        padding: zero padding before the random crop back to ``image_size`` (0 disables the crop).
        flip_prob: probability of a horizontal flip.
        random_erasing: probability of random erasing (0 disables it).
        seed: seed of the training batches and augmentations (a function of seed and epoch only).
        synthetic: the synthetic set (generated layouts only), a nested mapping in a config:
            identities, cameras, distractors, junk, occlusion, placement, seed
            (:class:`~datamodules.reid_layouts.SyntheticReIDOptions`; ``None``: its defaults).
        check_images: at ``setup``, check that every image file the stage needs can be read (size,
            header and end marker, see :mod:`datamodules.image_check`); ``fit`` checks all three folders.
    """

    layout_options = ("cuhk03_variant", "msmt17_version", "msmt17_val_in_train", "camera_pattern",
                      "min_train_images")

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        test_dataset: str | None = None,
        test_root: str | None = None,
        cuhk03_variant: Literal["labeled", "detected"] = "labeled",
        msmt17_version: Literal["V1", "V2"] | None = None,
        msmt17_val_in_train: bool = True,
        val_ids: int | None = None,
        validate_on_test: bool = False,
        camera_pattern: str | None = None,
        min_train_images: int | None = None,
        image_size: tuple[int, int] = (256, 128),
        p: int = 8,
        k: int = 4,
        eval_batch_size: int = 128,
        num_workers: int = 2,
        padding: int = 10,
        flip_prob: float = 0.5,
        random_erasing: float = 0.0,
        seed: int = 0,
        synthetic: SyntheticReIDOptions | None = None,
        check_images: bool = True,
    ) -> None:
        layout_class = reid_layout(dataset, ReIDLayout)
        test_class = reid_layout(test_dataset, ReIDLayout) if test_dataset is not None else None
        self.cross_domain = test_dataset is not None or test_root is not None
        if self.cross_domain and (layout_class.generated or (test_class is not None and test_class.generated)):
            raise ValueError("cross-domain evaluation (test_dataset / test_root) needs two data sets on disk")
        if cuhk03_variant not in ("labeled", "detected"):
            raise ValueError(f"cuhk03_variant must be 'labeled' or 'detected', got {cuhk03_variant!r}")
        if msmt17_version not in (None, "V1", "V2"):
            raise ValueError(f"msmt17_version must be 'V1', 'V2' or None, got {msmt17_version!r}")
        check_validation_options(val_ids, validate_on_test, "val_ids", "training identities")
        values: Mapping[str, Any] = dict(cuhk03_variant=cuhk03_variant, msmt17_version=msmt17_version,
                                         msmt17_val_in_train=bool(msmt17_val_in_train),
                                         camera_pattern=camera_pattern, min_train_images=min_train_images)
        options = synthetic_options(synthetic, SyntheticReIDOptions, SyntheticReIDOptions())
        super().__init__(dataset, root, layout_class, values, num_workers, check_images, options)
        #: the data set and root of the query + gallery (``dataset`` / ``root`` unless cross-domain)
        self.test_dataset: str = test_dataset or dataset
        self.test_root = test_root if self.cross_domain else root
        #: the layout of the query + gallery (``layout`` unless cross-domain)
        self.test_layout: ReIDLayout = (self.make_layout(test_class or layout_class, self.test_root)
                                        if self.cross_domain else self.layout)
        self.save_hyperparameters(ignore=self.inapplicable_options(self.test_layout))
        self._plain_synthetic_hparams()
        self.cuhk03_variant = cuhk03_variant
        self.msmt17_version = msmt17_version
        self.msmt17_val_in_train = bool(msmt17_val_in_train)
        self.camera_pattern = camera_pattern
        self.val_ids = None if val_ids is None else int(val_ids)
        self.validate_on_test = bool(validate_on_test)
        #: the held-out validation identities' original pids (empty with ``validate_on_test``)
        self.val_identities: list[int] = []
        self.min_train_images = min_train_images
        #: ``folders``: pid -> identity folder name of the query + gallery (and of training, same root)
        self.identity_names: dict[int, str] | None = None
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.p, self.k = int(p), int(k)
        self.eval_batch_size = int(eval_batch_size)
        self.padding = int(padding)
        self.flip_prob = float(flip_prob)
        self.random_erasing = float(random_erasing)
        self.seed = int(seed)
        #: names of the part masks (``batch["mask"][:, i]`` is part ``part_names[i]``); empty for real data
        self.part_names: tuple[str, ...] = tuple(self.layout.part_names)
        self.train_dataset: ReIDTransformDataset | None = None
        self.query_dataset: ReIDTransformDataset | None = None
        self.gallery_dataset: ReIDTransformDataset | None = None
        self.eval_dataset: QueryGalleryDataset | None = None
        #: the validation query + gallery (``eval_dataset`` itself with ``validate_on_test``)
        self.val_dataset: QueryGalleryDataset | None = None
        self.pid_map: dict[int, int] | None = None

    # -- raw data ------------------------------------------------------------------------------

    @property
    def data_root(self) -> Path | None:
        """The folder that holds the three sub-folders (``None`` for the synthetic set)."""
        return None if self.layout.generated else self.layout.data_root

    @staticmethod
    def _scan(layout: ReIDLayout) -> dict[str, ReIDImageDataset]:
        """Train / query / gallery of an on-disk data set (training without distractors and junk); a
        layout that gives no images for one of them is named with its root."""
        records = layout.records()
        for split in ("train", "query", "gallery"):
            if not records.get(split):
                raise DatasetLayoutError(
                    f"the {type(layout).__name__} layout gave no {split} images for {layout.data_root} "
                    f"(a re-ID layout's records() maps 'train', 'query' and 'gallery' to image records)")
        return {split: ReIDImageDataset(records[split]) for split in ("train", "query", "gallery")}

    def _raw_datasets(self) -> dict[str, Dataset]:
        """Untransformed train / query / gallery datasets (scanned once, cached)."""
        if self._raw is None:
            if self.layout.generated:
                self._raw = self.layout.datasets(self.generator)
            else:
                source = self._scan(self.layout)
                target = self._scan(self.test_layout) if self.cross_domain else source
                # the names are the query + gallery's (none for market1501, ...)
                self.identity_names = self.test_layout.identity_names
                self._raw = {"train": source["train"], "query": target["query"], "gallery": target["gallery"]}
            if not self.validate_on_test:
                self._raw.update(self._held_out(self._raw["train"]))
        return self._raw

    def _held_out(self, train: Any) -> dict[str, Dataset]:
        """The training set without the validation identities, and their query + gallery
        (:func:`~datamodules.holdout.hold_out_identities`)."""
        pids = train.pids
        identities = len(set(pids))
        count = self.val_ids if self.val_ids is not None else default_val_ids(identities)
        split = hold_out_identities(pids, train.camids, count)
        self.val_identities = split.identities
        rank_zero_info(
            f"validation: {len(split.identities)} of the {identities} training identities of "
            f"{self.dataset} held out ({len(split.query)} queries, {len(split.gallery)} gallery images; "
            "val_ids sets how many, validate_on_test: true validates on the test split instead)")
        query_cam, gallery_cam = (0, 1) if split.camera_free else (None, None)
        return {"train": HeldOutSubset(train, split.train),
                "val_query": HeldOutSubset(train, split.query, camid=query_cam),
                "val_gallery": HeldOutSubset(train, split.gallery, camid=gallery_cam)}

    def _check_image_files(self, splits: Sequence[str]) -> None:
        """At ``setup``: check the image files of ``splits`` once, naming the data set each split is from."""
        if not self.check_images or self.layout.generated:
            return
        groups = [(("train", "val_query", "val_gallery"), self.dataset, self.root),
                  (("query", "gallery"), self.test_dataset, self.test_root)]
        for names, dataset, root in groups if self.cross_domain else [(splits, self.dataset, self.root)]:
            todo = [s for s in splits if s in names]
            check_split_images(self._raw_datasets(), todo, self._images_checked, f"{dataset} at {root}")

    @property
    def train_pids(self) -> list[int]:
        """Sorted original pids of the training identities."""
        return sorted(set(self._raw_datasets()["train"].pids))  # type: ignore[attr-defined]

    @property
    def num_classes(self) -> int:
        """Number of training identities (scans the training folder on first use, before ``setup``)."""
        return len(self.train_pids)

    @property
    def num_query(self) -> int:
        """Number of query images (the first ``num_query`` items of the evaluation loader)."""
        return len(self._raw_datasets()["query"])  # type: ignore[arg-type]

    # -- transforms -------------------------------------------------------------------------------

    def train_transform(self) -> v2.Compose:
        t = resize_pad_crop(self.image_size, self.padding) + flip(self.flip_prob)
        t += normalized(self.mean, self.std)
        if self.random_erasing > 0:
            t.append(v2.RandomErasing(p=self.random_erasing))
        return v2.Compose(t)

    def eval_transform(self) -> v2.Compose:
        """Resize (with the box and masks); the normalisation is the datasets' ``post`` step."""
        return v2.Compose(resized(self.image_size))

    def batch_augmentation(self) -> BatchPadCropFlip | None:
        """:meth:`train_transform` after the resize, on whole batches; None with random erasing."""
        if self.random_erasing > 0:
            return None
        return BatchPadCropFlip(self.padding, self.flip_prob, v2.Compose(normalized(self.mean, self.std)))

    # -- Lightning hooks ------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        held_out = () if self.validate_on_test else ("val_query", "val_gallery")
        needed = {"fit": ("train", *held_out, "query", "gallery"), "validate": held_out or ("query", "gallery")}
        self._check_image_files(needed.get(stage or "fit", ("query", "gallery")))
        if self.train_dataset is not None:
            return
        raw = self._raw_datasets()
        self.pid_map = {pid: i for i, pid in enumerate(self.train_pids)}
        targets = self.layout.generated
        batched = self.batch_augmentation() is not None  # then the items are resized only, with their seeds
        self.train_dataset = ReIDTransformDataset(
            raw["train"], self.eval_transform() if batched else self.train_transform(),
            label_map=self.pid_map, targets=False, keep_seed=batched, cache=batched and targets)
        # generated images are in memory already: keep their resized inputs too (only `post` runs again)
        evaluation = dict(post=NormalizeImage(self.mean, self.std), targets=targets, cache=targets)
        self.query_dataset = ReIDTransformDataset(raw["query"], self.eval_transform(), **evaluation)
        self.gallery_dataset = ReIDTransformDataset(raw["gallery"], self.eval_transform(), **evaluation)
        self.eval_dataset = QueryGalleryDataset(self.query_dataset, self.gallery_dataset)
        self.val_dataset = self.eval_dataset
        if not self.validate_on_test:
            self.val_dataset = QueryGalleryDataset(
                ReIDTransformDataset(raw["val_query"], self.eval_transform(), **evaluation),
                ReIDTransformDataset(raw["val_gallery"], self.eval_transform(), **evaluation))

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.train_dataset is not None
        sampler = PKSampler(self.train_dataset.pids, self.p, self.k, seed=self.seed)
        return DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.train_collate(),
                          **self._loader_kwargs())

    def _eval_loader(self, spread: bool = True, dataset: QueryGalleryDataset | None = None) -> DataLoader:
        """Queries and gallery of ``dataset`` (None: the test split); ``spread``: interleaved so that
        any prefix holds them in proportion (a sanity check or ``limit_val_batches`` sees a small
        query + gallery set, see :mod:`datamodules.eval_order`), else queries first, then the gallery
        (``predict``)."""
        if dataset is None:
            self.setup("test")
            dataset = self.eval_dataset
        assert dataset is not None
        num_query = dataset.num_query
        # the gallery's identities, distractors (pid 0) and junk (-1) spread apart: a data set on disk
        # stores the junk and distractors first, and a prefix of them alone has nothing to rank
        gallery = (torch.as_tensor(dataset.pids[num_query:]).sign() + 1).tolist()
        sampler = SpreadSampler([3] * num_query + gallery) if spread else None
        return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=sampler,
                          shuffle=False, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        """The held-out identities' query + gallery (the test split's with ``validate_on_test``)."""
        self.setup("validate")
        return self._eval_loader(dataset=self.val_dataset)
