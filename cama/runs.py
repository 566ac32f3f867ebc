"""A run's checkpoint folders, which checkpoint resumes a run, and whether a checkpoint fits a run.

Every ``fit`` writes its checkpoints into its own folder: a ``ModelCheckpoint`` without ``dirpath``
(as in every config of the project) writes to ``<save_dir>/<name>/<version>/checkpoints``, the
version folder of the run's logger, so seeds and variants of one config never share a folder.
:class:`RunLayout` says where those folders are for a configuration; ``--ckpt_path last`` resumes
the run written to last, from its newest checkpoint that can be resumed
(:func:`checkpoint_to_resume`): a file that is empty, truncated, not a Lightning checkpoint, holds
non-finite weights or a checkpoint of another model class is named and passed over.

The checks of a checkpoint against the run it is given to -- the model class
(:func:`resume_problem`), the hyper-parameters a resume would silently replace
(:func:`hparam_differences`) and the tensors' names and shapes (:func:`check_state_fits`) -- raise
:class:`CheckpointMismatchError` naming the file, before anything is trained or written.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint

from cama.checkpoint_files import (
    CheckpointFileError,
    checkpoint_state_dict,
    non_finite_tensors,
    read_checkpoint,
)
from cama.loading import ConfigError, import_class

__all__ = [
    "CheckpointMismatchError",
    "RunLayout",
    "checkpoint_folder",
    "LIGHTNING_CKPT_PATH_VALUES",
    "resume_problem",
    "newest_resumable",
    "checkpoint_to_resume",
    "hparam_differences",
    "check_state_fits",
]

#: ``ckpt_path`` values that Lightning resolves itself (not file names)
LIGHTNING_CKPT_PATH_VALUES = ("last", "best", "hpc")


class CheckpointMismatchError(CheckpointFileError):
    """A readable checkpoint that does not fit the run it was given to (another model class,
    other hyper-parameters, other tensors)."""


@dataclass(frozen=True)
class RunLayout:
    """Where the runs of one configuration keep their checkpoints.

    Args:
        fixed: the ``dirpath`` folders given to ``ModelCheckpoint`` in the configuration; when any is
            given, every run of the configuration writes there.
        root: ``<save_dir>/<name>`` of a logger with version folders (TensorBoard, CSV), else None.
        version: the version folder this run was told to use (``version_3``, ``seed1``), else None
            (the logger takes the next free one).
        default_root_dir: the trainer's folder; without a logger checkpoints go to its ``checkpoints``.
    """

    fixed: tuple[str, ...] = ()
    root: str | None = None
    version: str | None = None
    default_root_dir: str = "runs"

    @classmethod
    def from_trainer_config(cls, trainer: Any) -> "RunLayout | None":
        """The layout of a LightningCLI ``trainer`` configuration (a mapping or a jsonargparse
        namespace); None for a logger that is not known to keep version folders under ``save_dir``."""
        root_dir = str(_get(trainer, "default_root_dir") or ".")
        fixed = tuple(
            str(d) for d in (_checkpoint_dirpath(cb) for cb in _get(trainer, "callbacks") or []) if d
        )
        logger = _get(trainer, "logger")
        if isinstance(logger, (list, tuple)):
            logger = logger[0] if logger else False
        if logger is False:
            return cls(fixed, None, None, root_dir)
        if logger is None or logger is True:  # Lightning's default logger: <default_root_dir>/lightning_logs
            return cls(fixed, os.path.join(root_dir, "lightning_logs"), None, root_dir)
        args = _get(logger, "init_args")
        save_dir = _get(args, "save_dir")
        if save_dir is None:
            return None if not fixed else cls(fixed, None, None, root_dir)
        name, version = _get(args, "name"), _get(args, "version")
        root = os.path.join(str(save_dir), str(name)) if name else str(save_dir)
        version = None if version is None else (version if isinstance(version, str) else f"version_{version}")
        return cls(fixed, root, version, root_dir)

    def folders(self) -> list[Path]:
        """The checkpoint folders ``--ckpt_path last`` searches: the fixed ones, else this run's
        version folder when named, else every version folder of the root."""
        if self.fixed:
            return [Path(f) for f in self.fixed]
        if self.root is None:
            return [Path(self.default_root_dir) / "checkpoints"]
        if self.version is not None:
            return [Path(self.root) / self.version / "checkpoints"]
        return sorted(p for p in Path(self.root).glob("*/checkpoints") if p.is_dir())

    def version_of(self, checkpoint: str | os.PathLike) -> str | None:
        """The version folder holding ``checkpoint`` when it is a checkpoint of this layout's root
        (``<root>/<version>/checkpoints/<file>``), else None."""
        if self.fixed or self.root is None:
            return None
        folder = Path(checkpoint).resolve().parent
        if folder.name == "checkpoints" and folder.parent.parent == Path(self.root).resolve():
            return folder.parent.name
        return None


def checkpoint_folder(trainer: Any, callback: Any = None) -> str:
    """The folder ``callback`` (a ``ModelCheckpoint``; None: the trainer's first) writes to: its
    ``dirpath``, else Lightning's default for a callback without one, ``<log_dir>/checkpoints`` (the
    logger's version folder; ``<default_root_dir>/checkpoints`` without a logger)."""
    callback = trainer.checkpoint_callback if callback is None else callback
    dirpath = getattr(callback, "dirpath", None)
    if dirpath:
        return str(dirpath)
    return os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints")


def _get(config: Any, key: str) -> Any:
    """``config[key]`` of a mapping or a namespace, else None."""
    if config is None or isinstance(config, (bool, str)):
        return None
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def _checkpoint_dirpath(callback: Any) -> str | None:
    """The ``dirpath`` of a configured ``ModelCheckpoint`` (an instance, or a class path and its
    init arguments), else None."""
    if isinstance(callback, ModelCheckpoint):
        return str(callback.dirpath) if callback.dirpath else None
    cls = _class_of(str(_get(callback, "class_path") or ""))
    if isinstance(cls, type) and issubclass(cls, ModelCheckpoint):
        return _get(_get(callback, "init_args"), "dirpath")
    return None


def _class_of(path: str) -> Any:
    try:
        return import_class(path)
    except ConfigError:
        return path  # compared as a name


def _model_class_problem(checkpoint: Mapping[str, Any], class_path: str | None) -> str | None:
    saved = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if class_path is None or saved is None or _class_of(saved) == _class_of(class_path):
        return None
    return f"is a checkpoint of {saved}, not of {class_path} (this run's model.class_path)"


def resume_problem(
    path: str | os.PathLike, class_path: str | None = None, option: str = "--ckpt_path"
) -> str | None:
    """Why the file at ``path`` cannot resume a run of ``class_path``, as a sentence naming the file
    (None: it can): unreadable, empty or truncated, not a Lightning checkpoint, non-finite weights,
    another model class."""
    try:
        checkpoint = read_checkpoint(str(path), option)
        state = checkpoint_state_dict(checkpoint, str(path), option, lightning_only=True)
    except CheckpointFileError as err:
        return str(err)
    bad = non_finite_tensors(state)
    if bad:
        return f"{option}: {path} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]})"
    problem = _model_class_problem(checkpoint, class_path)
    return f"{option}: {path} {problem}" if problem else None


def newest_resumable(
    folders: Iterable[Path], class_path: str | None = None, pattern: str = "*.ckpt"
) -> tuple[Path | None, list[str]]:
    """The newest file matching ``pattern`` in ``folders`` that can resume a run of ``class_path``
    (None: none can), and the reasons the newer ones cannot."""
    return _first_resumable(_by_age(p for folder in folders for p in Path(folder).glob(pattern)), class_path)


def _first_resumable(paths: Iterable[Path], class_path: str | None) -> tuple[Path | None, list[str]]:
    """The first of ``paths`` that can resume a run of ``class_path``, and why those before it cannot."""
    passed: list[str] = []
    for path in paths:
        problem = resume_problem(path, class_path)
        if problem is None:
            return path, passed
        passed.append(problem)
    return None, passed


def checkpoint_to_resume(
    folders: Iterable[Path], class_path: str | None = None
) -> tuple[Path | None, list[str]]:
    """What ``--ckpt_path last`` resumes: the run (checkpoint folder) written to last -- the folder
    holding the newest ``*.ckpt`` -- and in it the newest checkpoint that can resume a run of
    ``class_path``, with the newer files passed over (the reason each cannot); ``(None, [])`` when
    no folder holds a checkpoint. A newest run with no resumable checkpoint raises
    :class:`CheckpointFileError` naming its files and the other runs' newest good checkpoints:
    an older run is never resumed in its place."""
    runs = {Path(folder): _by_age(Path(folder).glob("*.ckpt")) for folder in folders}
    runs = {folder: files for folder, files in runs.items() if files}
    if not runs:
        return None, []
    folder = max(runs, key=lambda f: runs[f][0].stat().st_mtime)
    found, passed = _first_resumable(runs[folder], class_path)
    if found is not None:
        return found, passed
    others = [str(p) for p in (_first_resumable(runs[f], class_path)[0] for f in runs if f != folder) if p]
    elsewhere = (
        f" The newest good checkpoint of each other run: {others} (resume one with --ckpt_path PATH)"
        if others
        else ""
    )
    run_folder = folder.parent if folder.name == "checkpoints" else folder
    raise CheckpointFileError(
        f"--ckpt_path last: the run written to last, {run_folder}, "
        f"holds no checkpoint that can resume it: {'; '.join(passed)}.{elsewhere}"
    )


def _by_age(paths: Iterable[Path]) -> list[Path]:
    """The files among ``paths``, newest first (by modification time, as Lightning orders ``last`` files)."""
    return sorted((p for p in paths if p.is_file()), key=lambda p: p.stat().st_mtime, reverse=True)


def _plain(value: Any) -> Any:
    """A hyper-parameter as plain Python values, for comparing a saved value with a configured one."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Namespace):  # a jsonargparse namespace (a configured class's init_args)
        return _plain(value.as_dict())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def hparam_differences(
    saved: Mapping[str, Any], given: Mapping[str, Any], ignore: Iterable[str] = ()
) -> list[str]:
    """``name: checkpoint A, here B`` for every hyper-parameter the checkpoint saved whose value in
    this run's configuration differs (keys starting with ``_`` and ``ignore`` left out)."""
    skip = set(ignore)
    return [
        f"{name}: checkpoint {saved[name]!r}, here {given[name]!r}"
        for name in sorted(saved)
        if not name.startswith("_")
        and name not in skip
        and name in given
        and _plain(saved[name]) != _plain(given[name])
    ]


def check_state_fits(checkpoint: Mapping[str, Any], path: str, model: torch.nn.Module, option: str) -> None:
    """Raise :class:`CheckpointMismatchError` listing the model's tensors the file lacks, the file's
    tensors the model lacks and the tensors whose shapes differ, when any do."""
    state = checkpoint_state_dict(checkpoint, path, option, lightning_only=True)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} here"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = [
        f"{len(items)} {what}, e.g. {items[:3]}"
        for what, items in (
            ("tensors of the model are not in the file", missing),
            ("tensors of the file are not in the model", unexpected),
            ("tensors differ in shape", shapes),
        )
        if items
    ]
    raise CheckpointMismatchError(
        f"{option}: {path} does not fit this run's {type(model).__name__}: {'; '.join(parts)}. "
        "A checkpoint resumes or scores the architecture it was saved from (same options, same data "
        "set); to start a new model from its weights use --model.init_args.init_from PATH"
    )
