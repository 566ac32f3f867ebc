"""Models and data modules from a run's config and checkpoint: what ``explain.py``, ``export.py``,
``evaluate.py`` and the benches load, read the way ``train.py`` reads them.

A config is read by LightningCLI's own parser (:class:`~lightning.pytorch.cli.LightningArgumentParser`
with the model and data module in subclass mode and ``data.num_classes`` linked into the model, as
:func:`link_data_to_model` does for ``train.py``): the same defaults, type checks and messages as
``train.py``, not a second reader. A checkpoint is read with ``weights_only=True`` (tensors and plain
values only: nothing in the file is executed); its model class comes from the class path LightningCLI
saved in it, so a checkpoint alone rebuilds its model.

>>> from cama.loading import instantiate_config
>>> model, data = instantiate_config("configs/cama_synthetic.yaml",
...                                  data={"synthetic": {"num_train_ids": 4, "num_test_ids": 3}, "val_ids": 1})
>>> type(model).__name__, type(data).__name__, model.hparams.num_classes   # 4 identities, 1 validates
('CAMA', 'ReIDDataModule', 3)
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.cli import LightningArgumentParser, instantiate_class

from cama.checkpoint_files import CheckpointFileError, read_checkpoint
from cama.errors import InputError

__all__ = [
    "ConfigError",
    "import_class",
    "link_data_to_model",
    "read_config",
    "instantiate_config",
    "instantiate_data",
    "instantiate_callbacks",
    "checkpoint_class_path",
    "checkpoint_image_size",
    "datamodule_hparams",
    "load_model",
    "refuse_flat_synthetic_options",
]

#: the flat ``synthetic_*`` data-module options before they became the nested ``synthetic`` object:
#: old name -> field names (``synthetic_size`` was the side of a square image); read-only
_OLD_SYNTHETIC_OPTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "synthetic_train_ids": ("num_train_ids",), "synthetic_test_ids": ("num_test_ids",),
    "synthetic_cameras": ("num_cameras",), "synthetic_cameras_per_id": ("cameras_per_id",),
    "synthetic_images_per_camera": ("images_per_camera",), "synthetic_query_cameras": ("query_cameras",),
    "synthetic_distractors": ("num_distractors",), "synthetic_junk": ("num_junk",),
    "synthetic_occlusion": ("occlusion_prob",), "synthetic_placement": ("placement",),
    "synthetic_num_classes": ("num_classes",), "synthetic_images_per_class": ("images_per_class",),
    "synthetic_splits": ("few_shot_splits",), "synthetic_size": ("height", "width"), "synthetic_seed": ("seed",),
})


class ConfigError(InputError, ValueError):
    """A config file that is missing, not YAML, or lacks a section the caller needs."""


def import_class(path: str) -> type:
    """``"package.module.Class"`` -> the class; :class:`ConfigError` when it cannot be imported."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"cannot import the class {path!r}: {err}") from None


def link_data_to_model(parser: LightningArgumentParser) -> None:
    """The one link between the two halves of a config: the data module's ``num_classes`` becomes
    the model's ``num_classes`` when both are instantiated (``train.py`` and :func:`instantiate_config`)."""
    parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The YAML mapping of the config file at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config {path} is not a YAML mapping")
    return config


