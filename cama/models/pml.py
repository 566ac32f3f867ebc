"""pytorch-metric-learning objects (losses, miners, distances, reducers, regularizers) from config specs."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

__all__ = ["PML_MODULES", "build_pml_object"]

#: where a bare class name is looked up, by kind
PML_MODULES = {
    "loss": "pytorch_metric_learning.losses",
    "miner": "pytorch_metric_learning.miners",
    "distance": "pytorch_metric_learning.distances",
    "reducer": "pytorch_metric_learning.reducers",
    "regularizer": "pytorch_metric_learning.regularizers",
}
# arguments of a pytorch-metric-learning object that are themselves objects given by a spec
_NESTED = {
    "distance": "distance",
    "reducer": "reducer",
    "embedding_regularizer": "regularizer",
    "weight_regularizer": "regularizer",
    "loss": "loss",
    "miner": "miner",
}
_SPEC_FORMS = "'Name', {name: Name, <arg>: <value>, ...} or {class_path: module.Name, init_args: {...}}"


def _resolve_class(name: str, kind: str) -> type:
    if "." in name:
        module_name, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), attr, None)
        except ImportError as e:
            raise ValueError(f"cannot import the {kind} {name!r}: {e}") from e
    else:
        module = importlib.import_module(PML_MODULES[kind])
        cls = getattr(module, name, None)
        if cls is None:
            known = sorted(n for n in dir(module) if n[:1].isupper() and not n.startswith("Base"))
            raise ValueError(
                f"unknown {kind} {name!r}: {PML_MODULES[kind]} has none; choose one of {', '.join(known)}"
            )
    if not isinstance(cls, type):
        raise ValueError(f"the {kind} {name!r} is not a class")
    return cls


def build_pml_object(spec: str | Mapping[str, Any], kind: str, **automatic: Any) -> Any:
    """Build a pytorch-metric-learning object (loss, miner, distance, reducer, regularizer) from a spec.

    Args:
        spec: ``"Name"`` (a class of ``PML_MODULES[kind]``, or a dotted path), ``{"name": Name, **kwargs}``
            or ``{"class_path": Name, "init_args": kwargs}``. Arguments named ``distance``, ``reducer``,
            ``*_regularizer``, ``loss`` or ``miner`` may be specs themselves.
        kind: ``"loss"``, ``"miner"``, ``"distance"``, ``"reducer"`` or ``"regularizer"``.
        automatic: values for constructor arguments such as ``num_classes`` and ``embedding_size``;
            each is passed when the constructor *requires* it and the spec does not give it, or when
            the spec gives the string ``"auto"`` (e.g. ``MarginLoss(learn_beta=True, num_classes=auto)``).
    """
    if kind not in PML_MODULES:
        raise ValueError(f"kind must be one of {list(PML_MODULES)}, got {kind!r}")
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, Mapping):
        rest = dict(spec)
        if "class_path" in rest:
            name = rest.pop("class_path")
            kwargs = dict(rest.pop("init_args", None) or {})
            if rest:
                raise ValueError(
                    f"the {kind} spec {dict(spec)} has unexpected keys {sorted(rest)}; expected {_SPEC_FORMS}"
                )
        elif "name" in rest:
            name = rest.pop("name")
            kwargs = rest
        else:
            raise ValueError(f"the {kind} spec {dict(spec)} names no class; expected {_SPEC_FORMS}")
    else:
        raise TypeError(
            f"a {kind} spec must be a string or a mapping ({_SPEC_FORMS}), got {type(spec).__name__}"
        )
    if not isinstance(name, str):
        raise TypeError(f"the {kind} class must be given by name, got {name!r}")
    cls = _resolve_class(name, kind)
    nested = {k for k, v in kwargs.items() if k in _NESTED and isinstance(v, (str, Mapping))}
    for k in nested:
        kwargs[k] = build_pml_object(kwargs[k], _NESTED[k], **automatic)
    for pname, param in inspect.signature(cls.__init__).parameters.items():
        if pname not in automatic:
            continue
        variadic = param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL)
        required = param.default is inspect.Parameter.empty and not variadic
        if (required and pname not in kwargs) or kwargs.get(pname) == "auto":
            if automatic[pname] is None:
                raise ValueError(f"{cls.__name__} needs {pname}, which is not known here: give it in the spec")
            kwargs[pname] = automatic[pname]
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"cannot build the {kind} {cls.__name__} with {kwargs}: {e}") from e
