"""The end of an evaluation epoch, shared by the models: compute the epoch's metric, or say why not.

An evaluation loop can see part of its evaluation set:

* Lightning's **sanity check** runs ``num_sanity_val_steps`` batches before training; ranking a
  re-ID query set against a few batches of gallery says nothing, so the metric is skipped there
  (one info line per run);
* **``limit_val_batches`` / ``limit_test_batches``** run a share of the loader; the metric is
  computed over the samples seen (the evaluation loaders spread queries and gallery, or classes,
  over every prefix: :mod:`datamodules.eval_order`) and one line per run says what was left out.
  When that share holds nothing to rank, the metric's values are logged as NaN (so a checkpoint
  callback that monitors them goes on, treating NaN as the worst value) and a warning says why.

A ``DistributedSampler`` share needs nothing: the metrics gather every process's samples.

**Tags.** A model logs its results as ``<stage>/<name>``, except its validation *headline* metrics
(re-ID mAP, rank-1, mINP; few-shot accuracy; retrieval Recall@1, MAP@R), which go to the group
:data:`HEADLINE_GROUP` (``Val/mAP``, ...): TensorBoard's default tab (Time Series) sorts its groups
by name, upper case before lower case, and opens only the first two, so ``Val`` is the first group
a researcher sees, before Lightning's ``epoch``, the pictures and every lower-case group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from lightning_utilities.core.rank_zero import WarningCache
from torch import Tensor
from torchmetrics import Metric

__all__ = ["EpochEvaluation", "HEADLINE_GROUP"]

#: the TensorBoard group of the validation headline metrics (module docstring)
HEADLINE_GROUP = "Val"


def _first(loaders: object) -> object:
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    return loaders


class EpochEvaluation:
    """Computes and resets one evaluation metric at the end of an epoch (module docstring).

    Args:
        result_names: the keys the metric's ``compute()`` returns, logged as NaN when a partial
            epoch holds nothing the metric can score.
        headline: the result names logged as ``Val/<name>`` in validation (:meth:`tag`).
    """

    def __init__(self, result_names: Sequence[str], headline: Sequence[str] = ()) -> None:
        self.result_names = tuple(result_names)
        self.headline = tuple(headline)
        self.notes = WarningCache()

    def tag(self, stage: str, name: str) -> str:
        """The logged name of the result ``name`` of ``stage``: ``Val/<name>`` for a validation
        headline metric, else ``<stage>/<name>`` (``val/rank5``, ``test/mAP``)."""
        if stage == "val" and name in self.headline:
            return f"{HEADLINE_GROUP}/{name}"
        return f"{stage}/{name}"

    def headline_tags(self) -> list[str]:
        """The logged names of the validation headline metrics, in their order."""
        return [self.tag("val", name) for name in self.headline]

    @staticmethod
    def coverage(trainer: pl.Trainer, stage: str) -> tuple[int, int] | None:
        """``(batches run, batches in the loader)`` of the first loader of ``stage`` when the loop
        ran fewer batches than its loader has (per process), else None."""
        if stage == "test":
            run, loader = trainer.num_test_batches, _first(trainer.test_dataloaders)
        else:
            run, loader = trainer.num_val_batches, _first(trainer.val_dataloaders)
        run = run[0] if isinstance(run, (list, tuple)) and run else run
        try:
            total = len(loader)  # type: ignore[arg-type]
        except TypeError:
            return None
        if not isinstance(run, (int, float)) or math.isinf(run) or run >= total:
            return None
        return int(run), int(total)

    def finish(self, module: pl.LightningModule, metric: Metric, stage: str) -> dict[str, Tensor] | None:
        """The metric's results for this epoch (``compute()`` then ``reset()``); None in the sanity check."""
        trainer = module.trainer
        if trainer.sanity_checking:
            metric.reset()
            self.notes.info(
                f"{stage}: sanity check: {type(metric).__name__} skipped (the sanity check sees "
                f"{trainer.num_sanity_val_steps} batches, a part of the evaluation set; the first "
                "validation epoch ranks the whole set)"
            )
            return None
        partial = self.coverage(trainer, stage)
        try:
            results = metric.compute()
        except ValueError as err:
            if partial is None:
                raise
            self.notes.warn(
                f"{stage}: {partial[0]} of {partial[1]} batches per process "
                f"(limit_{stage}_batches) hold nothing {type(metric).__name__} can score, so "
                f"{', '.join(self.result_names)} are logged as NaN: {err}"
            )
            nan = torch.tensor(float("nan"), device=module.device)
            results = {name: nan for name in self.result_names}
        finally:
            metric.reset()
        if partial is not None:
            self.notes.info(
                f"{stage}: {partial[0]} of {partial[1]} batches per process were evaluated "
                f"(limit_{stage}_batches): {type(metric).__name__} describes that share of the "
                f"evaluation set; {partial[1] - partial[0]} batches per process were left out"
            )
        return results
