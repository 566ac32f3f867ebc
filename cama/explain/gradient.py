"""The CAMs of hooked layers, with the layerization and truncation tricks (ltgrad-cam, Eq. 2-11).

:func:`gradient_cam` explains any scalar score per sample -- a class logit, or the similarity
of a metric model's embedding to a reference embedding -- on one or several layers. The gradient
methods (Grad-CAM, Grad-CAM++, Layer-CAM, FullGrad, HiResCAM, XGrad-CAM) take one forward and one
backward pass for the whole batch; the gradient-free ones (Score-CAM, Ablation-CAM, EigenCAM:
:mod:`cama.explain.gradient_free`) one forward, then Score-CAM and Ablation-CAM one masked or
ablated forward per (image, channel) pair, in chunks. It is the only function of ``cama.explain``
that touches a model, and it leaves no trace on it: no hook, same train/eval mode per module, same
``.grad`` and ``requires_grad`` on every parameter, also when it raises. It runs inside a
Lightning validation loop (which runs under ``torch.inference_mode``).

Reading of the papers (ltgrad-cam; as implemented: ``docs/explanations.md#the-gradient-cams``):

* **Grad-CAM** (Eq. 2-3): ``w_k = mean_ij g_ij^k``, map ``sum_k w_k A^k``.
* **Grad-CAM++** (Chattopadhay et al., ltgrad-cam ref. [3]) in its closed form for an
  exponential score ``Y = exp(S)`` of a piecewise-linear network, where the higher derivatives
  are ``exp(S) g^2`` and ``exp(S) g^3``:
  ``alpha_ij^k = g_ij^2 / (2 g_ij^2 + sum_ab A_ab^k g_ij^3)`` (0 where the denominator is 0),
  ``w_k = sum_ij alpha_ij^k ReLU(g_ij^k)``, map ``sum_k w_k A^k``. The factor ``exp(S)`` of the
  weights is one positive constant per sample (shared by every layer), which the per-map
  normalisation removes, so it is left out.
* **Layer-CAM** (Eq. 4-5): map ``sum_k ReLU(g^k) * A^k`` (Hadamard product, summed over the
  channels as in Layer-CAM's paper).
* **FullGrad** (Eq. 6-7): ``dy/dx * x + sum_l sum_k Psi(dy/db^{kl} * b^{kl})``. The gradient
  with respect to a bias that is broadcast over the positions of a layer's output ``A^l`` is
  ``dy/dA^l``, so the bias term of layer ``l`` is ``dy/dA^l * b^l`` (per channel and position).
  ``Psi`` is ``|.|`` followed by min-max normalisation; like Srinivas & Fleuret's reference
  code we normalise each layer's tensor per sample jointly over channels and positions and then
  sum over the channels (normalising each channel on its own would give every channel the same
  weight). ``b^l`` is the bias of a convolution / linear layer, or for a batch-norm layer in eval
  mode its effective bias ``beta - gamma * running_mean / sqrt(running_var + eps)``; a hooked
  module without a bias (e.g. a whole residual stage) contributes the gradient-times-input term
  of the sub-network that follows it, ``Psi(dy/dA^l * A^l)``. The input term ``dy/dx * x`` is
  always included (as one more map). :func:`fullgrad_layers` lists every bias-carrying
  convolution and batch-norm layer of a model, which gives the original FullGrad.
* **HiResCAM** (Draelos & Carin 2020): map ``sum_k g^k * A^k`` (element-wise product, no ReLU on
  the gradient: Layer-CAM without its ReLU); the only ReLU is :func:`postprocess`'s.
* **XGrad-CAM** (Fu et al. 2020, Eq. 8): ``w_k = sum_ij (A_ij^k / sum_ab A_ab^k) g_ij^k`` (0 where
  the channel sum is 0), map ``sum_k w_k A^k``.
* **Layerization** (Eq. 8): the per-layer maps, each through :func:`postprocess` (ReLU of Eq. 3
  / 5, bilinear upsampling ``psi`` to the image size), are summed; the sum is min-max normalised
  to ``[0, 1]`` for display. ``layer_norm`` says whether each layer map is min-max normalised
  before the sum: ``"minmax"`` (the default) gives every layer the same weight whatever its
  gradients' magnitude, which departs from Eq. 8; ``"none"`` is Eq. 8 as written, the plain sum of
  the upsampled raw maps, where the layers with the largest maps dominate
  (``docs/explanations.md#layerization``).
* **Truncation** (Eq. 9-11): ``g <- I(g >= delta) * g`` where ``delta`` is the given percentile
  (0-100) of the *positive* gradients of each feature map, per sample -- by default of the whole
  layer output ``Z`` ``[K, h, w]``; ``truncation_per_channel=True`` takes the percentile of each
  channel ``A^{kl}`` separately. Eq. 9 writes ``>=``, Eq. 10-11 ``>``; we keep ``>=`` so that
  ``delta = 0`` (the smallest positive gradient) keeps exactly the positive gradients. Applied to
  every gradient the method uses (the input gradient of FullGrad included). The gradient-free
  methods have no gradient to truncate: :func:`gradient_cam` refuses a truncation for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ._common import full_precision
from .gradient_free import GRADIENT_FREE_METHODS, gradient_free_layer_maps
from .gradient_layer import _METHODS, Method, gradient_cam_layer_map
from .hooks import (
    LayerSpec,
    check_scores,
    layer_maps,
    model_state_guard,
    recording_hooks,
    resolve_layers,
    single_outputs,
)
from .render import minmax_normalize, postprocess
from .truncation import truncate_gradients

__all__ = [
    "CAM_METHODS",
    "CamMethod",
    "GRADIENT_FREE_METHODS",
    "LAYER_NORMS",
    "LayerNorm",
    "Method",
    "check_layer_norm",
    "GradientRecord",
    "truncate_gradients",
    "gradient_cam_layer_map",
    "record_gradients",
    "gradient_layer_maps",
    "gradient_cam",
    "fullgrad_layers",
]

LayerNorm = Literal["minmax", "none"]
LAYER_NORMS: tuple[str, ...] = ("minmax", "none")
CamMethod = Literal[
    "gradcam", "gradcam++", "layercam", "fullgrad", "hirescam", "xgradcam",
    "scorecam", "ablationcam", "eigencam",
]
#: every method of :func:`gradient_cam`: the gradient methods, then the gradient-free ones
CAM_METHODS: tuple[str, ...] = _METHODS + GRADIENT_FREE_METHODS


# --------------------------------------------------------------------------------------------------
# the model-facing part
# --------------------------------------------------------------------------------------------------
def _effective_bias(module: nn.Module) -> Tensor | None:
    """The per-channel bias ``b`` that ``module`` adds to its output, or None."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        beta = module.bias if module.bias is not None else None
        if module.running_mean is not None and not module.training:
            scale = torch.rsqrt(module.running_var + module.eps)
            gamma = module.weight if module.weight is not None else torch.ones_like(scale)
            shift = -gamma * module.running_mean * scale
            return shift if beta is None else beta + shift
        return beta
    bias = getattr(module, "bias", None)
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(bias, Tensor):
        return bias
    return None


