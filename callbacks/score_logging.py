"""How the explanation callbacks log their scores: curves as scalars, constants once as text.

A baseline (``<prefix>/center_baseline/*``, ``<prefix>/uniform_baseline/energy``) scores the fixed
samples' ground truth, not the model: the same number every epoch, a flat TensorBoard card. A
threshold (``<prefix>/<method>/max_box_acc_tau``) is the argument of a score, not a score. Both go to
``trainer.callback_metrics`` only (so ``<command>_metrics.json`` and code that reads them keep them)
and to TensorBoard as text (the TEXT tab): the baselines once, ``<prefix>/baselines``, the
thresholds every epoch, ``<prefix>/thresholds``. Every other score is a scalar curve.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from callbacks.image_sink import logging_step

__all__ = ["ScoreLogger", "is_baseline", "is_threshold"]

#: the groups of :class:`cama.metrics.map_scores.MapScores` that score the ground truth alone
BASELINE_GROUPS = ("center_baseline", "uniform_baseline")
#: the scores that are thresholds
THRESHOLD_SCORES = ("max_box_acc_tau",)


def is_baseline(name: str) -> bool:
    """``name`` (``<prefix>/<group>/<score>``) is a baseline's score."""
    return any(part in BASELINE_GROUPS for part in name.split("/")[:-1])


def is_threshold(name: str) -> bool:
    """``name`` is a threshold (``.../max_box_acc_tau``)."""
    return name.rsplit("/", 1)[-1] in THRESHOLD_SCORES


def markdown_table(values: dict[str, float]) -> str:
    """A two-column Markdown table of ``values`` (TensorBoard's text plugin renders it)."""
    rows = [f"| `{name}` | {value:.4f} |" for name, value in values.items()]
    return "\n".join(["| name | value |", "| --- | --- |", *rows])


class ScoreLogger:
    """Logs one callback's scores of an epoch (module docstring); one per callback.

    Args:
        prefix: the callback's prefix; the text tags are ``<prefix>/baselines`` and
            ``<prefix>/thresholds``.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.baselines_written = False

    def log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, results: dict[str, Tensor]) -> None:
        """``pl_module.log`` every score (the constants with ``logger=False``), then the text."""
        for name, value in results.items():
            curve = not (is_baseline(name) or is_threshold(name))
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False, logger=curve)
        baselines = {k: float(v) for k, v in results.items() if is_baseline(k)}
        thresholds = {k: float(v) for k, v in results.items() if is_threshold(k)}
        texts = {f"{self.prefix}/thresholds": thresholds}
        if baselines and not self.baselines_written:
            texts[f"{self.prefix}/baselines"] = baselines
            self.baselines_written = True
        if not trainer.is_global_zero:
            return
        step = logging_step(trainer)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for tag, values in texts.items():
                    if values:
                        logger.experiment.add_text(tag, markdown_table(values), global_step=step)
