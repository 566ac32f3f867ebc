"""The pictures in the other image-taking Lightning loggers: Weights & Biases and MLflow.

:class:`callbacks.image_sink.ImageSink` writes TensorBoard's pictures itself; for every other logger
of the trainer it takes a small sink chosen by the logger's type from :func:`sink_kinds`, an
explicit mapping (a logger of a type not in it gets none):

* :class:`WandbImages` -- ``WandbLogger.log_image``: the picture under the key ``<prefix>/<name>``,
  with Lightning's ``trainer/global_step`` = the step of the epoch's scalars
  (:func:`callbacks.image_sink.logging_step`);
* :class:`MLflowImages` -- the logger's ``MlflowClient`` (``MLFlowLogger.experiment``):
  ``log_artifact`` of the very PNG bytes the other sinks write, as the run's artifact
  ``<folder>/epoch_XXX/<name>.png``, the path the PNG files have under the log folder
  (:func:`picture_file`; MLflow's artifacts have no step: the epoch is in the path).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import Any, Protocol

from lightning.pytorch.loggers import Logger, MLFlowLogger, WandbLogger
from torch import Tensor

__all__ = ["MLflowImages", "PictureSink", "WandbImages", "picture_file", "sink_kinds", "sinks_for"]


def picture_file(name: str, epoch: int) -> str:
    """The relative PNG path of picture ``name`` of ``epoch`` (characters other than letters, digits
    and ``_.+-`` become ``_``): the same under the PNG folder and among MLflow's artifacts.

    >>> picture_file("ranking/query 0", 3)
    'epoch_003/ranking/query_0.png'
    """
    parts = [re.sub(r"[^A-Za-z0-9_.+\-]", "_", p) for p in name.split("/") if p]
    return "/".join([f"epoch_{epoch:03d}", *parts[:-1], f"{parts[-1]}.png"])


class PictureSink(Protocol):
    """Where one logger's pictures go."""

    def add(self, tag: str, file: str, image: Tensor, png: bytes, step: int) -> None:
        """Log ``image`` (``uint8`` ``[3, H, W]``; ``png``: its PNG bytes) under ``tag`` (by step) or as
        ``file`` (:func:`picture_file`)."""


class WandbImages:
    """A ``WandbLogger``'s pictures (``log_image``)."""

    def __init__(self, logger: WandbLogger) -> None:
        self.logger = logger

    def add(self, tag: str, file: str, image: Tensor, png: bytes, step: int) -> None:
        self.logger.log_image(key=tag, images=[image.permute(1, 2, 0).numpy()], step=step)


class MLflowImages:
    """An ``MLFlowLogger``'s pictures: PNG artifacts of its run (``MlflowClient.log_artifact``)."""

    def __init__(self, logger: MLFlowLogger, folder: str = "explanations") -> None:
        self.logger = logger
        self.folder = folder

    def add(self, tag: str, file: str, image: Tensor, png: bytes, step: int) -> None:
        folder, _, name = f"{self.folder}/{file}".rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(png)
            self.logger.experiment.log_artifact(self.logger.run_id, str(path), artifact_path=folder)


def sink_kinds() -> dict[type[Logger], Callable[[Any, str], PictureSink]]:
    """The picture sink of each logger type besides TensorBoard's, built from the logger and the
    pictures' folder."""
    return {WandbLogger: lambda logger, folder: WandbImages(logger), MLFlowLogger: MLflowImages}


def sinks_for(loggers: list[Logger], folder: str = "explanations") -> list[PictureSink]:
    """A sink for each logger whose type (or a base of it) is in :func:`sink_kinds`."""
    kinds = sink_kinds()
    sinks: list[PictureSink] = []
    for logger in loggers:
        kind = next((sink for base, sink in kinds.items() if isinstance(logger, base)), None)
        if kind is not None:
            sinks.append(kind(logger, folder))
    return sinks