def fullgrad_layers(model: nn.Module) -> list[nn.Module]:
    """Every convolution with a bias and every batch-norm layer of ``model`` (FullGrad's ``l``, Eq. 6)."""
    return [
        module
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        or (isinstance(module, nn.modules.conv._ConvNd) and module.bias is not None)
    ]


@dataclass(frozen=True)
class GradientRecord:
    """What one forward and one backward pass of a scalar score per sample leave (:func:`record_gradients`).

    Attributes:
        activations: the hooked layers' outputs ``A^l`` ``[B, K_l, h_l, w_l]``, in the order given (detached).
        gradients: ``dy/dA^l``, same shapes (zeros for a layer the score does not depend on).
        biases: each layer's per-channel effective bias as the forward saw it (FullGrad's ``b^l``), or None.
        size: the images' ``(H, W)``, the size every layer map is upsampled to.
        inputs, input_gradients: the images and ``dy/dx`` (FullGrad's input term), when recorded.
    """

    activations: tuple[Tensor, ...]
    gradients: tuple[Tensor, ...]
    biases: tuple[Tensor | None, ...]
    size: tuple[int, int]
    inputs: Tensor | None = None
    input_gradients: Tensor | None = None

    def select(self, layers: Sequence[int]) -> "GradientRecord":
        """The record of some of its layers (positions in :attr:`activations`); the input term is kept."""
        index = [int(i) for i in layers]
        return replace(
            self,
            activations=tuple(self.activations[i] for i in index),
            gradients=tuple(self.gradients[i] for i in index),
            biases=tuple(self.biases[i] for i in index),
        )


