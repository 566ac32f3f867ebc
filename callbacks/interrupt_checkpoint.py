"""Save a checkpoint when a run stops early: SIGTERM (a pre-empted cluster job), Ctrl-C, or an error.

Lightning turns SIGTERM into ``SIGTERMException`` after the batch in flight and Ctrl-C into a
graceful shutdown; both, and any other exception, reach every callback's ``on_exception``. This
callback saves ``last-interrupted.ckpt`` there, next to the run's ``ModelCheckpoint`` files, and
remembers why (:attr:`InterruptCheckpoint.reason`) so that the command line can exit with a non-zero
status and say how to resume. The name starts with ``last``, so ``--ckpt_path last`` resumes from
it. A ``fit`` that ends normally deletes it.

Nothing is saved that would cost the run what it had:

* only a fit that took a training step since it started or resumed saves: a fit that failed
  while restoring its checkpoint, or stopped before its first step, leaves the run's files as they
  were (its checkpoint would hold nothing new, or an untrained model newer than ``last.ckpt``);
* bad input and a diverged loss (:class:`cama.errors.InputError`) save nothing;
* a SIGTERM that arrives while ``fit`` validates is held until the validation has ended, so the
  epoch is scored and can become the best, and the fit stops at the end of that epoch. Where the
  validation would not end within ``validation_grace_s`` seconds of the signal (estimated from the
  pace of its batches so far), the signal is let through at once: the epoch then keeps no score, and
  :attr:`InterruptCheckpoint.unscored_epoch` says which.

Unlike Lightning's ``OnExceptionCheckpoint``, its presence does not make a ``fit`` without
``--ckpt_path`` resume on its own: a fresh run stays fresh unless the user asks to resume.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cama.errors import find_input_error
from cama.runs import checkpoint_folder

__all__ = ["InterruptCheckpoint", "HeldSignal"]


class HeldSignal:
    """Holds one signal: from :meth:`hold` on, its arrival is only recorded; :meth:`release` puts the
    previous handler back and, when the signal came meanwhile, raises it again for that handler."""

    def __init__(self, signum: int = int(signal.SIGTERM)) -> None:
        self.signum = signum
        #: ``time.monotonic()`` at the signal's arrival while held, else None
        self.arrived: float | None = None
        self._previous: Any = None
        self._holding = False

    def _record(self, signum: int, frame: Any) -> None:
        if self.arrived is None:
            self.arrived = time.monotonic()

    def hold(self) -> bool:
        """Start holding (only the main thread can set a handler); whether it holds."""
        if self._holding or threading.current_thread() is not threading.main_thread():
            return self._holding
        self._previous = signal.signal(self.signum, self._record)
        self._holding, self.arrived = True, None
        return True

    def release(self) -> bool:
        """Stop holding; whether the signal had arrived (it is then raised for the previous handler)."""
        if not self._holding:
            return False
        signal.signal(self.signum, self._previous)
        self._holding = False
        arrived = self.arrived is not None
        if arrived:
            signal.raise_signal(self.signum)
        return arrived


class InterruptCheckpoint(Checkpoint):
    """Saves ``<dirpath>/<filename>.ckpt`` when ``fit`` stops on a signal or an error (see the module
    docstring for when it does not).

    Args:
        dirpath: the folder; ``None``: the folder of the trainer's ``ModelCheckpoint``, else
            ``<log_dir or default_root_dir>/checkpoints``.
        filename: the file name without extension; it must start with ``last`` for ``--ckpt_path
            last`` to find it.
        validation_grace_s: how long after a SIGTERM a validation in progress may still run (see the
            module docstring); 0 stops at once. Keep it below the time a cluster leaves between its
            SIGTERM and its SIGKILL.
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(
        self, dirpath: str | None = None, filename: str = "last-interrupted", validation_grace_s: float = 60.0
    ) -> None:
        super().__init__()
        if not filename.startswith("last"):
            raise ValueError(f"filename must start with 'last' (for --ckpt_path last), got {filename!r}")
        if not validation_grace_s >= 0:
            raise ValueError(f"validation_grace_s must be >= 0 seconds, got {validation_grace_s!r}")
        self.dirpath = dirpath
        self.filename = filename
        self.validation_grace_s = float(validation_grace_s)
        #: why ``fit`` stopped: ``"SIGTERM"``, ``"Ctrl-C"``, ``"error"``, or None
        self.reason: str | None = None
        #: the checkpoint written on that stop, or None
        self.saved_path: str | None = None
        #: the epoch and global step at the stop
        self.position: tuple[int, int] | None = None
        #: the checkpoint the fit resumed from (None: a fresh fit)
        self.resumed_from: str | None = None
        #: the epoch whose validation the signal cut short (it has no score), else None
        self.unscored_epoch: int | None = None
        self._start_step: int | None = None
        self._held = HeldSignal(int(signal.SIGTERM))
        self._validation_started = 0.0

    def _path(self, trainer: pl.Trainer) -> str:
        folder = self.dirpath if self.dirpath is not None else checkpoint_folder(trainer)
        return os.path.join(folder, self.filename + self.FILE_EXTENSION)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the checkpoint (if any) was restored: the position this fit's progress is counted from
        self._start_step = trainer.global_step
        self.resumed_from = str(trainer.ckpt_path) if trainer.ckpt_path else None

    # ---------------------------------------------------------------- SIGTERM while validating in fit
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and self.validation_grace_s > 0
        ):
            self._validation_started = time.monotonic()
            self._held.hold()

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._held.arrived is None:
            return
        now = time.monotonic()
        total = sum(int(n) if n != float("inf") else batch_idx + 2 for n in trainer.num_val_batches)
        done = batch_idx + 1 + sum(int(n) for n in trainer.num_val_batches[:dataloader_idx])
        finish = now + (now - self._validation_started) / done * max(total - done, 0)
        if finish - self._held.arrived > self.validation_grace_s:
            self.unscored_epoch = trainer.current_epoch
            rank_zero_warn(
                f"SIGTERM during the validation of epoch {trainer.current_epoch}: it would end "
                f"{finish - self._held.arrived:.0f} s after the signal, over validation_grace_s="
                f"{self.validation_grace_s:g}; stopping now, this epoch keeps no score"
            )
            self._held.release()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._held.release():
            rank_zero_info(
                f"SIGTERM held during the validation of epoch {trainer.current_epoch}: "
                "stopping at the end of the epoch"
            )

    # ---------------------------------------------------------------- saving
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._held.release()
        if trainer.state.fn != TrainerFn.FITTING or find_input_error(exception) is not None:
            return  # validate / test / predict, or bad input (train.py says what to fix): nothing to resume
        if isinstance(exception, SIGTERMException):
            self.reason = "SIGTERM"
        elif isinstance(exception, KeyboardInterrupt):
            self.reason = "Ctrl-C"
        else:
            self.reason = "error"
        self.position = (trainer.current_epoch, trainer.global_step)
        if self._start_step is None or trainer.global_step <= self._start_step:
            rank_zero_info(
                f"{self.reason} before this fit took a step: no checkpoint saved, the run's files are "
                "as they were"
            )
            return
        path = self._path(trainer)
        try:
            trainer.save_checkpoint(path)
        except Exception as err:  # noqa: BLE001 - e.g. non-finite weights: say why, keep the first error
            rank_zero_warn(f"{self.reason}: no checkpoint saved to {path}: {err}")
            return
        self.saved_path = path
        rank_zero_info(f"{self.reason}: checkpoint saved to {path}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self._path(trainer)
        if os.path.exists(path):  # an earlier interruption, now resumed to the end
            trainer.strategy.remove_checkpoint(path)

    def state_dict(self) -> dict[str, Any]:
        return {}
