"""``FiniteModelCheckpoint``: Lightning's ``ModelCheckpoint`` that never keeps a NaN score as the best.

Lightning's ``ModelCheckpoint`` saves a checkpoint whose monitored score is NaN as the worst value
while its top-k is not full, so the first validation of a run (or a part of the evaluation set with
nothing to rank) can leave ``best-epoch000-mAPnan.ckpt`` as the run's best and ``--ckpt_path best``
then tests it. This subclass keeps only finite scores; a non-finite one is passed over with a
warning, and the run goes on. The configs use it for their best-by-score checkpoint.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

__all__ = ["FiniteModelCheckpoint"]


class FiniteModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments) whose top-k holds finite monitored scores only."""

    def check_monitor_top_k(self, trainer: pl.Trainer, current: Tensor | None = None) -> bool:
        if current is not None and not math.isfinite(float(current)):
            rank_zero_warn(
                f"{self.monitor} is {float(current)} at epoch {trainer.current_epoch}: "
                "not kept as a best checkpoint"
            )
            return False
        return super().check_monitor_top_k(trainer, current)