def _merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``overrides``, nested mappings merged (``synthetic: {num_classes: 8}``
    keeps the config's other ``synthetic`` fields)."""
    out = dict(base)
    for key, value in overrides.items():
        old = out.get(key)
        out[key] = _merged(old, value) if isinstance(old, Mapping) and isinstance(value, Mapping) else value
    return out


def _section(config: Mapping[str, Any], key: str, source: str, overrides: Mapping[str, Any] | None) -> dict:
    spec = config.get(key)
    if not isinstance(spec, Mapping) or "class_path" not in spec:
        raise ConfigError(f"{source} has no {key}.class_path")
    return {
        "class_path": spec["class_path"],
        "init_args": _merged(spec.get("init_args") or {}, overrides or {}),
    }


def _parser(with_model: bool) -> LightningArgumentParser:
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(pl.LightningDataModule, "data", subclass_mode=True)
    if with_model:
        parser.add_lightning_class_args(pl.LightningModule, "model", subclass_mode=True)
        link_data_to_model(parser)
    return parser


def _instantiate(config: str | os.PathLike | Mapping[str, Any], sections: dict[str, Mapping | None]) -> Any:
    source = str(config) if not isinstance(config, Mapping) else "the config"
    mapping = read_config(config) if not isinstance(config, Mapping) else config
    refuse_flat_synthetic_options(mapping, source)
    values = {key: _section(mapping, key, source, overrides) for key, overrides in sections.items()}
    parser = _parser(with_model="model" in sections)
    try:
        return parser.instantiate_classes(parser.parse_object(values))
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - jsonargparse reports a bad value with its key
        raise ConfigError(f"{source}: {err}") from err


def instantiate_config(
    config: str | os.PathLike | Mapping[str, Any],
    data: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
) -> tuple[pl.LightningModule, pl.LightningDataModule]:
    """The model and data module of a config (a file or its mapping), their init arguments updated
    with ``model`` / ``data``, the model's ``num_classes`` from the data module (as ``train.py``)."""
    namespace = _instantiate(config, {"data": data, "model": model})
    return namespace.model, namespace.data


def instantiate_data(
    config: str | os.PathLike | Mapping[str, Any], data: Mapping[str, Any] | None = None
) -> pl.LightningDataModule:
    """The data module of a config alone (for a model that comes from a checkpoint)."""
    return _instantiate(config, {"data": data}).data


def instantiate_callbacks(config: Mapping[str, Any], prefix: str = "") -> list[pl.Callback]:
    """The ``trainer.callbacks`` of a config mapping whose class path starts with ``prefix``."""
    specs = (config.get("trainer") or {}).get("callbacks") or []
    return [instantiate_class((), dict(s)) for s in specs if str(s.get("class_path", "")).startswith(prefix)]


def checkpoint_class_path(checkpoint: Mapping[str, Any]) -> str | None:
    """The model class path LightningCLI saved in a loaded checkpoint, else None."""
    return (checkpoint.get("hyper_parameters") or {}).get("_class_path")


def refuse_flat_synthetic_options(config: Mapping[str, Any], source: str) -> None:
    """``ConfigError`` naming each flat ``synthetic_*`` data option of an older config (``source``: the
    file) with its nested name today, instead of the parser's "no such key".

    >>> refuse_flat_synthetic_options({"data": {"init_args": {"synthetic_size": 32}}}, "old.yaml")
    Traceback (most recent call last):
    ...
    cama.loading.ConfigError: old.yaml: the data option synthetic_size is now synthetic.height and synthetic.width (the synthetic generator's options are one nested mapping, docs/data.md)
    """
    data = config.get("data")
    options = data.get("init_args", data) if isinstance(data, Mapping) else {}
    old = [name for name in options if name in _OLD_SYNTHETIC_OPTIONS] if isinstance(options, Mapping) else []
    if old:
        renames = "; ".join(
            f"{name} is now " + " and ".join(f"synthetic.{f}" for f in _OLD_SYNTHETIC_OPTIONS[name]) for name in old
        )
        raise ConfigError(f"{source}: the data option {renames} (the synthetic generator's options are one nested "
                          "mapping, docs/data.md)")


def datamodule_hparams(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The data module's init arguments a loaded checkpoint saved, in today's form: the flat
    ``synthetic_*`` options of older checkpoints become the nested ``synthetic`` mapping (where the
    generator's options were used), so ``DataModule(**datamodule_hparams(checkpoint))`` works for both.

    >>> datamodule_hparams({"datamodule_hyper_parameters": {"dataset": "synthetic", "synthetic_size": 32,
    ...                                                     "synthetic_seed": 4}})
    {'dataset': 'synthetic', 'synthetic': {'height': 32, 'width': 32, 'seed': 4}}
    """
    saved = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    nested: dict[str, Any] = {}
    for old, fields in _OLD_SYNTHETIC_OPTIONS.items():
        if old in saved:
            value = saved.pop(old)
            nested.update({f: value for f in fields})
    if nested and "synthetic" not in saved:
        saved["synthetic"] = nested
    return saved


def checkpoint_image_size(path: str | os.PathLike, default: tuple[int, int] = (256, 128)) -> tuple[int, int]:
    """The input size the checkpoint's data module used (its ``image_size``), else ``default``."""
    size = datamodule_hparams(read_checkpoint(str(path), "--checkpoint")).get("image_size")
    return (int(size[0]), int(size[1])) if size else default


def load_model(
    path: str | os.PathLike,
    model_class: str | type | None = None,
    device: str | torch.device = "cpu",
    default_class: str | None = None,
) -> pl.LightningModule:
    """The LightningModule of the checkpoint at ``path``, in eval mode on ``device``: of class
    ``model_class`` (a class or its path), else the class saved in the checkpoint, else
    ``default_class`` (e.g. a config's ``model.class_path``)."""
    checkpoint = read_checkpoint(str(path), "--checkpoint")
    class_path = model_class or checkpoint_class_path(checkpoint) or default_class
    if class_path is None:
        raise CheckpointFileError(
            f"--checkpoint: {path} does not say its model class (not saved by train.py); give --model_class"
        )
    cls = import_class(class_path) if isinstance(class_path, str) else class_path
    if not (isinstance(cls, type) and issubclass(cls, pl.LightningModule)):
        raise ConfigError(f"{class_path} is not a LightningModule class")
    try:
        model = cls.load_from_checkpoint(str(path), map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - missing keys, shapes, hyper-parameters: one line naming the file
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise CheckpointFileError(f"--checkpoint: cannot load {path} as {cls.__name__}: {first}") from err
    return model.to(device).eval()
