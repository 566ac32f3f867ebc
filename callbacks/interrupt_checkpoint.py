"""Save a checkpoint when a run stops early: SIGTERM (a pre-empted cluster job), Ctrl-C, or an error.

Lightning turns SIGTERM into ``SIGTERMException`` after the batch in flight and Ctrl-C into a
graceful shutdown; both, and any other exception, reach every callback's ``on_exception``. This
callback saves ``last-interrupted.ckpt`` there, next to the run's ``ModelCheckpoint`` files, and
remembers why (:attr:`InterruptCheckpoint.reason`) so that the command line can exit with a non-zero
status and say how to resume. The name contains ``last``, so ``--ckpt_path last`` (the newest of the
``last*`` files of the ``ModelCheckpoint`` folder) resumes from it. A ``fit`` that ends normally
deletes it.

Unlike Lightning's ``OnExceptionCheckpoint``, its presence does not make a ``fit`` without
``--ckpt_path`` resume on its own: a fresh run stays fresh unless the user asks to resume.
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cama.errors import find_input_error

__all__ = ["InterruptCheckpoint"]


class InterruptCheckpoint(Checkpoint):
    """Saves ``<dirpath>/<filename>.ckpt`` when ``fit`` stops on a signal or an error.

    Args:
        dirpath: the folder; ``None``: the folder of the trainer's ``ModelCheckpoint``, else
            ``<log_dir or default_root_dir>/checkpoints``.
        filename: the file name without extension; it must contain ``last`` for ``--ckpt_path last``
            to find it.
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | None = None, filename: str = "last-interrupted") -> None:
        super().__init__()
        if not filename:
            raise ValueError("filename must not be empty")
        self.dirpath = dirpath
        self.filename = filename
        #: why ``fit`` stopped: ``"SIGTERM"``, ``"Ctrl-C"``, ``"error"``, or None
        self.reason: str | None = None
        #: the checkpoint written on that stop, or None
        self.saved_path: str | None = None
        #: the epoch and global step at the stop
        self.position: tuple[int, int] | None = None

    def _folder(self, trainer: pl.Trainer) -> str:
        if self.dirpath is not None:
            return self.dirpath
        dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
        if dirpath:
            return str(dirpath)
        return os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != TrainerFn.FITTING or find_input_error(exception) is not None:
            return  # validate / test / predict, or bad input (train.py says what to fix): nothing to resume
        if isinstance(exception, SIGTERMException):
            self.reason = "SIGTERM"
        elif isinstance(exception, KeyboardInterrupt):
            self.reason = "Ctrl-C"
        else:
            self.reason = "error"
        path = os.path.join(self._folder(trainer), self.filename + self.FILE_EXTENSION)
        trainer.save_checkpoint(path)
        self.saved_path = path
        self.position = (trainer.current_epoch, trainer.global_step)
        rank_zero_info(f"{self.reason}: checkpoint saved to {path}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = os.path.join(self._folder(trainer), self.filename + self.FILE_EXTENSION)
        if os.path.exists(path):  # an earlier interruption, now resumed to the end
            trainer.strategy.remove_checkpoint(path)

    def state_dict(self) -> dict[str, Any]:
        return {}
