"""Reading checkpoint files given by the user, and loading a checkpoint's matching weights into a
fresh model (fine-tuning with ``init_from``).

:func:`read_torch_file` is the one reader of user-given torch files (:func:`read_checkpoint` for the
checkpoints of ``init_from`` and ``train.py``'s ``--ckpt_path``): ``torch.load(weights_only=True)`` (tensors and plain Python values
only, memory-mapped when the file is in torch's zip format), and a missing, truncated, corrupt or
foreign file stops with :class:`CheckpointFileError` naming the file and what was expected.
"""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from cama.errors import InputError

__all__ = [
    "CheckpointFileError",
    "InitFromMismatchError",
    "LIGHTNING_CKPT_PATH_VALUES",
    "check_ckpt_path",
    "read_torch_file",
    "read_checkpoint",
    "checkpoint_state_dict",
    "load_matching_weights",
    "init_from_checkpoint",
]

#: ``ckpt_path`` values that Lightning resolves itself (not file names)
LIGHTNING_CKPT_PATH_VALUES = ("last", "best", "hpc")
_EXPECTED = "a Lightning checkpoint (.ckpt) or a state dict of tensors saved with torch.save"


class CheckpointFileError(InputError, ValueError):
    """A checkpoint file given by the user is missing, unreadable or not a checkpoint."""


class InitFromMismatchError(CheckpointFileError):
    """``init_from`` matches too little of the model (a checkpoint of another model, a wrong file)."""


def _load_failure(path: str, option: str, error: Exception, expected: str = _EXPECTED) -> CheckpointFileError:
    """What a file torch.load(weights_only=True) failed on is, from its first bytes and the error."""
    with open(path, "rb") as f:
        head = f.read(8)
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    hint = ""
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path):
        what = (f"is a damaged zip archive (torch's checkpoint format) of {os.path.getsize(path):,} bytes, "
                "probably truncated by an interrupted copy or save")
    elif found:
        what = f"holds the object {found.group(1)}, which is not loaded (nothing from the file is executed)"
        hint = "; if the file is yours and holds a whole model, save its state_dict() instead"
    elif head.startswith(b"\x80"):
        what = ("is a pickle that torch.load(weights_only=True) cannot read (a plain pickle, or one "
                "holding more than tensors)")
    elif head.startswith(b"PK\x03\x04"):
        first_line = (text.strip().splitlines() or [""])[0][:200]
        what = f"cannot be read ({type(error).__name__}: {first_line})"
    else:
        what = f"is not a PyTorch file (it starts with {head!r})"
    return CheckpointFileError(f"{option}: {path} {what}; expected {expected}{hint}")


def read_torch_file(path: str, option: str, expected: str) -> Any:
    """The object saved in the file at ``path``, loaded with ``torch.load(weights_only=True)`` on the CPU.

    ``option`` names the setting the path came from and ``expected`` what it should hold, for the
    messages. A missing or empty file, a file torch cannot read (truncated, random bytes, text) and a
    pickle of other objects raise :class:`CheckpointFileError` naming the file and what was expected.
    """
    if not os.path.isfile(path):
        where = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
        raise CheckpointFileError(f"{option}: {path} {where}; expected {expected}")
    if os.path.getsize(path) == 0:
        raise CheckpointFileError(f"{option}: {path} is empty (0 bytes); expected {expected}")
    try:
        with warnings.catch_warnings():
            # a foreign pickle's protocol warning: the error below says what the file is
            warnings.filterwarnings("ignore", message=".*pickle protocol")
            # a zip (torch's format since 1.6) is memory-mapped: checking a large checkpoint reads little
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise _load_failure(path, option, e, expected) from None


def read_checkpoint(path: str, option: str = "init_from") -> Any:
    """:func:`read_torch_file` of a checkpoint (a Lightning checkpoint or a state dict)."""
    return read_torch_file(path, option, _EXPECTED)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def checkpoint_state_dict(checkpoint: Any, path: str, option: str = "init_from",
                          lightning_only: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of a loaded checkpoint: a Lightning checkpoint's ``state_dict`` or, unless
    ``lightning_only``, a plain state dict; anything else raises :class:`CheckpointFileError`."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        return checkpoint["state_dict"]
    if not lightning_only and _is_state_dict(checkpoint):
        return checkpoint
    if isinstance(checkpoint, dict):
        keys = [str(k) for k in list(checkpoint)[:6]]
        found = f"a dict with the keys {keys}{' ...' if len(checkpoint) > 6 else ''}"
    else:
        found = f"a {type(checkpoint).__name__}"
    expected = "a Lightning checkpoint (a dict with a 'state_dict')" if lightning_only else _EXPECTED
    raise CheckpointFileError(f"{option}: {path} holds {found}, not {expected}")


def check_ckpt_path(ckpt_path: str | None, command: str) -> None:
    """Stop early with :class:`CheckpointFileError` when ``--ckpt_path`` is not a readable Lightning
    checkpoint; ``None``, Lightning's own values (``last``, ``best``, ``hpc``, ``registry...``) and
    URLs are left to Lightning (``last`` with no checkpoint yet starts from scratch with a warning)."""
    if not ckpt_path:
        return
    path = str(ckpt_path)
    if path in LIGHTNING_CKPT_PATH_VALUES or path.startswith("registry") or "://" in path:
        return
    option = f"{command} --ckpt_path"
    checkpoint_state_dict(read_checkpoint(path, option), path, option, lightning_only=True)


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
