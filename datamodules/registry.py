"""The registry of data set layouts: a name (``dataset: market1501``) -> the class that reads it.

Two kinds of layout, one registry each, because they give different records: re-ID layouts give
train / query / gallery :class:`~datamodules.reid_scan.ReIDRecord` s (or a generator's datasets) to
:class:`~datamodules.reid.ReIDDataModule`; class layouts give labelled
:class:`~datamodules.class_scan.ClassRecord` s per split to the few-shot, retrieval and
classification data modules. The built-in layouts are registered by
:mod:`datamodules.reid_layouts` and :mod:`datamodules.class_layouts` (imported by the package, so
they are there whenever a data module is); a user's layout is added without touching a data module,
either by registering it

>>> from datamodules.registry import class_layout_names, register_reid_layout, reid_layout, reid_layout_names
>>> from datamodules.reid_layouts import ReIDLayout
>>> class OneFolderPerPerson(ReIDLayout):
...     '''root/<split>/<person>/<image> (a sketch: see docs/data.md).'''
>>> register_reid_layout("people_folders", OneFolderPerPerson)
>>> reid_layout("people_folders") is OneFolderPerPerson
True
>>> "people_folders" in reid_layout_names() and "market1501" in reid_layout_names()
True
>>> "cub" in class_layout_names()
True

or by naming its class in a config (``dataset: mypkg.layouts.MyLayout``, a dotted path with a dot
in it, which no registered name has), imported when looked up:

>>> reid_layout("datamodules.reid_layouts.Market1501").name
'market1501'
>>> reid_layout("viper")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: unknown dataset 'viper': the registered re-ID layouts are [...'market1501'...]; or name a ...

The registry is the only module-level mutable state of the package: two dicts, changed only by the
``register_*`` functions and read only by the look-ups below.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "register_reid_layout",
    "register_class_layout",
    "reid_layout",
    "class_layout",
    "reid_layout_names",
    "class_layout_names",
    "import_layout_class",
]

#: the registries: name -> layout class (filled by ``register_reid_layout`` / ``register_class_layout``)
_REID_LAYOUTS: dict[str, type] = {}
_CLASS_LAYOUTS: dict[str, type] = {}


def _register(registry: dict[str, type], kind: str, name: str, cls: type) -> None:
    if not name or "." in name:
        raise ValueError(f"a {kind} layout name must be non-empty and have no dot (dots mark class paths), "
                         f"got {name!r}")
    if not isinstance(cls, type):
        raise TypeError(f"register a layout class, got {cls!r}")
    if registry.get(name, cls) is not cls:
        raise ValueError(f"the {kind} layout name {name!r} is taken by {registry[name].__qualname__}")
    registry[name] = cls


def register_reid_layout(name: str, cls: type) -> None:
    """Register the re-ID layout class ``cls`` (a :class:`~datamodules.reid_layouts.ReIDLayout`)
    under ``name``; registering the same class again is allowed, another class under a taken name
    is an error."""
    _register(_REID_LAYOUTS, "re-ID", name, cls)


def register_class_layout(name: str, cls: type) -> None:
    """Register the class-image layout class ``cls`` (a :class:`~datamodules.class_layouts.ClassLayout`)
    under ``name`` (as :func:`register_reid_layout`)."""
    _register(_CLASS_LAYOUTS, "class", name, cls)


def import_layout_class(path: str) -> type:
    """``"package.module.Class"`` -> the class; ``ValueError`` naming the path when it cannot be imported."""
    module, _, name = path.rpartition(".")
    try:
        found: Any = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import the layout class {path!r}: {err}") from None
    if not isinstance(found, type):
        raise ValueError(f"the layout {path!r} is not a class but a {type(found).__name__}")  # noqa: TRY004
    return found


def _lookup(registry: dict[str, type], kind: str, name: str, base: type | None) -> type:
    if "." in name:
        cls = import_layout_class(name)
        if base is not None and not issubclass(cls, base):
            raise ValueError(f"the {kind} layout class {name!r} is not a {base.__module__}.{base.__qualname__}")
        return cls
    if name not in registry:
        raise ValueError(f"unknown dataset {name!r}: the registered {kind} layouts are {sorted(registry)}; "
                         "or name a layout class by its dotted path (mypkg.layouts.MyLayout)")
    return registry[name]


def reid_layout(name: str, base: type | None = None) -> type:
    """The re-ID layout class registered as ``name``, or the class at the dotted path ``name``
    (checked to subclass ``base`` when given); ``ValueError`` listing the registered names."""
    return _lookup(_REID_LAYOUTS, "re-ID", name, base)


def class_layout(name: str, base: type | None = None) -> type:
    """The class-image layout class registered as ``name`` or at the dotted path ``name``."""
    return _lookup(_CLASS_LAYOUTS, "class", name, base)


def reid_layout_names() -> list[str]:
    """The registered re-ID layout names, sorted."""
    return sorted(_REID_LAYOUTS)


def class_layout_names() -> list[str]:
    """The registered class-image layout names, sorted."""
    return sorted(_CLASS_LAYOUTS)
