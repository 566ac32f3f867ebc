"""The re-ID layouts :class:`~datamodules.reid.ReIDDataModule` reads, one class each, registered by name.

* ``market1501``, ``dukemtmc``, ``cuhk03`` (:class:`FileNameLayout`: pid and camera in the file
  name, ``bounding_box_train/``, ``query/``, ``bounding_box_test/``);
* ``msmt17``: MSMT17 as released (V1 or V2), its images named by list files
  (:mod:`datamodules.reid_lists`);
* ``folders``: your own data, one folder per identity (:mod:`datamodules.reid_folders`);
* ``synthetic``: :class:`~datamodules.synthetic.SyntheticReID`, drawn on the fly, with the options
  :class:`SyntheticReIDOptions` (the data module's ``synthetic``).

A layout of your own subclasses :class:`ReIDLayout` and implements :meth:`ReIDLayout.records`; it is
registered with :func:`~datamodules.registry.register_reid_layout` or named by its class path in a
config (``docs/data.md``, "Your own layout").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset

from .errors import DatasetLayoutError
from .registry import register_reid_layout
from .reid_folders import scan_reid_folders
from .reid_lists import resolve_msmt17_root, scan_msmt17
from .reid_scan import ReIDRecord, resolve_reid_root, scan_reid_folder
from .synthetic import PART_NAMES, SyntheticReID, SyntheticReIDConfig
from .synthetic.common import SeededOptions

__all__ = ["ReIDLayout", "FileNameLayout", "Market1501", "DukeMTMC", "CUHK03", "MSMT17", "ReIDFolderLayout",
           "SyntheticReIDLayout", "SyntheticReIDOptions", "REID_SPLITS"]

REID_SPLITS = ("train", "query", "gallery")


@dataclass(frozen=True)
class SyntheticReIDOptions(SeededOptions, SyntheticReIDConfig):
    """The synthetic re-ID set of a data module (its ``synthetic`` option): the generator's
    :class:`~datamodules.synthetic.SyntheticReIDConfig` and the seed of the data.

    Attributes:
        num_train_ids: training identities.
        num_test_ids: test identities (disjoint from the training ones).
        num_cameras: cameras; each has its own light, colour cast and background.
        cameras_per_id: (min, max) cameras in which an identity appears (min >= 2).
        images_per_camera: (min, max) images of an identity per camera (training set and gallery).
        query_cameras: query images per test identity, one in each of its first ``query_cameras`` cameras.
        num_distractors: gallery distractors (pid 0: no proper person).
        num_junk: gallery junk images (pid -1: heavily cut persons).
        family_size: identities per family (a base plus siblings that change exactly one part).
        height: native image height (Market-1501 crops are 128x64).
        width: native image width.
        occlusion_prob: probability that an occluding block covers part of the person.
        noise_std: (min, max) per-image Gaussian noise standard deviation (in [0, 1] units).
        placement: where a person stands in its crop: ``"tight"`` (hand-labelled-like, centred) or
            ``"loose"`` (detector-like, anywhere: the setting under which a map's localization says
            more than the centre prior).
        seed: seed of the synthetic data (identities, cameras, images).
    """

    seed: int = 0

    generator_config: ClassVar[type] = SyntheticReIDConfig


class ReIDLayout:
    """A re-ID data set layout: where its images are and which identity and camera each shows.

    A subclass on disk implements :meth:`records`; a generated one sets ``generated = True`` and
    implements :meth:`generator` and :meth:`datasets`. The data module makes one per data set,
    ``Layout(root, **{name: value for name in Layout.options})``.

    Attributes:
        name: the name in messages (the registered name of the built-in layouts).
        generated: drawn on the fly (no root, no files to check; ground-truth boxes and part masks).
        options: the data module's options the layout reads (``ReIDDataModule.layout_options``),
            passed to ``__init__`` by name; the others are left out of the logged hyper-parameters.
        part_names: names of the part masks of the evaluation items (generated layouts).
        identity_names: pid -> identity name, where the layout has names (set by :meth:`records`).
    """

    name: ClassVar[str] = "custom"
    generated: ClassVar[bool] = False
    options: ClassVar[tuple[str, ...]] = ()
    part_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: str | None = None, **options: Any) -> None:
        self.root = root
        self.settings = options
        self.identity_names: dict[int, str] | None = None

    @property
    def data_root(self) -> Path | None:
        """The folder the split folders are in (``root`` unless the layout finds it below)."""
        return Path(self.root).expanduser() if self.root is not None else None

    def records(self) -> dict[str, list[ReIDRecord]]:
        """``{"train", "query", "gallery"}`` -> the records of the split (training ones with pid > 0)."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement records()")

    def generator(self, options: SyntheticReIDOptions) -> Any:
        raise NotImplementedError(f"{type(self).__qualname__} is not a generated layout")

    def datasets(self, generator: Any) -> dict[str, Dataset]:
        raise NotImplementedError(f"{type(self).__qualname__} is not a generated layout")


