"""The re-ID datasets of :class:`~datamodules.reid.ReIDDataModule`: images listed by records, their
transformed (relabelled, augmented) view, and a query set followed by a gallery set."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .images import SeededTransformDataset, load_image
from .reid_scan import ReIDRecord
from .samplers import split_item

__all__ = ["ReIDImageDataset", "ReIDTransformDataset", "QueryGalleryDataset"]


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

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.records]

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, _ = split_item(item)
        r = self.records[index]
        return {"image": tv_tensors.Image(load_image(r.path)), "pid": r.pid, "camid": r.camid}


class ReIDTransformDataset(SeededTransformDataset):
    """Applies a (random) transform to the items of a base re-ID dataset (:class:`SeededTransformDataset`).

    ``label_map`` (:attr:`pid_map`) relabels pids; ``targets`` keeps the transformed ``box`` / ``mask``
    and the ``evidence*`` ground truth: items ``{"pid", "camid", "index", "image"}`` plus those.
    """

    label_key = "pid"
    extra_keys = ("camid",)
    vector_keys = ("evidence", "evidence_required")

    @property
    def pid_map(self) -> dict[int, int] | None:
        return self.label_map

    @property
    def pids(self) -> list[int]:
        return self.labels

    @property
    def camids(self) -> list[int]:
        return list(self.base.camids)  # type: ignore[attr-defined]

    @property
    def paths(self) -> list[str] | None:
        """The image files (None for the generated data)."""
        return getattr(self.base, "paths", None)


class QueryGalleryDataset(Dataset):
    """Query items followed by gallery items; ``index`` is the position in the concatenation."""

    def __init__(self, query: Dataset, gallery: Dataset) -> None:
        self.query, self.gallery = query, gallery
        self.num_query = len(query)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.num_query + len(self.gallery)  # type: ignore[arg-type]

    @property
    def pids(self) -> list[int]:
        return list(self.query.pids) + list(self.gallery.pids)  # type: ignore[attr-defined]

    @property
    def camids(self) -> list[int]:
        return list(self.query.camids) + list(self.gallery.camids)  # type: ignore[attr-defined]

    @property
    def paths(self) -> list[str] | None:
        """The image file of every item (None for the generated data)."""
        query, gallery = self.query.paths, self.gallery.paths  # type: ignore[attr-defined]
        return None if query is None or gallery is None else list(query) + list(gallery)

    def __getitem__(self, item: int) -> dict[str, Any]:
        index, _ = split_item(item)
        if index < self.num_query:
            out = self.query[index]
        else:
            out = self.gallery[index - self.num_query]
        out["index"] = torch.tensor(index, dtype=torch.long)
        out["is_query"] = torch.tensor(index < self.num_query)
        return out
