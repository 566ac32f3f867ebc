"""The raw map of one layer of the gradient CAMs, ltgrad-cam Eq. 2-7, HiResCAM and XGrad-CAM.

Grad-CAM, Grad-CAM++, Layer-CAM, FullGrad's per-layer term, HiResCAM and XGrad-CAM from a layer's
activations and their gradients; the equations as read are in :mod:`cama.explain.gradient`'s docstring (and
``docs/explanations.md#the-gradient-cams``). No model, no hooks: tensors in, one map out.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ._common import full_precision
from .render import minmax_normalize

__all__ = ["Method", "gradient_cam_layer_map"]

Method = Literal["gradcam", "gradcam++", "layercam", "fullgrad", "hirescam", "xgradcam"]
_METHODS = ("gradcam", "gradcam++", "layercam", "fullgrad", "hirescam", "xgradcam")


def _fullgrad_term(gradients: Tensor, values: Tensor) -> Tensor:
    """``sum_k Psi(g * v)``: ``|g * v|`` min-max normalised per sample over (K, h, w), summed over K."""
    product = (gradients * values).abs()
    batch = product.shape[0]
    flat = minmax_normalize(product.reshape(batch, 1, 1, -1)).reshape(product.shape)
    return flat.sum(dim=1)


def gradient_cam_layer_map(
    activations: Tensor,
    gradients: Tensor,
    method: Method = "gradcam",
    bias: Tensor | None = None,
) -> Tensor:
    """The raw map of one layer, ltgrad-cam Eq. 2-7, HiResCAM, XGrad-CAM (see the module docstring).

    Args:
        activations: ``A`` ``[B, K, h, w]``.
        gradients: ``dy/dA`` ``[B, K, h, w]`` (already truncated if wanted).
        method: ``"gradcam"``, ``"gradcam++"``, ``"layercam"``, ``"fullgrad"``, ``"hirescam"`` or
            ``"xgradcam"``.
        bias: FullGrad only: the per-channel bias ``[K]`` added by the layer; None uses the
            gradient-times-activation term.

    Returns:
        ``[B, h, w]``, before ReLU / upsampling / normalisation (FullGrad's is already >= 0),
        computed and returned in float32 (float64 for float64 activations), autocast off.
    """
    with full_precision(activations, gradients, bias) as (activations, gradients, bias):
        return _layer_map(activations, gradients, method, bias)


def _layer_map(activations: Tensor, gradients: Tensor, method: Method, bias: Tensor | None) -> Tensor:
    """:func:`gradient_cam_layer_map` on working-precision tensors."""
    if method == "gradcam":
        weights = gradients.mean(dim=(-2, -1))  # Eq. 2
        return torch.einsum("bk,bkhw->bhw", weights, activations)  # Eq. 3 without ReLU
    if method == "gradcam++":
        squared = gradients.square()
        denominator = 2.0 * squared + activations.sum(dim=(-2, -1), keepdim=True) * squared * gradients
        alpha = squared / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        weights = (alpha * gradients.relu()).sum(dim=(-2, -1))
        return torch.einsum("bk,bkhw->bhw", weights, activations)
    if method == "layercam":
        return (gradients.relu() * activations).sum(dim=1)  # Eq. 4-5 without the outer ReLU
    if method == "hirescam":  # Draelos & Carin 2020: the element-wise product, no ReLU on g
        return (gradients * activations).sum(dim=1)
    if method == "xgradcam":  # Fu et al. 2020: g weighted by the activation's share of its channel
        total = activations.sum(dim=(-2, -1), keepdim=True)
        share = activations / torch.where(total != 0, total, torch.ones_like(total))
        weights = torch.where(total[..., 0, 0] != 0, (share * gradients).sum(dim=(-2, -1)), 0.0)
        return torch.einsum("bk,bkhw->bhw", weights, activations)
    if method == "fullgrad":
        if bias is None:
            return _fullgrad_term(gradients, activations)
        return _fullgrad_term(gradients, bias.view(1, -1, *([1] * (gradients.ndim - 2))))
    raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
