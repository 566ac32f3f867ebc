"""Where the pictures of an evaluation epoch go: TensorBoard, or PNG files.

:class:`ImageSink` PNG-encodes a ``uint8`` picture once (zlib level 1: about 4x faster than PIL's
default on these pictures, the same pixels) and sends it to every ``TensorBoardLogger`` of the
trainer as the image summary ``SummaryWriter.add_image`` would write, but into the run folder
``<logger.log_dir>/<folder>`` (e.g. ``runs/cama_synthetic/version_0/explanations``: in TensorBoard
the run ``.../version_0/explanations``) through :class:`~callbacks.event_file.ImageEventFile`, whose
checksums are computed in C instead of in the logger's writer thread in pure Python. A Weights &
Biases or MLflow logger gets the same pictures through its own sink (:mod:`callbacks.logger_sinks`).
When no logger takes pictures (CSV logger, no logger), or ``save_png`` is set, it writes
``<log_dir>/<folder>/epoch_XXX/<name>.png``: the same bytes either way. :meth:`ImageSink.write_text`
logs Markdown to the TensorBoard loggers' own run (PNG folders get none).

The images' step is :func:`logging_step`, the step the epoch's scalars are logged at, and not the
epoch: TensorBoard's image slider then moves over the same axis as the scalar charts, so the
picture behind a point of a curve is at that point's step. The epoch is written on each picture
instead (its title line, :func:`cama.viz.picture_title`) and in the PNG folder name.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torchvision.io import encode_png

from callbacks.event_file import ImageEventFile
from callbacks.logger_sinks import PictureSink, picture_file, sinks_for

__all__ = ["ImageSink", "logging_step"]


def logging_step(trainer: pl.Trainer) -> int:
    """The step Lightning logs a validation epoch's scalars at.

    Lightning logs epoch-end scalars at the number of training batches that stepped the optimizer
    *before* the current one; during ``fit`` the validation that ends a training epoch runs after
    that batch's optimizer step, so it is ``global_step - 1`` there, and ``global_step`` otherwise.
    Exact with one optimizer step per stepping batch (automatic optimization); with
    ``accumulate_grad_batches > 1`` and a mid-epoch validation on a batch that does not step, the
    images land one step before the scalars.
    """
    step = trainer.global_step
    if trainer.state.fn == TrainerFn.FITTING and step > 0:
        return step - 1
    return step


class ImageSink:
    """Where the pictures of one evaluation epoch go.

    Build it with :meth:`from_trainer` on **every** process (``trainer.log_dir`` is a broadcast);
    call :meth:`write` on rank zero only.
    """

    def __init__(
        self, loggers: list[TensorBoardLogger], directory: Path | None, folder: str = "explanations",
        others: list[PictureSink] | None = None,
    ) -> None:
        self.loggers = loggers
        self.others = list(others or [])  # the other image-taking loggers' sinks (callbacks.logger_sinks)
        self.directory = directory
        self.folder = folder  # the pictures' TensorBoard run: <logger.log_dir>/<folder>
        self._event_files: dict[str, ImageEventFile] = {}

    @classmethod
    def from_trainer(
        cls, trainer: pl.Trainer, save_png: bool = False, folder: str = "explanations"
    ) -> ImageSink:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        others = sinks_for([lg for lg in trainer.loggers if not isinstance(lg, TensorBoardLogger)], folder)
        directory = None
        if save_png or not (loggers or others):
            log_dir = trainer.log_dir or trainer.default_root_dir  # collective: every rank
            directory = Path(log_dir) / folder
        return cls(loggers, directory, folder, others)

    def write(self, name: str, image: Tensor, step: int, epoch: int, prefix: str = "explanations") -> list[str]:
        """Log ``image`` (``uint8`` ``[3, H, W]``) as ``<prefix>/<name>``; returns the PNG paths written."""
        image = image.detach().cpu().contiguous()
        png = encode_png(image, compression_level=1).numpy().tobytes()  # zlib 1: fast, the same pixels
        channels, height, width = image.shape
        for logger in self.loggers:
            run = Path(logger.log_dir) / self.folder
            events = self._event_files.setdefault(str(run), ImageEventFile(run))
            events.add_png(f"{prefix}/{name}", png, height, width, channels, step)
        file = picture_file(name, epoch)
        for sink in self.others:
            sink.add(f"{prefix}/{name}", file, image, png, step)
        written: list[str] = []
        if self.directory is not None:
            path = self.directory / file
            os.makedirs(path.parent, exist_ok=True)
            path.write_bytes(png)
            written.append(str(path))
        return written

    def write_text(self, name: str, text: str, step: int, prefix: str = "explanations") -> bool:
        """Log Markdown ``text`` as ``<prefix>/<name>`` to every TensorBoard logger; whether there was one."""
        for logger in self.loggers:
            logger.experiment.add_text(f"{prefix}/{name}", text, global_step=step)
        return bool(self.loggers)
