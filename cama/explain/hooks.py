"""The model-facing part of the layer CAMs: layers by name, the model's state given back, forward hooks.

:func:`cama.explain.gradient_cam` is the only function of ``cama.explain`` that runs a model. Its
gradient methods (:func:`cama.explain.record_gradients`) and its gradient-free ones
(:mod:`cama.explain.gradient_free`) share what is here: the ``layers`` resolved on the model, the
guard that gives every module its train/eval flag and every parameter its ``.grad`` and
``requires_grad`` back (also when an exception is raised), the hooks that record a layer's output
(removed on the way out), and the checks of what the layers and the score return.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "LayerSpec",
    "check_scores",
    "layer_maps",
    "model_state_guard",
    "record_activations",
    "recording_hooks",
    "resolve_layers",
    "single_outputs",
]

LayerSpec = nn.Module | str


def resolve_layers(model: nn.Module, layers: LayerSpec | Sequence[LayerSpec]) -> list[nn.Module]:
    """The modules of ``layers``: modules as given, names through ``model.get_submodule``."""
    items = [layers] if isinstance(layers, (nn.Module, str)) else list(layers)
    if not items:
        raise ValueError("need at least one layer")
    return [model.get_submodule(item) if isinstance(item, str) else item for item in items]


@contextmanager
def model_state_guard(model: nn.Module, eval_mode: bool) -> Iterator[None]:
    """Restore every module's train/eval flag and every parameter's ``.grad`` / ``requires_grad``."""
    modes = [(module, module.training) for module in model.modules()]
    parameters = list(model.parameters())
    grads = [parameter.grad for parameter in parameters]
    requires = [parameter.requires_grad for parameter in parameters]
    try:
        if eval_mode:
            model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training
        for parameter, grad, flag in zip(parameters, grads, requires):
            if parameter.requires_grad != flag:
                parameter.requires_grad_(flag)
            if parameter.grad is not grad:
                parameter.grad = grad


@contextmanager
def recording_hooks(modules: Sequence[nn.Module]) -> Iterator[list[list[Tensor]]]:
    """Forward hooks that append each module's output to its list (one list per module, in order)
    and hand on a clone, so a later in-place operation (``ReLU(inplace=True)``) acts on the clone, not
    on the record. The hooks are removed when the block ends, also on an exception."""
    records: list[list[Tensor]] = [[] for _ in modules]

    def make_hook(index: int) -> Callable[[nn.Module, Any, Any], Tensor]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> Tensor:
            if not isinstance(output, Tensor) or not output.is_floating_point():
                raise TypeError(f"layer {module.__class__.__name__} must return a floating tensor")
            records[index].append(output)
            return output.clone()

        return hook

    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        handles = [module.register_forward_hook(make_hook(i)) for i, module in enumerate(modules)]
        yield records
    finally:
        for handle in handles:
            handle.remove()


def single_outputs(modules: Sequence[nn.Module], records: Sequence[list[Tensor]]) -> list[Tensor]:
    """The one output each module recorded in a forward; a RuntimeError if one ran 0 or several times."""
    for module, record in zip(modules, records):
        if len(record) != 1:
            raise RuntimeError(f"layer {module.__class__.__name__} ran {len(record)} times in one forward")
    return [record[0] for record in records]


def layer_maps(outputs: Sequence[Tensor], reshape: Callable[[Tensor], Tensor] | None) -> list[Tensor]:
    """The layers' outputs as ``[B, K, h, w]`` maps (through ``reshape`` when given), checked."""
    maps = list(outputs) if reshape is None else [reshape(output) for output in outputs]
    for activation in maps:
        if activation.ndim != 4:
            hint = "" if reshape is not None else " (a transformer's tokens need `reshape`)"
            raise ValueError(f"layer outputs must be [B, K, h, w], got {tuple(activation.shape)}{hint}")
    return maps


def check_scores(scores: Any, count: int) -> Tensor:
    """``scores`` if it is one score per sample ``[count]``, else a ValueError."""
    if not isinstance(scores, Tensor) or scores.shape != (count,):
        got = getattr(scores, "shape", scores)
        raise ValueError(f"score_fn must return one score per sample [B], got {got}")
    return scores


def record_activations(
    model: nn.Module,
    images: Tensor,
    layers: Sequence[nn.Module],
    score_fn: Callable[[Any], Tensor] | None = None,
    reshape: Callable[[Tensor], Tensor] | None = None,
) -> tuple[list[Tensor], Tensor | None]:
    """One forward without gradients: the ``layers``' outputs as ``[B, K, h, w]`` maps (detached) and,
    with ``score_fn``, the scores ``[B]`` of the model's output.

    Call it inside :func:`model_state_guard` (the caller decides the modes), outside inference mode.
    """
    with torch.no_grad(), recording_hooks(layers) as records:
        output = model(images)
    scores = None if score_fn is None else check_scores(score_fn(output), images.shape[0]).detach()
    activations = layer_maps(single_outputs(layers, records), reshape)
    return [activation.detach() for activation in activations], scores
