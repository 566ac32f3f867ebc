"""``EmbeddingWriter``: what ``train.py predict`` computes, written to disk.

Lightning's :class:`~lightning.pytorch.callbacks.BasePredictionWriter` with ``write_interval="epoch"``:
after the predict loop, every process writes the dicts its ``predict_step`` returned (``embedding``
and the batch's labels: ``pid``/``camid``/``is_query``/``index`` for re-ID, ``label``/``index``
otherwise), concatenated key by key, as ``<log_dir>/predictions/rank_<r>.pt``. Load it with
``torch.load(path)``; rows are in loader order (sort by ``index`` to merge processes).
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

__all__ = ["EmbeddingWriter"]


def _flatten(predictions: Any) -> list[Mapping[str, Any]]:
    """The batch dicts of one or several predict loaders, in order."""
    if isinstance(predictions, Mapping):
        return [predictions]
    out: list[Mapping[str, Any]] = []
    for item in predictions or []:
        out += _flatten(item)
    return out


class EmbeddingWriter(BasePredictionWriter):
    """Write the predict loop's outputs to ``<log_dir>/<folder>/rank_<r>.pt``.

    Args:
        folder: sub-folder of the trainer's log directory.
    """

    def __init__(self, folder: str = "predictions") -> None:
        super().__init__(write_interval="epoch")
        if not folder or os.path.isabs(folder):
            raise ValueError(f"folder must be a relative folder name, got {folder!r}")
        self.folder = folder
        self.last_path: Path | None = None

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Sequence[Any], batch_indices: Any
    ) -> None:
        log_dir = trainer.log_dir or trainer.default_root_dir  # a broadcast: every rank asks
        batches = _flatten(predictions)
        keys = [k for k in (batches[0] if batches else {}) if all(k in b for b in batches)]
        table = {k: torch.cat([torch.as_tensor(b[k]).detach().cpu() for b in batches]) for k in keys}
        path = Path(log_dir) / self.folder / f"rank_{trainer.global_rank}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(table, path)
        self.last_path = path
        rank_zero_info(f"predictions ({', '.join(f'{k} {tuple(v.shape)}' for k, v in table.items())}) written to {path}")
