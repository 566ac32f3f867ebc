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

Layouts (``dataset``, looked up among the class layouts of :mod:`datamodules.class_layouts`, or the
class path of a :class:`~datamodules.class_layouts.ClassLayout` of your own):

* ``"miniimagenet"``: ``root`` holds ``images/`` and ``train.csv``, ``val.csv``, ``test.csv`` with
  the header ``filename,label`` (Ravi & Larochelle's split, 64 / 16 / 20 classes) or
  ``class_name,image_name`` (columns found by name, in any order); images in ``images/<file>`` or
  ``images/<label>/<file>``;
* ``"cub"`` (or ``"cub200"``): the CUB-200-2011 folder (``images/``, ``images.txt``, ``image_class_labels.txt``,
  ``classes.txt``, ``bounding_boxes.txt``; ``root`` may be its parent). The few-shot split of Chen et
  al. ("A closer look at few-shot classification", used by the FAM paper): the ``i``-th class
  (0-based, in ``classes.txt`` order) is a training class when ``i % 2 == 0``, validation when
  ``i % 4 == 1``, test when ``i % 4 == 3`` (100 / 50 / 50 of the 200 classes); boxes from
  ``bounding_boxes.txt``;
* ``"folders"``: ``root/<split>/<class>/<image>`` for the splits ``train`` (or ``base``), ``val``
  (``validation``), ``test`` (``novel``); a class is any folder below the split folder that holds
  images directly, so nested layouts (Omniglot's ``alphabet/character``) work, the class name being
  the relative path;
* ``"synthetic"``: :class:`~datamodules.synthetic.SyntheticClasses`, drawn on the fly
  (64 / 16 / 20 classes by default), with box and mask; its options are the nested ``synthetic``
  (:class:`~datamodules.class_layouts.SyntheticClassesOptions`).

A missing root, split file or folder, an empty split, an unreadable image, too few classes for N
ways and a class with fewer than K+Q images stop the run with :class:`DatasetLayoutError`
(:class:`UnreadableImageError` for images) naming the file, split or class.

The layouts are read by :mod:`datamodules.class_scan` (through :mod:`datamodules.class_layouts`), the
images wrapped by :mod:`datamodules.class_images`.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Dataset

from .class_images import ClassImagesDataModule
from .class_layouts import SyntheticClassesOptions
from .class_scan import SPLITS
from .episodes import EpisodeCollate, EpisodeSampler
from .errors import DatasetLayoutError, UnreadableImageError
from .seeding import mix_seed

__all__ = ["DatasetLayoutError", "UnreadableImageError", "FewShotDataModule"]


class FewShotDataModule(ClassImagesDataModule):
    """Episodic few-shot data: miniImageNet, CUB-200-2011, class folders or the synthetic classes.

    Args:
        dataset: which layout (see the module docstring: a registered name or a layout class path);
            ``"synthetic"`` needs no ``root``.
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
        synthetic: the synthetic classes (a generated layout only), a nested mapping in a config:
            ``num_classes``, ``images_per_class``, ``few_shot_splits`` (default: miniImageNet's
            64 / 16 / 20 proportions), ``height``, ``width``, ``seed``, ...
            (:class:`~datamodules.class_layouts.SyntheticClassesOptions`; ``None``: its defaults,
            100 classes of 60 84x84 images).
        check_images: at ``setup``, check that every image file the stage needs can be read (size, header
            and end marker, :mod:`datamodules.image_check`); ``fit`` checks all three splits.
    """

    splits = SPLITS
    layout_options = ("split_folders",)

    def __init__(
        self,
        dataset: str = "synthetic",
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
        synthetic: SyntheticClassesOptions | None = None,
        check_images: bool = True,
    ) -> None:
        super().__init__(dataset, root, {"split_folders": split_folders}, image_size, padding, flip_prob,
                         color_jitter, num_workers, eval_cache, synthetic, check_images)
        # eval_cache (a memory option, no result depends on it) is not logged: ProtoNet has its own
        # eval_cache (its embedding cache), and Lightning stops a run whose model and data module log
        # two values under one name
        self.save_hyperparameters(ignore=[*self.inapplicable_options(), "eval_cache"])
        self._plain_synthetic_hparams()
        self.split_folders = tuple(split_folders) if split_folders else None
        self.train_episode = (int(train_way), int(train_shot), int(train_query))
        self.eval_episode = (int(eval_way), int(eval_shot), int(eval_query))
        self.episodes = {"train": int(train_episodes), "val": int(val_episodes), "test": int(test_episodes)}
        self.eval_batch_size = int(eval_batch_size)
        self.seed = int(seed)
        self.eval_seed = int(eval_seed)

    # -- raw data --------------------------------------------------------------------------------

    def _source(self, split: str) -> str:
        return self.layout.describe(split, self.dataset)

    def _raw_datasets(self) -> dict[str, Dataset]:
        """Untransformed train / val / test datasets (scanned once, cached)."""
        if self._raw is None:
            self._raw = self._layout_datasets()
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
        if split == "train":  # the batched augmentation, if any, after the episode's collation
            collate = self.train_collate(collate)
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
