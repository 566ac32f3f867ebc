"""Person re-ID data: Market-1501, DukeMTMC-reID, CUHK03-NP (labeled / detected) and the synthetic set.

:class:`ReIDDataModule` gives

* a training loader of identity-balanced batches (:class:`~datamodules.samplers.PKSampler`, ``p``
  identities x ``k`` images) ``{"image": float [B,3,H,W], "pid": long [B] (relabelled 0..C-1),
  "camid": long [B] (0-based), "index": long [B]}`` with the paper's augmentation (resize, pad +
  random crop, horizontal flip, optional random erasing; ImageNet normalisation);
* one evaluation loader (validation, test and predict alike: re-ID has no separate validation
  split) over the query set followed by the gallery ``{"image", "pid" (original: 0 distractor,
  -1 junk), "camid", "index" (position in query + gallery), "is_query": bool [B]}``, plus, for the
  synthetic set, ``"box": float [B,4]`` (x1, y1, x2, y2 in pixels of the transformed image) and
  ``"mask": bool [B,P,H,W]`` (visible pixels of each part, :attr:`ReIDDataModule.part_names`).

Real layouts are read from file names (``0002_c1s1_000451_03.jpg``, ``0001_c2_f0046182.jpg``,
``0001_c1_1.png``); wrong roots, missing folders, unparsable names and unreadable images raise
:class:`DatasetLayoutError` naming the path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2

from .errors import DatasetLayoutError, UnreadableImageError
from .eval_order import SpreadSampler
from .image_check import check_split_images
from .samplers import PKSampler, run_seeded, split_item
from .seeding import single_thread
from .synthetic import PART_NAMES, SyntheticReID, SyntheticReIDConfig

__all__ = [
    "DatasetLayoutError",
    "UnreadableImageError",
    "ReIDRecord",
    "ReIDLayout",
    "REID_LAYOUTS",
    "ReIDImageDataset",
    "ReIDTransformDataset",
    "QueryGalleryDataset",
    "ReIDDataModule",
    "resolve_reid_root",
    "scan_reid_folder",
    "load_image",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class ReIDRecord:
    path: str
    pid: int
    camid: int  # 0-based


@dataclass(frozen=True)
class ReIDLayout:
    name: str
    pattern: str  # regex on the file name: group 1 = pid, group 2 = camera (1-based)
    example: str
    train: str = "bounding_box_train"
    query: str = "query"
    gallery: str = "bounding_box_test"

    @property
    def folders(self) -> tuple[str, str, str]:
        return (self.train, self.query, self.gallery)


REID_LAYOUTS: dict[str, ReIDLayout] = {
    "market1501": ReIDLayout("market1501", r"^(-?\d+)_c(\d+)", "0002_c1s1_000451_03.jpg"),
    "dukemtmc": ReIDLayout("dukemtmc", r"^(-?\d+)_c(\d+)", "0001_c2_f0046182.jpg"),
    "cuhk03": ReIDLayout("cuhk03", r"^(\d+)_c(\d+)", "0001_c1_1.png"),
}


def _list_dirs(path: Path) -> list[str]:
    try:
        return sorted(p.name for p in path.iterdir() if p.is_dir())
    except OSError:
        return []


def resolve_reid_root(dataset: str, root: str | Path | None, cuhk03_variant: str = "labeled") -> Path:
    """The folder that holds ``bounding_box_train/``, ``query/`` and ``bounding_box_test/``.

    ``root`` may be that folder or its parent (e.g. the folder holding ``Market-1501-v15.09.15``);
    for CUHK03-NP it may be the ``cuhk03-np`` folder (holding ``labeled/`` and ``detected/``), its
    parent, or the variant folder itself.
    """
    layout = REID_LAYOUTS[dataset]
    if root is None:
        raise DatasetLayoutError(f"dataset={dataset!r} needs a root folder (root=None)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"{dataset} root {root} does not exist or is not a folder")
    expected = layout.folders

    def score(path: Path) -> int:
        return sum((path / f).is_dir() for f in expected)

    direct = [root]
    if dataset == "cuhk03":
        direct = [root / cuhk03_variant, root / "cuhk03-np" / cuhk03_variant,
                  root / "cuhk03_np" / cuhk03_variant, root]
    for path in direct:
        if score(path) == len(expected):
            return path
    children = [root / d for d in _list_dirs(root)]
    if dataset == "cuhk03":
        children = [c / cuhk03_variant for c in children]
    complete = [c for c in children if score(c) == len(expected)]
    if len(complete) > 1:  # e.g. a data/ folder holding several data sets: pick by name
        hint = {"market1501": "market", "dukemtmc": "duke", "cuhk03": "cuhk"}[dataset]
        named = [c for c in complete if hint in str(c.relative_to(root)).lower()]
        if len(named) != 1:
            raise DatasetLayoutError(
                f"{dataset} root {root} holds several candidate folders {[str(c) for c in complete]}; "
                "pass the one to use as root"
            )
        complete = named
    if complete:
        return complete[0]
    best = max(direct + children, key=score)
    if score(best) > 0:
        missing = [str(best / f) for f in expected if not (best / f).is_dir()]
        raise DatasetLayoutError(
            f"{dataset} folder {best} is missing the sub-folder(s) {missing}; "
            f"expected {list(expected)}, found {_list_dirs(best)}"
        )
    where = f"{list(expected)}" if dataset != "cuhk03" else (
        f"cuhk03-np/{cuhk03_variant}/{{{', '.join(expected)}}} (or {cuhk03_variant}/... under root)")
    raise DatasetLayoutError(
        f"{dataset} root {root} does not hold the expected sub-folders {where}; "
        f"found: {_list_dirs(root) or 'nothing'}"
    )


def scan_reid_folder(folder: str | Path, layout: ReIDLayout | str) -> list[ReIDRecord]:
    """Records of the images of one folder, sorted by file name; non-image files are skipped."""
    layout = REID_LAYOUTS[layout] if isinstance(layout, str) else layout
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetLayoutError(f"missing {layout.name} sub-folder {folder}")
    regex = re.compile(layout.pattern)
    records = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        m = regex.match(path.name)
        if m is None:
            raise DatasetLayoutError(
                f"cannot parse {layout.name} file name {path}: expected the pattern {layout.pattern!r} "
                f"(pid, camera), e.g. {layout.example}"
            )
        pid, cam = int(m.group(1)), int(m.group(2))
        if cam < 1:
            raise DatasetLayoutError(f"camera numbers start at 1 in {layout.name} file names: {path}")
        records.append(ReIDRecord(str(path), pid, cam - 1))
    return records


def load_image(path: str) -> torch.Tensor:
    """Decode an image file to uint8 RGB [3, H, W]; :class:`UnreadableImageError` names the file."""
    try:
        return decode_image(read_file(path), mode=ImageReadMode.RGB)
    except Exception as e:  # noqa: BLE001 - torchvision raises RuntimeError / ValueError / OSError
        try:  # formats torchvision cannot decode (e.g. some BMP variants)
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB")).copy()
            return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        except Exception:  # noqa: BLE001
            raise UnreadableImageError(f"cannot read image {path}: {e}") from e


class ReIDImageDataset(Dataset):
    """Images listed by :class:`ReIDRecord` s; items ``{"image": tv_tensors.Image uint8, "pid", "camid"}``."""

    def __init__(self, records: Sequence[ReIDRecord]) -> None:
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def pids(self) -> list[int]:
        return [r.pid for r in self.records]

    @property
    def camids(self) -> list[int]:
        return [r.camid for r in self.records]

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, _ = split_item(item)
        r = self.records[index]
        return {"image": tv_tensors.Image(load_image(r.path)), "pid": r.pid, "camid": r.camid}


def _pids(ds: Dataset) -> list[int]:
    return list(ds.pids)  # type: ignore[attr-defined]


class ReIDTransformDataset(Dataset):
    """Applies a (random) transform to the items of a base re-ID dataset.

    ``__getitem__`` accepts an index or ``(index, sample_seed)``; with a seed the transform runs under
    a forked torch RNG seeded with it, so the output depends on the seed only. ``pid_map`` relabels
    pids; ``targets`` keeps the ``box`` / ``mask`` ground truth (transformed with the image).
    """

    def __init__(
        self,
        base: Dataset,
        transform: Callable,
        pid_map: dict[int, int] | None = None,
        targets: bool = False,
    ) -> None:
        self.base = base
        self.transform = transform
        self.pid_map = pid_map
        self.targets = targets

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    @property
    def pids(self) -> list[int]:
        pids = _pids(self.base)
        return [self.pid_map[p] for p in pids] if self.pid_map is not None else pids

    @property
    def camids(self) -> list[int]:
        return list(self.base.camids)  # type: ignore[attr-defined]

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        with single_thread():
            return self._get(item)

    def _get(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = split_item(item)
        sample = self.base[index]
        pid = sample["pid"]
        out: dict[str, Any] = {
            "pid": torch.tensor(self.pid_map[pid] if self.pid_map is not None else pid, dtype=torch.long),
            "camid": torch.tensor(sample["camid"], dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long),
        }
        if self.targets and "box" in sample:
            image, box, mask = run_seeded(
                self.transform, sample["image"], sample["box"], sample["mask"], seed=seed)
            out["box"] = box.as_subclass(torch.Tensor).reshape(4).float()
            out["mask"] = mask.as_subclass(torch.Tensor).bool()
        else:
            image = run_seeded(self.transform, sample["image"], seed=seed)
        out["image"] = image.as_subclass(torch.Tensor)
        return out


class QueryGalleryDataset(Dataset):
    """Query items followed by gallery items; ``index`` is the position in the concatenation."""

    def __init__(self, query: Dataset, gallery: Dataset) -> None:
        self.query, self.gallery = query, gallery
        self.num_query = len(query)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.num_query + len(self.gallery)  # type: ignore[arg-type]

    @property
    def pids(self) -> list[int]:
        return _pids(self.query) + _pids(self.gallery)

    @property
    def camids(self) -> list[int]:
        return list(self.query.camids) + list(self.gallery.camids)  # type: ignore[attr-defined]

    def __getitem__(self, item: int) -> dict[str, Any]:
        index, _ = split_item(item)
        if index < self.num_query:
            out = self.query[index]
        else:
            out = self.gallery[index - self.num_query]
        out["index"] = torch.tensor(index, dtype=torch.long)
        out["is_query"] = torch.tensor(index < self.num_query)
        return out



def denormalize_images(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float], as_uint8: bool = False
) -> torch.Tensor:
    """Undo ``(x - mean) / std`` on ``[..., 3, H, W]`` images: float in [0, 1], or uint8 with ``as_uint8``."""
    shape = (3, 1, 1)
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(shape)
    out = (images * std_t + mean_t).clamp(0.0, 1.0)
    return (out * 255.0 + 0.5).to(torch.uint8) if as_uint8 else out

class ReIDDataModule(LightningDataModule):
    """Person re-ID data: Market-1501, DukeMTMC-reID, CUHK03-NP or the embedded synthetic set.

    Args:
        dataset: which data set; ``"synthetic"`` is generated on the fly and needs no ``root``.
        root: folder holding ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` (or its
            parent); for ``cuhk03`` the ``cuhk03-np`` folder (holding ``labeled/`` and ``detected/``)
            or its parent.
        cuhk03_variant: CUHK03-NP boxes: hand-labelled or detected.
        image_size: (height, width) of the network input.
        p: identities per training batch.
        k: images per identity in a training batch (batch size ``p * k``).
        eval_batch_size: batch size of the query + gallery loader.
        num_workers: data-loader worker processes.
        padding: zero padding before the random crop back to ``image_size`` (0 disables the crop).
        flip_prob: probability of a horizontal flip.
        random_erasing: probability of random erasing (0 disables it).
        seed: seed of the training batches and augmentations (a function of seed and epoch only).
        synthetic_train_ids: synthetic training identities.
        synthetic_test_ids: synthetic test identities.
        synthetic_cameras: synthetic cameras.
        synthetic_cameras_per_id: (min, max) cameras per synthetic identity.
        synthetic_images_per_camera: (min, max) images per synthetic identity and camera.
        synthetic_query_cameras: query images per synthetic test identity (one per camera).
        synthetic_distractors: synthetic gallery distractors (pid 0).
        synthetic_junk: synthetic gallery junk images (pid -1).
        synthetic_occlusion: probability that a synthetic person is partly occluded.
        synthetic_placement: where a synthetic person stands in its crop: ``"tight"``
            (hand-labelled-like, centred) or ``"loose"`` (detector-like, anywhere; the setting under
            which a map's localization says more than the centre prior, see
            :class:`~datamodules.synthetic.SyntheticReIDConfig`).
        synthetic_seed: seed of the synthetic data (identities, cameras, images).
        check_images: at ``setup``, check that every image file the stage needs can be read (size,
            header and end marker, see :mod:`datamodules.image_check`); ``fit`` checks all three folders.
    """

    def __init__(
        self,
        dataset: Literal["synthetic", "market1501", "dukemtmc", "cuhk03"] = "synthetic",
        root: str | None = None,
        cuhk03_variant: Literal["labeled", "detected"] = "labeled",
        image_size: tuple[int, int] = (256, 128),
        p: int = 8,
        k: int = 4,
        eval_batch_size: int = 128,
        num_workers: int = 2,
        padding: int = 10,
        flip_prob: float = 0.5,
        random_erasing: float = 0.0,
        seed: int = 0,
        synthetic_train_ids: int = 150,
        synthetic_test_ids: int = 100,
        synthetic_cameras: int = 6,
        synthetic_cameras_per_id: tuple[int, int] = (3, 4),
        synthetic_images_per_camera: tuple[int, int] = (3, 4),
        synthetic_query_cameras: int = 2,
        synthetic_distractors: int = 200,
        synthetic_junk: int = 100,
        synthetic_occlusion: float = 0.25,
        synthetic_placement: Literal["tight", "loose"] = "tight",
        synthetic_seed: int = 0,
        check_images: bool = True,
    ) -> None:
        super().__init__()
        if dataset not in ("synthetic", *REID_LAYOUTS):
            raise ValueError(
                f"unknown dataset {dataset!r}, expected 'synthetic' or one of {list(REID_LAYOUTS)}")
        if cuhk03_variant not in ("labeled", "detected"):
            raise ValueError(f"cuhk03_variant must be 'labeled' or 'detected', got {cuhk03_variant!r}")
        self.save_hyperparameters()
        self.dataset = dataset
        self.root = root
        self.cuhk03_variant = cuhk03_variant
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.p, self.k = int(p), int(k)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.padding = int(padding)
        self.flip_prob = float(flip_prob)
        self.random_erasing = float(random_erasing)
        self.seed = int(seed)
        self.synthetic_config = SyntheticReIDConfig(
            num_train_ids=synthetic_train_ids,
            num_test_ids=synthetic_test_ids,
            num_cameras=synthetic_cameras,
            cameras_per_id=tuple(synthetic_cameras_per_id),
            images_per_camera=tuple(synthetic_images_per_camera),
            query_cameras=synthetic_query_cameras,
            num_distractors=synthetic_distractors,
            num_junk=synthetic_junk,
            occlusion_prob=synthetic_occlusion,
            placement=synthetic_placement,
        ) if dataset == "synthetic" else None
        self.synthetic_seed = int(synthetic_seed)
        self.check_images = bool(check_images)
        self._images_checked: set[str] = set()
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD
        #: names of the part masks (``batch["mask"][:, i]`` is part ``part_names[i]``); empty for real data
        self.part_names: tuple[str, ...] = PART_NAMES if dataset == "synthetic" else ()
        self._generator: SyntheticReID | None = None
        self._raw: dict[str, Dataset] | None = None
        self.train_dataset: ReIDTransformDataset | None = None
        self.query_dataset: ReIDTransformDataset | None = None
        self.gallery_dataset: ReIDTransformDataset | None = None
        self.eval_dataset: QueryGalleryDataset | None = None
        self.pid_map: dict[int, int] | None = None

    # -- raw data ------------------------------------------------------------------------------

    @property
    def generator(self) -> SyntheticReID | None:
        """The synthetic generator (``None`` for real data)."""
        if self.dataset == "synthetic" and self._generator is None:
            self._generator = SyntheticReID(seed=self.synthetic_seed, config=self.synthetic_config)
        return self._generator

    @property
    def data_root(self) -> Path | None:
        """The folder that holds the three sub-folders (``None`` for the synthetic set)."""
        if self.dataset == "synthetic":
            return None
        return resolve_reid_root(self.dataset, self.root, self.cuhk03_variant)

    def _raw_datasets(self) -> dict[str, Dataset]:
        """Untransformed train / query / gallery datasets (scanned once, cached)."""
        if self._raw is None:
            if self.dataset == "synthetic":
                gen = self.generator
                assert gen is not None
                self._raw = {s: gen.dataset(s) for s in ("train", "query", "gallery")}
            else:
                base = self.data_root
                assert base is not None
                layout = REID_LAYOUTS[self.dataset]
                train = [r for r in scan_reid_folder(base / layout.train, layout) if r.pid > 0]
                if not train:
                    raise DatasetLayoutError(f"no training images with pid > 0 in {base / layout.train}")
                self._raw = {
                    "train": ReIDImageDataset(train),
                    "query": ReIDImageDataset(scan_reid_folder(base / layout.query, layout)),
                    "gallery": ReIDImageDataset(scan_reid_folder(base / layout.gallery, layout)),
                }
        return self._raw

    @property
    def train_pids(self) -> list[int]:
        """Sorted original pids of the training identities."""
        return sorted(set(_pids(self._raw_datasets()["train"])))

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
        t: list[Any] = [v2.Resize(self.image_size, antialias=True)]
        if self.padding > 0:
            t += [v2.Pad(self.padding), v2.RandomCrop(self.image_size)]
        if self.flip_prob > 0:
            t.append(v2.RandomHorizontalFlip(self.flip_prob))
        t += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        if self.random_erasing > 0:
            t.append(v2.RandomErasing(p=self.random_erasing))
        return v2.Compose(t)

    def eval_transform(self) -> v2.Compose:
        return v2.Compose([
            v2.Resize(self.image_size, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(self.mean, self.std),
        ])

    def denormalize(self, images: torch.Tensor, as_uint8: bool = False) -> torch.Tensor:
        """Undo the normalisation: float images in [0, 1] (or uint8 with ``as_uint8``), same shape."""
        return denormalize_images(images, self.mean, self.std, as_uint8)

    # -- Lightning hooks ------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.check_images and self.dataset != "synthetic":
            splits = ("train", "query", "gallery") if stage in (None, "fit") else ("query", "gallery")
            source = f"{self.dataset} at {self.root}"
            check_split_images(self._raw_datasets(), splits, self._images_checked, source)
        if self.train_dataset is not None:
            return
        raw = self._raw_datasets()
        self.pid_map = {pid: i for i, pid in enumerate(self.train_pids)}
        targets = self.dataset == "synthetic"
        self.train_dataset = ReIDTransformDataset(raw["train"], self.train_transform(), self.pid_map)
        self.query_dataset = ReIDTransformDataset(raw["query"], self.eval_transform(), targets=targets)
        self.gallery_dataset = ReIDTransformDataset(raw["gallery"], self.eval_transform(), targets=targets)
        self.eval_dataset = QueryGalleryDataset(self.query_dataset, self.gallery_dataset)

    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
        }

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.train_dataset is not None
        sampler = PKSampler(self.train_dataset.pids, self.p, self.k, seed=self.seed)
        return DataLoader(self.train_dataset, batch_sampler=sampler, **self._loader_kwargs())

    def _eval_loader(self, spread: bool = True) -> DataLoader:
        """Queries and gallery; ``spread``: interleaved so that any prefix holds both in proportion
        (a sanity check or ``limit_val_batches`` sees a small query + gallery set, see
        :mod:`datamodules.eval_order`), else queries first, then the gallery (``predict``)."""
        self.setup("test")
        assert self.eval_dataset is not None
        num_query = self.eval_dataset.num_query
        groups = [1] * num_query + [0] * (len(self.eval_dataset) - num_query)
        sampler = SpreadSampler(groups) if spread else None
        return DataLoader(self.eval_dataset, batch_size=self.eval_batch_size, sampler=sampler,
                          shuffle=False, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(spread=False)
