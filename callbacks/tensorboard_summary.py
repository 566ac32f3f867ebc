"""``TensorBoardSummary``: what a run writes to TensorBoard besides the curves.

* **hp_metric** -- the best value so far of the first ``ModelCheckpoint`` that monitors a metric
  (``Val/mAP``, ``Val/acc``, ``Val/recall@1``) -- is logged after every validation (at the step of the
  epoch's scalars). The first one also writes the HPARAMS summary, so give the logger
  ``default_hp_metric: false`` (every config does): Lightning then writes no ``hp_metric = -1``.
* **The HPARAMS tab** lists the model's and the data module's hyperparameters (a data module saves
  only the options that apply to its data set) in a reader's order (:func:`reading_order`): the
  names of ``leading`` first (the model's main choices: ``lr``, ``num_branches``, ``oap_weight``,
  ``width``, ``backbone``, ...), then the model's other options in its signature's order, then the
  data module's. TensorBoard (2.21) sorts the columns by name and ticks the first five, so each name
  is written with its rank, ``01 lr``, ``02 num_branches``, .... Its metrics are the headline
  metrics (``Val/mAP``, ``Val/rank1``, ...), their ``test/`` counterparts and ``hp_metric``: the
  table shows each one's last logged value (the test numbers are the best checkpoint's).
* **The run ``<log_dir>/best``** holds, under the headline tags, the headline values of the best
  checkpoint so far (by the monitored metric: for it, the running best). Every chart of a headline
  tag (TIME SERIES, CUSTOM SCALARS) then shows the curve and, in another colour, where the selected
  checkpoint stands; and the curve's first and last points stay on the chart when "Ignore outliers
  in chart scaling" is on (its default): TensorBoard then scales the y-axis to the values between
  its 5% and 95% quantiles of all the chart's points (TIME SERIES: the sorted values' entries
  ``ceil(0.05 (n - 1))`` to ``floor(0.95 (n - 1))``, so a single lowest or highest value is always
  left out), and the best-so-far line repeats the first value and the highest one.
* **The runs ``<log_dir>/<method>``** hold each explanation method's localization scores as
  ``Val_<loc_prefix>/<score>`` (copies of ``<loc_prefix>/<method>/<score>``): TensorBoard colours a
  series by its run, so one chart per score (TIME SERIES: the group ``Val_loc``, second after
  ``Val``; CUSTOM SCALARS) draws the methods in distinct colours.
* **A custom-scalars layout** (the CUSTOM SCALARS tab): one page for the task with a chart per
  headline metric (:class:`cama.protocols.HasHeadlineMetrics`, with its best-so-far line) and a
  chart per localization score in ``localization_scores`` with one line per method.

Registered by ``train.py`` for every command; a no-op without a ``TensorBoardLogger``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from callbacks.event_file import ImageEventFile
from callbacks.image_sink import logging_step
from callbacks.score_logging import BASELINE_GROUPS
from cama.protocols import HasHeadlineMetrics

__all__ = ["LEADING_HPARAMS", "TensorBoardSummary", "custom_scalars_layout", "hparams_metrics", "reading_order"]

#: the options a reader looks for first, in this order, where a run has them (re-ID, few-shot, retrieval)
LEADING_HPARAMS = (
    "lr", "num_branches", "oap_weight", "width", "backbone", "metric", "eval_way", "eval_shot", "loss", "miner",
    "embedding_size", "seed", "dataset",
)
BEST_RUN = "best"


def comparison_tag(loc_prefix: str, score: str) -> str:
    """The tag of a localization score in the methods' runs: ``Val_<loc_prefix>/<score>``."""
    return f"Val_{loc_prefix}/{score}"


def custom_scalars_layout(
    task: str, headline: Sequence[str], loc_prefix: str, localization_scores: Sequence[str]
) -> dict[str, dict[str, list[Any]]]:
    """The layout of :meth:`torch.utils.tensorboard.SummaryWriter.add_custom_scalars`: the page
    ``task`` with a chart per tag of ``headline`` (the run's curve and the ``best`` run's line) and a
    chart per localization score with each method's run (regular expressions). No chart of
    ``hp_metric``: the ``best`` line of the monitored metric is the same curve, and a chart of one
    series loses its lowest and highest point to TensorBoard's outlier trimming."""
    charts: dict[str, list[Any]] = {tag: ["Multiline", [f"^{re.escape(tag)}$"]] for tag in headline}
    for score in localization_scores:
        tag = comparison_tag(loc_prefix, score)
        charts[f"{tag} (one line per method)"] = ["Multiline", [f"^{re.escape(tag)}$"]]
    return {task: charts}


