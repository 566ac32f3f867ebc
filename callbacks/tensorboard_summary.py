"""``TensorBoardSummary``: what a run writes to TensorBoard besides the curves.

* **hp_metric** -- the HPARAMS tab's metric -- is the best value so far of the first
  ``ModelCheckpoint`` that monitors a metric (``Val/mAP``, ``Val/acc``, ``Val/recall@1``), logged
  after every validation (at the step of the epoch's scalars). The first one also writes the
  hyperparameters summary (``TensorBoardLogger.log_hyperparams``) with that value, so give the logger
  ``default_hp_metric: false`` (every config does): Lightning then writes no ``hp_metric = -1``.
  The hyperparameters are the model's and the data module's (a data module saves only the options
  that apply to its data set, :meth:`datamodules.base.ImageDataModule.inapplicable_options`).
* **A custom-scalars layout** (the CUSTOM SCALARS tab): one page for the task with a chart per
  headline metric (:class:`cama.protocols.HasHeadlineMetrics`), ``hp_metric``, and one chart per
  localization score in ``localization_scores`` with every method's curve (``<loc_prefix>/<method>/<score>``).

Registered by ``train.py`` for every command; a no-op without a ``TensorBoardLogger``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks.image_sink import logging_step
from cama.protocols import HasHeadlineMetrics

__all__ = ["TensorBoardSummary", "custom_scalars_layout"]


def custom_scalars_layout(
    task: str, headline: Sequence[str], loc_prefix: str, localization_scores: Sequence[str]
) -> dict[str, dict[str, list[Any]]]:
    """The layout of :meth:`torch.utils.tensorboard.SummaryWriter.add_custom_scalars`: the page
    ``task`` with a chart per tag of ``headline``, ``hp_metric``, and a chart per localization score
    matching every method's ``<loc_prefix>/<method>/<score>`` (regular expressions)."""
    charts: dict[str, list[Any]] = {tag: ["Multiline", [f"^{re.escape(tag)}$"]] for tag in headline}
    charts["hp_metric"] = ["Multiline", ["^hp_metric$"]]
    for score in localization_scores:
        charts[f"{loc_prefix}/*/{score}"] = ["Multiline", [f"^{re.escape(loc_prefix)}/[^/]+/{re.escape(score)}$"]]
    return {task: charts}


class TensorBoardSummary(Callback):
    """hp_metric, the hyperparameters and a custom-scalars layout (module docstring).

    Args:
        loc_prefix: the localization callbacks' prefix.
        localization_scores: the scores charted per method in the custom-scalars layout.
    """

    def __init__(self, loc_prefix: str = "loc", localization_scores: Sequence[str] = ("energy", "box_acc", "ad")) -> None:
        self.loc_prefix = loc_prefix
        self.localization_scores = tuple(localization_scores)
        self.hparams_written = False

    @staticmethod
    def _loggers(trainer: pl.Trainer) -> list[TensorBoardLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        headline = pl_module.headline_metrics() if isinstance(pl_module, HasHeadlineMetrics) else []
        layout = custom_scalars_layout(type(pl_module).__name__, headline, self.loc_prefix, self.localization_scores)
        for logger in self._loggers(trainer):
            logger.experiment.add_custom_scalars(layout)

    @staticmethod
    def best_monitored(trainer: pl.Trainer) -> float | None:
        """The best value so far of the first checkpoint callback with a ``monitor``, this epoch's
        included (the checkpoint callbacks run after this one); None before any finite value."""
        for checkpoint in trainer.checkpoint_callbacks:
            if not isinstance(checkpoint, ModelCheckpoint) or not checkpoint.monitor:
                continue
            values = []
            if checkpoint.monitor in trainer.callback_metrics:
                values.append(float(trainer.callback_metrics[checkpoint.monitor]))
            if checkpoint.best_model_score is not None:
                values.append(float(checkpoint.best_model_score))
            values = [v for v in values if math.isfinite(v)]
            if not values:
                return None
            return max(values) if checkpoint.mode == "max" else min(values)
        return None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        best = self.best_monitored(trainer)
        if best is None:
            return
        for logger in self._loggers(trainer):
            if not self.hparams_written:
                params = {k: v for k, v in logger.hparams.items() if not str(k).startswith("_")}
                logger.log_hyperparams(params, metrics={"hp_metric": best})
            logger.log_metrics({"hp_metric": best}, step=logging_step(trainer))
        self.hparams_written = True
