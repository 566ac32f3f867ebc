"""Loading a checkpoint's matching weights into a fresh model (fine-tuning with ``init_from``); the
file is read by :func:`cama.checkpoint_files.read_checkpoint`."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from cama.checkpoint_files import CheckpointFileError, checkpoint_state_dict, read_checkpoint

__all__ = ["InitFromMismatchError", "load_matching_weights", "init_from_checkpoint"]


class InitFromMismatchError(CheckpointFileError):
    """``init_from`` matches too little of the model (a checkpoint of another model, a wrong file)."""


def load_matching_weights(model: nn.Module, path: str, min_match: float = 0.5) -> dict[str, list[str]]:
    """Copy every tensor of the checkpoint at ``path`` whose name and shape match into ``model``.

    ``path`` may hold a Lightning checkpoint (its ``state_dict``) or a plain state dict. Tensors of
    the model with a different shape in the checkpoint (a classifier for another number of
    identities) and tensors the checkpoint lacks keep the model's fresh initialisation; both lists
    are logged and returned as ``{"loaded", "skipped_shape", "missing", "unexpected"}``.

    The match is measured by the number of values: the loaded tensors' elements over all the
    elements of the model's state (parameters and buffers). Below ``min_match`` (a checkpoint of
    another model, a wrong file) nothing is loaded and :class:`InitFromMismatchError` names the file,
    the counts and a few mismatches; ``min_match=0`` loads whatever matches.
    """
    state = checkpoint_state_dict(read_checkpoint(path, "init_from"), path, "init_from")
    own = model.state_dict()
    loadable, skipped = {}, []
    for name, tensor in state.items():
        if name not in own:
            continue
        if own[name].shape != tensor.shape:
            skipped.append(f"{name} {tuple(tensor.shape)} -> {tuple(own[name].shape)}")
        else:
            loadable[name] = tensor
    report = {
        "loaded": sorted(loadable),
        "skipped_shape": skipped,
        "missing": sorted(set(own) - set(state)),
        "unexpected": sorted(set(state) - set(own)),
    }
    total = sum(t.numel() for t in own.values())
    fraction = sum(own[n].numel() for n in loadable) / max(total, 1)
    if fraction < min_match:
        raise InitFromMismatchError(
            f"init_from {path} matches little of the model: {len(loadable)} of its {len(own)} tensors "
            f"({fraction:.1%} of its {total:,} values, below init_from_min_match={min_match}) match a "
            f"tensor of the file by name and shape; the file holds {len(state)} tensors. "
            f"Not in the file, e.g. {report['missing'][:3]}; shape differs, e.g. {skipped[:3]}; "
            f"only in the file, e.g. {report['unexpected'][:3]}. Is it a checkpoint of another model? "
            "To load the matching tensors anyway set init_from_min_match: 0 "
            "(--model.init_args.init_from_min_match 0)."
        )
    model.load_state_dict(loadable, strict=False)
    rank_zero_info(
        f"init_from {path}: loaded {len(loadable)}/{len(own)} tensors ({fraction:.1%} of the values); "
        f"re-initialised (shape differs): {skipped or 'none'}; "
        f"not in checkpoint: {report['missing'] or 'none'}"
    )
    return report


def init_from_checkpoint(model: Any, stage: str) -> None:
    """A model's ``setup`` step: at the start of a fresh ``fit`` (no ``ckpt_path`` to resume), load the
    matching weights of ``hparams.init_from`` with ``hparams.init_from_min_match``."""
    hparams = model.hparams
    if stage == "fit" and hparams.get("init_from") and model.trainer.ckpt_path is None:
        load_matching_weights(model, hparams.init_from, hparams.get("init_from_min_match", 0.5))
