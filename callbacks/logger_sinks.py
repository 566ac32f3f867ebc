"""The pictures in the other image-taking Lightning loggers: Weights & Biases and MLflow.

:class:`callbacks.image_sink.ImageSink` writes TensorBoard's pictures itself; for every other logger
of the trainer it takes a small sink chosen by the logger's type from :func:`sink_kinds`, an
explicit mapping (a logger of a type not in it gets none):

* :class:`WandbImages` -- ``WandbLogger.log_image``: the picture under the key ``<prefix>/<name>``,
  with Lightning's ``trainer/global_step`` = the step of the epoch's scalars
  (:func:`callbacks.image_sink.logging_step`);
* :class:`MLflowImages` -- the logger's ``MlflowClient`` (``MLFlowLogger.experiment``):
  ``log_artifact`` of the very PNG bytes the other sinks write, as the run's artifact
  ``<folder>/epoch_XXX/<prefix>/<name>.png`` (MLflow's artifacts have no step: the epoch is in the path).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Protocol

from lightning.pytorch.loggers import Logger, MLFlowLogger, WandbLogger
from torch import Tensor

__all__ = ["MLflowImages", "PictureSink", "WandbImages", "sink_kinds", "sinks_for"]


class PictureSink(Protocol):
    """Where one logger's pictures go."""

    def add(self, tag: str, image: Tensor, png: bytes, step: int, epoch: int) -> None:
        """Log ``image`` (``uint8`` ``[3, H, W]``; ``png``: its PNG bytes) under ``tag``."""


class WandbImages:
    """A ``WandbLogger``'s pictures (``log_image``)."""

    def __init__(self, logger: WandbLogger, folder: str = "explanations") -> None:
        self.logger = logger

    def add(self, tag: str, image: Tensor, png: bytes, step: int, epoch: int) -> None:
        self.logger.log_image(key=tag, images=[image.permute(1, 2, 0).numpy()], step=step)


class MLflowImages:
    """An ``MLFlowLogger``'s pictures: PNG artifacts of its run (``MlflowClient.log_artifact``)."""

    def __init__(self, logger: MLFlowLogger, folder: str = "explanations") -> None:
        self.logger = logger
        self.folder = folder

    def artifact_path(self, tag: str, epoch: int) -> tuple[str, str]:
        """The folder and file name of ``tag``'s picture of ``epoch`` in the run's artifacts."""
        parts = [re.sub(r"[^A-Za-z0-9_.+\-]", "_", p) for p in tag.split("/") if p]
        return "/".join([self.folder, f"epoch_{epoch:03d}", *parts[:-1]]), f"{parts[-1]}.png"

    def add(self, tag: str, image: Tensor, png: bytes, step: int, epoch: int) -> None:
        folder, name = self.artifact_path(tag, epoch)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(png)
            self.logger.experiment.log_artifact(self.logger.run_id, str(path), artifact_path=folder)


def sink_kinds() -> dict[type[Logger], type]:
    """The picture sink of each logger type besides TensorBoard's."""
    return {WandbLogger: WandbImages, MLFlowLogger: MLflowImages}


def sinks_for(loggers: list[Logger], folder: str = "explanations") -> list[PictureSink]:
    """A sink for each logger whose type (or a base of it) is in :func:`sink_kinds`."""
    kinds = sink_kinds()
    sinks: list[PictureSink] = []
    for logger in loggers:
        kind = next((sink for base, sink in kinds.items() if isinstance(logger, base)), None)
        if kind is not None:
            sinks.append(kind(logger, folder))
    return sinks
