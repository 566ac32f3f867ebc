"""``EmbeddingWriter``: what ``train.py predict`` computes, written to one file per run.

Lightning's :class:`~lightning.pytorch.callbacks.BasePredictionWriter` with ``write_interval="epoch"``:
after the predict loop the dicts that ``predict_step`` returned (``embedding`` and the batch's
labels: ``pid``/``camid``/``is_query``/``index`` for re-ID, ``label``/``index`` otherwise) are
concatenated key by key and written to ``<log_dir>/predictions/predictions.pt``, with ``path``: the
image file of every row when the predict set has files (its dataset's ``paths``; absent for the
generated data).

The format (``torch.load`` it): a dict of tensors with one row per sample, one sample per
(``is_query``, ``index``) -- the samples that ``DistributedSampler`` repeats to pad the last batch
are dropped -- ordered by dataset index, plus ``"format": "cama-predictions-2"`` and ``"task"``, what
the rows are: ``"few-shot"`` (the model classifies episodes, :class:`cama.protocols.EpisodeTask`;
rows ``embedding``/``label``/``index``), else ``"re-id"`` (the rows have ``pid``), else
``"classification"`` (they have ``logits``), else ``"retrieval"``. (``cama-predictions-1`` files had no
``task``.) Under DDP every process writes its share, and rank zero merges the shares into the one
file. ``python evaluate.py <file>`` scores re-ID and retrieval files without the model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from cama.metrics.ranking import first_per_index
from cama.protocols import EpisodeTask

__all__ = ["EmbeddingWriter", "FORMAT", "merge_predictions", "predictions_task"]

FORMAT = "cama-predictions-2"


def _flatten(predictions: Any) -> list[Mapping[str, Any]]:
    """The batch dicts of one or several predict loaders, in order."""
    if isinstance(predictions, Mapping):
        return [predictions]
    out: list[Mapping[str, Any]] = []
    for item in predictions or []:
        out += _flatten(item)
    return out


def merge_predictions(tables: Sequence[Mapping[str, Tensor]]) -> dict[str, Any]:
    """Concatenate per-process tables; keep one row per (``is_query``, ``index``), ordered by index."""
    keys = [k for k in tables[0] if all(k in t for t in tables)] if tables else []
    merged = {k: torch.cat([torch.as_tensor(t[k]) for t in tables]) for k in keys}
    if "index" in merged:
        rows = first_per_index(merged["index"], merged.get("is_query"))
        merged = {k: v[rows] for k, v in merged.items()}
    return {**merged, "format": FORMAT}


def predictions_task(model: Any, table: Mapping[str, Any]) -> str:
    """The ``task`` of a predictions file (see the module docstring) from the model and the table's keys."""
    if isinstance(model, EpisodeTask):
        return "few-shot"
    return "re-id" if "pid" in table else "classification" if "logits" in table else "retrieval"


class EmbeddingWriter(BasePredictionWriter):
    """Write the predict loop's outputs to ``<log_dir>/<folder>/predictions.pt``.

    Args:
        folder: sub-folder of the trainer's log directory.
    """

    def __init__(self, folder: str = "predictions") -> None:
        super().__init__(write_interval="epoch")
        if not folder or os.path.isabs(folder):
            raise ValueError(f"folder must be a relative folder name, got {folder!r}")
        self.folder = folder
        self.last_path: Path | None = None

    @staticmethod
    def _completed(table: dict[str, Any], trainer: pl.Trainer, model: pl.LightningModule) -> dict[str, Any]:
        """Add the ``task`` and the image file of each row, from the predict dataset's ``paths`` when it
        has them."""
        table["task"] = predictions_task(model, table)
        loaders = trainer.predict_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        paths = getattr(getattr(loader, "dataset", None), "paths", None)
        if paths is not None and "index" in table:
            table["path"] = [str(paths[i]) for i in table["index"].tolist()]
        return table

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Sequence[Any], batch_indices: Any
    ) -> None:
        directory = Path(trainer.log_dir or trainer.default_root_dir) / self.folder  # a broadcast: every rank
        batches = _flatten(predictions)
        keys = [k for k in (batches[0] if batches else {}) if all(k in b for b in batches)]
        table = {k: torch.cat([torch.as_tensor(b[k]).detach().cpu() for b in batches]) for k in keys}
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "predictions.pt"
        if trainer.world_size > 1:  # each process writes its share; rank zero merges them
            torch.save(table, directory / f"share_{trainer.global_rank}.pt")
            trainer.strategy.barrier("predictions written")
            if trainer.is_global_zero:
                shares = [directory / f"share_{r}.pt" for r in range(trainer.world_size)]
                merged = merge_predictions([torch.load(p, weights_only=True) for p in shares])
                torch.save(self._completed(merged, trainer, pl_module), path)
                for share in shares:
                    share.unlink()
            trainer.strategy.barrier("predictions merged")
        else:
            torch.save(self._completed(merge_predictions([table]), trainer, pl_module), path)
        self.last_path = path
        rank_zero_info(f"predictions written to {path} (python evaluate.py {path} scores them)")