def record_gradients(
    model: nn.Module,
    images: Tensor,
    score_fn: Callable[[Any], Tensor],
    layers: LayerSpec | Sequence[LayerSpec],
    inputs: bool = False,
    eval_mode: bool = True,
    reshape: Callable[[Tensor], Tensor] | None = None,
) -> GradientRecord:
    """One forward (hooks record the ``layers``' outputs) and one backward pass of ``score_fn`` for the
    whole batch: the activations and gradients every gradient CAM is made of (:func:`gradient_cam`).

    ``inputs=True`` also records the images and their gradient (FullGrad's input term). The
    safety guarantees and the requirements on ``layers`` are :func:`gradient_cam`'s; ``reshape`` turns
    each layer's output and its gradient into ``[B, K, h, w]`` (a transformer's tokens, as there).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
    modules = resolve_layers(model, layers)
    with torch.inference_mode(False), torch.enable_grad(), model_state_guard(model, eval_mode):
        with recording_hooks(modules) as records:
            leaf = images.detach().clone().requires_grad_(True)
            scores = check_scores(score_fn(model(leaf)), images.shape[0])
        outputs = single_outputs(modules, records)
        activations = layer_maps(outputs, reshape)
        targets = outputs + ([leaf] if inputs else [])
        gradients = torch.autograd.grad(scores.sum(), targets, allow_unused=True)
        if reshape is not None:  # the gradients of the tokens, re-indexed like the tokens themselves
            layer_gradients = [g if g is None else reshape(g) for g in gradients[: len(modules)]]
            gradients = layer_gradients + list(gradients[len(modules):])
        with torch.no_grad():  # biases as the forward saw them (eval-mode batch norm)
            biases = [_effective_bias(module) for module in modules]
            biases = [None if bias is None else bias.detach().clone() for bias in biases]
    recorded = activations + ([leaf] if inputs else [])
    gradients = [torch.zeros_like(t) if g is None else g.detach() for t, g in zip(recorded, gradients)]
    return GradientRecord(
        activations=tuple(a.detach() for a in activations),
        gradients=tuple(gradients[: len(modules)]),
        biases=tuple(biases),
        size=(int(images.shape[-2]), int(images.shape[-1])),
        inputs=leaf.detach() if inputs else None,
        input_gradients=gradients[-1] if inputs else None,
    )


def check_layer_norm(layer_norm: str) -> str:
    """``layer_norm`` if it is one of :data:`LAYER_NORMS`, else a ValueError."""
    if layer_norm not in LAYER_NORMS:
        raise ValueError(f"layer_norm must be one of {LAYER_NORMS}, got {layer_norm!r}")
    return layer_norm


def gradient_layer_maps(
    record: GradientRecord,
    method: Method = "gradcam",
    truncation: float | None = None,
    truncation_per_channel: bool = False,
    layer_norm: LayerNorm = "minmax",
) -> list[Tensor]:
    """The per-layer maps of a record, each through :func:`postprocess` to the images' size (the terms
    of the layerization sum, Eq. 8), the gradients truncated first with ``truncation`` (Eq. 9-11).

    One ``[B, H, W]`` map per recorded layer; for ``"fullgrad"`` the input term ``dy/dx * x`` comes
    last (the record must hold the inputs). ``layer_norm="minmax"``: each map min-max normalised to
    ``[0, 1]``; ``"none"``: the upsampled raw map after the method's ReLU (``>= 0``, on its layer's own
    scale), the literal terms of Eq. 8. :func:`gradient_cam` is the min-max normalised sum of these
    maps, so a layerized map over any subset of the layers is the normalised sum of the subset
    (:func:`cama.explain.minmax_normalize`).
    """
    if method not in _METHODS:
        free = method in GRADIENT_FREE_METHODS
        hint = " (the gradient-free methods have no gradient record: gradient_cam)" if free else ""
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}{hint}")
    normalize = check_layer_norm(layer_norm) == "minmax"
    pairs = list(zip(record.activations, record.gradients, record.biases))
    if method == "fullgrad":
        if record.inputs is None or record.input_gradients is None:
            raise ValueError("FullGrad's input term needs the inputs: record_gradients(..., inputs=True)")
        pairs.append((record.inputs, record.input_gradients, None))  # the input term has no bias
    size = record.size
    maps = []
    for activation, gradient, bias in pairs:
        # half / bf16 under autocast: the layer maps and their sum are computed in float32
        with full_precision(activation, gradient) as (activation, gradient):
            if truncation is not None:
                gradient = truncate_gradients(gradient, truncation, per_channel=truncation_per_channel)
            bias = bias if method == "fullgrad" else None
            layer_map = gradient_cam_layer_map(activation, gradient, method, bias=bias)
            maps.append(postprocess(layer_map, size, normalize=normalize))
    return maps


def gradient_cam(
    model: nn.Module,
    images: Tensor,
    score_fn: Callable[[Any], Tensor] | None,
    layers: LayerSpec | Sequence[LayerSpec],
    method: CamMethod = "gradcam",
    truncation: float | None = None,
    truncation_per_channel: bool = False,
    eval_mode: bool = True,
    reshape: Callable[[Tensor], Tensor] | None = None,
    layer_norm: LayerNorm = "minmax",
    forward_batch_size: int = 64,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Tensor:
    """The CAM of a scalar score per sample on hooked layers, layerized and optionally truncated (ltgrad-cam).

    Gradient methods: one forward pass (forward hooks record the ``layers``' outputs) and one
    backward pass (``torch.autograd.grad`` of the summed scores with respect to those outputs -- and
    to the images for FullGrad) for the whole batch; parameters' ``.grad`` are never written
    (:func:`record_gradients`). Gradient-free methods (:mod:`cama.explain.gradient_free`): one forward
    without gradients, then for Score-CAM and Ablation-CAM the masked / ablated forwards of every
    (image, channel) pair of every layer, ``forward_batch_size`` at a time. The per-layer maps (Eq. 3 /
    5 / 6, :func:`gradient_cam_layer_map`; the gradient-free ones) go through :func:`postprocess` to the
    image size -- min-max normalised each with ``layer_norm="minmax"``, on their own scales with
    ``"none"`` (Eq. 8 as written) -- and are summed (layerization, Eq. 8, :func:`gradient_layer_maps`);
    the sum is min-max normalised per sample. With ``truncation=delta`` the gradients are first
    truncated (Eq. 9-11, :func:`truncate_gradients`; gradient methods only).

    Safe inside a Lightning validation loop: gradients are enabled locally (leaving
    ``torch.inference_mode`` / ``torch.no_grad``), the images are cloned into normal tensors,
    the model is put in eval mode (``eval_mode``) and every module's own mode, every parameter's
    ``.grad`` and ``requires_grad`` are restored afterwards, and the hooks are removed -- also when
    an exception is raised. With ``eval_mode=False`` every forward runs in the model's own modes (a
    batch norm in training mode then updates its running statistics, once per forward).

    Each hooked module must run once per forward and return a floating ``[B, K, h, w]`` tensor (or one
    that ``reshape`` turns into it).
    Its output is handed on as a clone, so an in-place operation that follows it (e.g.
    ``ReLU(inplace=True)`` after a batch norm) does not change the recorded activation.

    Args:
        model: any ``nn.Module``; ``model(images)`` is passed to ``score_fn``.
        images: ``[B, C, H, W]``.
        score_fn: output of the model -> one score per sample ``[B]`` (see :func:`logit_score`,
            :func:`similarity_score`). Score-CAM and Ablation-CAM need a
            :class:`~cama.explain.gradient_scores.RowScore` (those two are); EigenCAM uses no score
            (None is accepted).
        layers: modules, or names resolved with ``model.get_submodule`` (one or several).
        method: one of :data:`CAM_METHODS`: ``"gradcam"``, ``"gradcam++"``, ``"layercam"``,
            ``"fullgrad"``, ``"hirescam"``, ``"xgradcam"`` (gradient), ``"scorecam"``,
            ``"ablationcam"``, ``"eigencam"`` (gradient-free).
        truncation: ``delta``, the percentile (0-100) of the positive gradients kept; None
            disables the truncation trick. A ValueError for a gradient-free method.
        truncation_per_channel: take the percentile per channel instead of per whole map.
        eval_mode: run the model in eval mode (batch norm with running statistics, no dropout).
        reshape: turns a layer's output into ``[B, K, h, w]``; applied to the output and to its
            gradient alike (pytorch-grad-cam's ``reshape_transform``). For a ViT,
            :class:`cama.backbones.vit.TokenGrid` drops the class token and folds the patch tokens.
        layer_norm: ``"minmax"`` normalises each layer map before the layerization sum (every layer
            weighs the same; the default); ``"none"`` sums the upsampled raw maps (Eq. 8 literally).
        forward_batch_size: Score-CAM, Ablation-CAM: the most masked / ablated inputs in one forward.
        mean, std: Score-CAM: the images' normalisation, to mask the ``[0, 1]`` picture
            (:func:`cama.explain.masking.mask_images`); None masks the network input as it is.

    Returns:
        ``[B, H, W]`` in ``[0, 1]``, float32 (float64 when the hooked layers output float64), on the
        images' device.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"method must be one of {CAM_METHODS}, got {method!r}")
    check_layer_norm(layer_norm)  # before the forward and backward passes
    if method in GRADIENT_FREE_METHODS:
        if truncation is not None or truncation_per_channel:
            raise ValueError(
                f"truncation applies to the gradient methods {_METHODS}; {method} uses no gradient "
                f"(got truncation={truncation!r}, truncation_per_channel={truncation_per_channel!r})"
            )
        layer_list = gradient_free_layer_maps(
            model, images, score_fn, resolve_layers(model, layers), method, eval_mode, reshape,
            layer_norm == "minmax", forward_batch_size, mean, std,
        )
    else:
        if score_fn is None:
            raise ValueError(f"{method} differentiates a score: score_fn is required")
        record = record_gradients(model, images, score_fn, layers, inputs=method == "fullgrad",
                                  eval_mode=eval_mode, reshape=reshape)
        layer_list = gradient_layer_maps(record, method, truncation, truncation_per_channel, layer_norm)
    total: Tensor | None = None
    for layer_map in layer_list:
        total = layer_map if total is None else total + layer_map
    assert total is not None
    return minmax_normalize(total)