def reading_order(
    model: Mapping[str, Any], data: Mapping[str, Any], leading: Sequence[str] = LEADING_HPARAMS
) -> dict[str, Any]:
    """The hyperparameters ``model`` then ``data`` (nested mappings flattened to ``outer/inner``,
    private ``_`` names left out), the names of
    ``leading`` first, each name prefixed with its zero-padded rank (``01 lr``) so that a sort by
    name (TensorBoard's HPARAMS) keeps this order; values TensorBoard cannot show become text."""
    merged = {k: v for source in (model, data) for k, v in _flat(source).items() if not k.startswith("_")}
    names = [n for n in leading if n in merged] + [n for n in merged if n not in leading]
    width = max(2, len(str(len(names))))
    return {f"{i + 1:0{width}d} {name}": _displayable(merged[name]) for i, name in enumerate(names)}


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``outer/inner`` names (as Lightning's loggers flatten them)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def _displayable(value: Any) -> bool | int | float | str:
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def hparams_metrics(headline: Sequence[str]) -> list[str]:
    """The HPARAMS metrics: each headline tag (``Val/mAP``), its ``test/`` counterpart
    (``test/mAP``), then ``hp_metric``."""
    tests = [f"test/{tag.split('/', 1)[-1]}" for tag in headline]
    return [*headline, *tests, "hp_metric"]


class TensorBoardSummary(Callback):
    """hp_metric, the hyperparameters, the best-so-far and per-method runs, a custom-scalars layout
    (module docstring).

    Args:
        loc_prefix: the localization callbacks' prefix.
        localization_scores: the scores charted per method.
        leading: the hyperparameters shown first, in this order (:func:`reading_order`).
    """

    def __init__(
        self, loc_prefix: str = "loc", localization_scores: Sequence[str] = ("energy", "box_acc", "ad"),
        leading: Sequence[str] = LEADING_HPARAMS,
    ) -> None:
        self.loc_prefix = loc_prefix
        self.localization_scores = tuple(localization_scores)
        self.leading = tuple(leading)
        self.hparams_written = False
        self.best_score: float | None = None
        self.best_values: dict[str, float] = {}
        self._event_files: dict[str, ImageEventFile] = {}

    def state_dict(self) -> dict[str, Any]:
        """The best-so-far line and whether HPARAMS is written: a resumed run goes on from them."""
        return {"best_score": self.best_score, "best_values": dict(self.best_values),
                "hparams_written": self.hparams_written}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_values = dict(state_dict.get("best_values", {}))
        self.hparams_written = bool(state_dict.get("hparams_written", False))

    @staticmethod
    def _loggers(trainer: pl.Trainer) -> list[TensorBoardLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]

    @staticmethod
    def _headline(pl_module: pl.LightningModule) -> list[str]:
        return pl_module.headline_metrics() if isinstance(pl_module, HasHeadlineMetrics) else []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        layout = custom_scalars_layout(
            type(pl_module).__name__, self._headline(pl_module), self.loc_prefix, self.localization_scores
        )
        for logger in self._loggers(trainer):
            logger.experiment.add_custom_scalars(layout)

    @staticmethod
    def _monitor(trainer: pl.Trainer) -> ModelCheckpoint | None:
        for checkpoint in trainer.checkpoint_callbacks:
            if isinstance(checkpoint, ModelCheckpoint) and checkpoint.monitor:
                return checkpoint
        return None

    @classmethod
    def best_monitored(cls, trainer: pl.Trainer) -> float | None:
        """The best value so far of the first checkpoint callback with a ``monitor``, this epoch's
        included (the checkpoint callbacks run after this one); None before any finite value."""
        checkpoint = cls._monitor(trainer)
        if checkpoint is None:
            return None
        values = []
        if checkpoint.monitor in trainer.callback_metrics:
            values.append(float(trainer.callback_metrics[checkpoint.monitor]))
        if checkpoint.best_model_score is not None:
            values.append(float(checkpoint.best_model_score))
        values = [v for v in values if math.isfinite(v)]
        if not values:
            return None
        return max(values) if checkpoint.mode == "max" else min(values)

    def _update_best(self, trainer: pl.Trainer, headline: Sequence[str]) -> bool:
        """Keep the headline values of this epoch when its monitored value is the best so far."""
        checkpoint = self._monitor(trainer)
        if checkpoint is None or checkpoint.monitor not in trainer.callback_metrics:
            return False
        score = float(trainer.callback_metrics[checkpoint.monitor])
        if not math.isfinite(score):
            return False
        previous = self.best_score
        if previous is None or (score > previous if checkpoint.mode == "max" else score < previous):
            self.best_score = score
            self.best_values = {
                tag: float(trainer.callback_metrics[tag]) for tag in headline if tag in trainer.callback_metrics
            }
        return True

    def method_scores(self, metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        """``{method: {Val_<prefix>/<score>: value}}`` of the ``<prefix>/<method>/<score>`` in ``metrics``
        (the baselines left out)."""
        out: dict[str, dict[str, float]] = {}
        pattern = re.compile(rf"^{re.escape(self.loc_prefix)}/([^/]+)/([^/]+)$")
        for name, value in metrics.items():
            match = pattern.match(name)
            if match and match[2] in self.localization_scores and match[1] not in BASELINE_GROUPS:
                out.setdefault(match[1], {})[comparison_tag(self.loc_prefix, match[2])] = float(value)
        return out

    def _write_run(self, logger: TensorBoardLogger, run: str, values: dict[str, float], step: int) -> None:
        if not values:
            return
        folder = str(Path(logger.log_dir) / run)
        self._event_files.setdefault(folder, ImageEventFile(folder)).add_scalars(values, step)

    def write_hparams(self, logger: TensorBoardLogger, pl_module: pl.LightningModule, trainer: pl.Trainer) -> None:
        """The HPARAMS summaries (the experiment, the session start and end) into the logger's run."""
        data = trainer.datamodule.hparams if trainer.datamodule is not None else {}
        params = reading_order(pl_module.hparams, data, self.leading)
        metrics = {name: 0.0 for name in hparams_metrics(self._headline(pl_module))}  # the names only
        writer = logger.experiment.file_writer  # created with the SummaryWriter
        for summary in hparams_summaries(params, metrics):
            writer.add_summary(summary)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        best = self.best_monitored(trainer)
        step = logging_step(trainer)
        headline = self._headline(pl_module)
        tracked = self._update_best(trainer, headline)
        for logger in self._loggers(trainer):
            if best is not None:
                if not self.hparams_written:
                    self.write_hparams(logger, pl_module, trainer)
                logger.log_metrics({"hp_metric": best}, step=step)
            if tracked:
                self._write_run(logger, BEST_RUN, self.best_values, step)
            for method, values in self.method_scores(trainer.callback_metrics).items():
                self._write_run(logger, method, values, step)
        self.hparams_written = self.hparams_written or best is not None
