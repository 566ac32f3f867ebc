"""Reading the torch files a user gives (checkpoints, predictions): one reader, clear errors; and
writing a file so that it is always whole (:func:`whole_file`).

:func:`read_torch_file` is the one reader of user-given torch files (:func:`read_checkpoint` for the
checkpoints of ``init_from`` and ``train.py``'s ``--ckpt_path``): ``torch.load(weights_only=True)``
(tensors and plain Python values only, memory-mapped when the file is in torch's zip format), and a
missing, empty, truncated, corrupt or foreign file stops with :class:`CheckpointFileError` naming
the file and what was expected.
"""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, Any

import torch

from cama.errors import InputError

__all__ = [
    "CheckpointFileError",
    "read_torch_file",
    "read_checkpoint",
    "checkpoint_state_dict",
    "describe_checkpoint",
    "whole_file",
    "non_finite_flags",
    "non_finite_tensors",
]

_EXPECTED = "a Lightning checkpoint (.ckpt) or a state dict of tensors saved with torch.save"


class CheckpointFileError(InputError, ValueError):
    """A checkpoint file given by the user is missing, unreadable or not a checkpoint."""


def _load_failure(path: str, option: str, error: Exception, expected: str = _EXPECTED) -> CheckpointFileError:
    """What a file torch.load(weights_only=True) failed on is, from its first bytes and the error."""
    with open(path, "rb") as f:
        head = f.read(8)
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    hint = ""
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path):
        what = (
            f"is a damaged zip archive (torch's checkpoint format) of {os.path.getsize(path):,} bytes, "
            "probably truncated by an interrupted copy or save"
        )
    elif found:
        what = f"holds the object {found.group(1)}, which is not loaded (nothing from the file is executed)"
        hint = "; if the file is yours and holds a whole model, save its state_dict() instead"
    elif head.startswith(b"\x80"):
        what = (
            "is a pickle that torch.load(weights_only=True) cannot read (a plain pickle, or one "
            "holding more than tensors)"
        )
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
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def checkpoint_state_dict(
    checkpoint: Any, path: str, option: str = "init_from", lightning_only: bool = False
) -> dict[str, torch.Tensor]:
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


def describe_checkpoint(checkpoint: Mapping[str, Any]) -> str:
    """``epoch E, step S`` of a loaded Lightning checkpoint."""
    return f"epoch {checkpoint.get('epoch', '?')}, step {checkpoint.get('global_step', '?')}"


@contextmanager
def whole_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open ``path`` for writing so that it is always whole: the caller writes ``.<name>.partial`` in
    the same folder, which is flushed to disk and renamed over ``path`` in one step (``os.replace``)
    when the block ends, and removed if it raises (a rename across file systems would be a copy that
    a killed process can cut short).

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "rankings.json"
    >>> with whole_file(target, "w") as f:
    ...     _ = f.write("{}")
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('{}', ['rankings.json'])
    """
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    os.makedirs(folder, exist_ok=True)
    partial = os.path.join(folder, f".{name}.partial")
    try:
        with open(partial, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, os.path.join(folder, name))
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def non_finite_flags(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[N]`` bool on the first tensor's device: whether each tensor holds a NaN or an infinity
    (no synchronisation: the caller reads all flags at once)."""
    if not tensors:
        return torch.zeros(0, dtype=torch.bool)
    device = tensors[0].device
    return torch.stack([~torch.isfinite(t).all().to(device) for t in tensors])


def non_finite_tensors(state: Mapping[str, Any]) -> list[str]:
    """The names of the floating-point tensors of ``state`` holding a NaN or an infinity (one
    synchronisation for all of them)."""
    floats = {name: t for name, t in state.items() if isinstance(t, torch.Tensor) and t.is_floating_point()}
    flags = non_finite_flags(list(floats.values())).tolist()
    return [name for name, bad in zip(floats, flags) if bad]