class FileNameLayout(ReIDLayout):
    """pid and camera in the file name (``pattern``: group 1 the pid, group 2 the 1-based camera),
    three split folders; ``root`` may be the folder holding them or its parent
    (:func:`~datamodules.reid_scan.resolve_reid_root`)."""

    pattern: ClassVar[str] = r"^(-?\d+)_c(\d+)"
    example: ClassVar[str] = ""
    hint: ClassVar[str] = ""  # picks the folder among several complete candidates under root
    train: ClassVar[str] = "bounding_box_train"
    query: ClassVar[str] = "query"
    gallery: ClassVar[str] = "bounding_box_test"

    @property
    def folders(self) -> tuple[str, str, str]:
        return (self.train, self.query, self.gallery)

    def direct_candidates(self, root: Path) -> list[Path]:
        return [root]

    def child_candidate(self, child: Path) -> Path:
        return child

    def expected_folders(self) -> str:
        return f"{list(self.folders)}"

    @property
    def data_root(self) -> Path:
        return resolve_reid_root(self, self.root)

    def records(self) -> dict[str, list[ReIDRecord]]:
        base = self.data_root
        train = [r for r in scan_reid_folder(base / self.train, self) if r.pid > 0]
        if not train:
            raise DatasetLayoutError(f"no training images with pid > 0 in {base / self.train}")
        return {"train": train, "query": scan_reid_folder(base / self.query, self),
                "gallery": scan_reid_folder(base / self.gallery, self)}


class Market1501(FileNameLayout):
    """Market-1501: ``0002_c1s1_000451_03.jpg`` (pid 0 distractors, -1 junk)."""

    name = "market1501"
    example = "0002_c1s1_000451_03.jpg"
    hint = "market"


class DukeMTMC(FileNameLayout):
    """DukeMTMC-reID: ``0001_c2_f0046182.jpg``."""

    name = "dukemtmc"
    example = "0001_c2_f0046182.jpg"
    hint = "duke"


class CUHK03(FileNameLayout):
    """CUHK03-NP: ``0001_c1_1.png`` in ``cuhk03-np/<cuhk03_variant>/`` (``labeled`` or ``detected``)."""

    name = "cuhk03"
    pattern = r"^(\d+)_c(\d+)"
    example = "0001_c1_1.png"
    hint = "cuhk"
    options = ("cuhk03_variant",)

    @property
    def variant(self) -> str:
        return str(self.settings.get("cuhk03_variant", "labeled"))

    def direct_candidates(self, root: Path) -> list[Path]:
        v = self.variant
        return [root / v, root / "cuhk03-np" / v, root / "cuhk03_np" / v, root]

    def child_candidate(self, child: Path) -> Path:
        return child / self.variant

    def expected_folders(self) -> str:
        v = self.variant
        return f"cuhk03-np/{v}/{{{', '.join(self.folders)}}} (or {v}/... under root)"


class MSMT17(ReIDLayout):
    """MSMT17 (Wei et al., CVPR 2018): ``MSMT17_V1/`` (``train/``, ``test/``) or ``MSMT17_V2/``
    (``mask_train_v2/``, ``mask_test_v2/``) with ``list_{train,val,query,gallery}.txt``
    (:mod:`datamodules.reid_lists`). ``msmt17_version`` picks the release (``None``: the one under
    ``root``); ``msmt17_val_in_train`` adds list_val to the training set (the default: 32,621 images)."""

    name = "msmt17"
    options = ("msmt17_version", "msmt17_val_in_train")

    @property
    def data_root(self) -> Path:
        return resolve_msmt17_root(self.root, self.settings.get("msmt17_version"))[0]

    def records(self) -> dict[str, list[ReIDRecord]]:
        return scan_msmt17(self.root, self.settings.get("msmt17_version"),
                           bool(self.settings.get("msmt17_val_in_train", True)))


class ReIDFolderLayout(ReIDLayout):
    """Your own data: ``root/{train,query,gallery}/<identity>/<image>`` (:mod:`datamodules.reid_folders`;
    ``camera_pattern``, ``min_train_images``)."""

    name = "folders"
    options = ("camera_pattern", "min_train_images")

    def records(self) -> dict[str, list[ReIDRecord]]:
        tree = scan_reid_folders(self.root, self.settings.get("camera_pattern"), self.settings.get("min_train_images"))
        self.identity_names = tree.names
        return tree.records


class SyntheticReIDLayout(ReIDLayout):
    """The synthetic set (:class:`~datamodules.synthetic.SyntheticReID`), with part masks."""

    name = "synthetic"
    generated = True
    part_names = PART_NAMES

    def generator(self, options: SyntheticReIDOptions) -> SyntheticReID:
        return SyntheticReID(seed=options.seed, config=options.config())

    def datasets(self, generator: SyntheticReID) -> dict[str, Dataset]:
        return {s: generator.dataset(s, cache=True) for s in REID_SPLITS}


register_reid_layout("market1501", Market1501)
register_reid_layout("dukemtmc", DukeMTMC)
register_reid_layout("cuhk03", CUHK03)
register_reid_layout("msmt17", MSMT17)
register_reid_layout("folders", ReIDFolderLayout)
register_reid_layout("synthetic", SyntheticReIDLayout)
