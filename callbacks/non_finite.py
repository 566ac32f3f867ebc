"""Stop a diverging fit at the step it diverges, before a NaN reaches the weights or a checkpoint.

:class:`NonFiniteGuard` checks the training loss of every step, and the batch-norm statistics its
forward updated (they overflow first when activations explode under a finite loss), before the
optimizer applies the step: a few small tensor tests and one device synchronisation per step. A
bad step is not applied: its gradients are dropped, so the optimizer leaves every parameter and
its state as they were (as a mixed-precision gradient scaler skips an overflowing step), and its
batch-norm statistics are restored. With ``max_skipped_steps=0`` (the default) the fit then stops
with :class:`TrainingDivergedError` naming the epoch, the step, the loss terms the model returned,
the non-finite statistics and the run's newest checkpoint, whose weights are finite
(:class:`~callbacks.checkpoint_io.SafeCheckpointIO` refuses others). With ``max_skipped_steps=N``
up to N such steps in the whole fit are skipped with a warning; the next one stops the fit.

A NaN monitored score is kept from the best checkpoints by
:class:`~callbacks.model_checkpoint.FiniteModelCheckpoint`.

The models' ``training_step`` return their loss terms with the total (``{"loss": ..., "id_loss":
...}``): Lightning hands that mapping to ``on_train_batch_end`` as ``outputs``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from cama.checkpoint_files import describe_checkpoint, non_finite_flags, read_checkpoint
from cama.errors import InputError
from cama.runs import checkpoint_folder, newest_resumable

__all__ = ["NonFiniteGuard", "TrainingDivergedError"]


class TrainingDivergedError(InputError, FloatingPointError):
    """The training loss or the batch-norm statistics became NaN or infinite (too high a learning
    rate, bad data, an overflow)."""


def _terms(outputs: Any) -> str:
    """``loss=nan, id_loss=3.1e+22`` from a training step's outputs."""
    if isinstance(outputs, Tensor):
        outputs = {"loss": outputs}
    if not isinstance(outputs, dict):
        return "loss=non-finite"
    shown = []
    for name, value in outputs.items():
        if isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point():
            shown.append(f"{name}={float(value):.4g}")
    return ", ".join(shown) or "loss=non-finite"


def last_good_checkpoint(trainer: pl.Trainer) -> str:
    """The newest checkpoint of this fit's folders (or the one it resumed) that can resume it, as
    ``path (epoch E, step S)``, or a sentence saying there is none."""
    folders = {Path(checkpoint_folder(trainer, cb)) for cb in trainer.checkpoint_callbacks}
    newest, _ = newest_resumable(folders)
    if newest is None and trainer.ckpt_path and os.path.isfile(trainer.ckpt_path):
        newest = Path(trainer.ckpt_path)
    if newest is None:
        return "none was saved yet"
    return f"{newest} ({describe_checkpoint(read_checkpoint(str(newest), '--ckpt_path'))})"


class NonFiniteGuard(Callback):
    """Stops ``fit`` at the first training step with a non-finite loss or batch-norm statistic.

    Args:
        max_skipped_steps: how many steps with a non-finite loss a fit may skip (not apply) before
            it stops; 0 stops at the first.
    """

    def __init__(self, max_skipped_steps: int = 0) -> None:
        super().__init__()
        if (
            isinstance(max_skipped_steps, bool)
            or not isinstance(max_skipped_steps, int)
            or max_skipped_steps < 0
        ):
            raise ValueError(f"max_skipped_steps must be an integer >= 0, got {max_skipped_steps!r}")
        self.max_skipped_steps = max_skipped_steps
        #: steps skipped in this fit (saved in checkpoints: a resumed fit keeps counting)
        self.skipped = 0
        self._bad_loss: Tensor | None = None
        self._bad_step = False
        self._bad_buffers: list[str] = []
        self._buffers: dict[str, Tensor] = {}

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._bad_step = False
        if self.max_skipped_steps:  # a skipped step must not keep the batch-norm statistics of its forward
            self._buffers = {k: b.detach().clone() for k, b in pl_module.named_buffers()}

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()).all()  # stays on the device: one synchronisation per step, below
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        # the forward's batch-norm statistics overflow before the loss does (huge activations, finite loss)
        buffers = {name: b for name, b in pl_module.named_buffers() if b.is_floating_point()}
        flags = non_finite_flags(list(buffers.values()))
        if self._bad_loss is not None:
            flags = torch.cat([flags, self._bad_loss.reshape(1).to(flags.device)])
        read = flags.tolist()  # the one synchronisation of the step
        self._bad_buffers = [name for name, bad in zip(buffers, read) if bad]
        bad = any(read)
        self._bad_loss = None  # (accumulated gradients: any bad loss since the last step spoils this one)
        # every process skips together: under DDP the gradients are averaged, so one bad loss spoils all
        self._bad_step = bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        if self._bad_step:  # an optimizer leaves parameters without gradient untouched, state included
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._bad_step:
            return
        self.skipped += 1
        with torch.no_grad():
            buffers = dict(pl_module.named_buffers())
            for name, saved in self._buffers.items():
                buffers[name].copy_(saved)
        statistics = (
            f"; non-finite batch-norm statistics: {self._bad_buffers[:3]}"
            f"{' ...' if len(self._bad_buffers) > 3 else ''}"
            if self._bad_buffers
            else ""
        )
        where = (
            f"at epoch {trainer.current_epoch}, batch {batch_idx} (training step "
            f"{max(trainer.global_step - 1, 0)}): {_terms(outputs)}{statistics}"
        )
        if self.skipped <= self.max_skipped_steps:
            rank_zero_warn(
                f"NonFiniteGuard: skipped the step {where} ({self.skipped} of "
                f"max_skipped_steps={self.max_skipped_steps} skipped)"
            )
            return
        allowed = (
            f"{self.max_skipped_steps} skipped steps allowed and used; " if self.max_skipped_steps else ""
        )
        raise TrainingDivergedError(
            f"the training diverged {where}. The step was not applied: the weights in memory are those "
            f"of the step before. {allowed}Lower the learning rate (--model.init_args.lr), or skip a few "
            "such steps with --non_finite.max_skipped_steps N. The newest checkpoint of this run: "
            f"{last_good_checkpoint(trainer)}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
