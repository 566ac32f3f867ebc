"""Checkpoint files that are whole and finite, or not written at all.

:class:`SafeCheckpointIO` is the trainer's checkpoint writer under ``train.py``. Lightning's own
writer moves a finished temporary file into place; where the temporary folder is on another
file system that move is a copy, and a process killed during it leaves a truncated or empty
``last.ckpt``. This writer (:func:`cama.checkpoint_files.whole_file`) writes ``.<name>.partial``
in the checkpoint's own folder, flushes it to disk and renames it over the old file in one step
(``os.replace``): a checkpoint is either the old file or the new one, never a part. Before writing it refuses weights holding a NaN or an
infinity (:class:`NonFiniteWeightsError`), so a diverged model never replaces a good checkpoint.
Remote paths (``s3://`` ...) go to Lightning's writer unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cama.checkpoint_files import non_finite_tensors, whole_file
from cama.errors import InputError

__all__ = ["NonFiniteWeightsError", "SafeCheckpointIO"]


class NonFiniteWeightsError(InputError, FloatingPointError):
    """A checkpoint was not written because the model's weights are not finite."""


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic, finite checkpoint files (see the module docstring)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        bad = non_finite_tensors(checkpoint.get("state_dict", {}))
        if bad:
            raise NonFiniteWeightsError(
                f"not saving {path}: {len(bad)} tensors of the model hold NaN or infinite values "
                f"(e.g. {bad[:3]}); the training diverged. Lower the learning rate and resume from the "
                "run's last good checkpoint (--ckpt_path last passes over non-finite ones)"
            )
        if "://" in str(path) or storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with whole_file(path) as f:
            torch.save(checkpoint, f)
