"""The gradient-free CAMs of :func:`cama.explain.gradient_cam`: Score-CAM, Ablation-CAM and EigenCAM.

Each weighs a hooked layer's channels ``A^k`` ``[K, h, w]`` without a gradient; the layer's raw map
is ``sum_k w_k A^k`` (EigenCAM: a projection), which then goes through the layerization of the
gradient methods (``postprocess``, summed over the layers, min-max normalised; ``layer_norm``).
The equations in our words: ``docs/explanations.md#the-gradient-free-cams``.

* **Score-CAM** (Wang et al., CVPR-W 2020, Eq. 4-8): each channel upsampled to the image size and
  min-max normalised on its own is a mask ``M^k`` (a constant channel gives the zero mask); the
  score ``s_k`` of the image masked by ``M^k`` (:func:`cama.explain.masking.mask_images`: the
  ``[0, 1]`` picture when ``mean``/``std`` are given, else the network input as it is, as
  Score-CAM's reference code masks its normalised input); ``w = softmax_k(s_k)``. The paper's
  baseline score ``f(X_b)`` is one constant per image, which the softmax removes.
* **Ablation-CAM** (Desai & Ramaswamy, WACV 2020, Eq. 3): ``w_k = (y - y_k) / y``, ``y`` the score,
  ``y_k`` the score with channel ``k`` of the layer's output set to 0 (a forward hook replaces the
  layer's output by the ablated copy; what bypasses the layer, such as a skip connection around
  it, sees the image as it is). ``y = 0`` leaves the ratio undefined: there ``w_k = y - y_k`` (the
  unnormalised drop). For ``y < 0`` the division flips the map's sign, as the paper's formula does
  (it was written for positive class scores): it then shows the channels that make ``y`` negative.
  A ``reshape`` (a transformer's tokens) must pick entries of the output, as
  :class:`cama.backbones.vit.TokenGrid` does: the entries ablated for channel ``k`` are those that
  ``reshape`` puts into ``A^k`` (found by its vector-Jacobian product).
* **EigenCAM** (Muhammad & Yeasin, IJCNN 2020, Eq. 2-3): the projection of the activations, as the
  matrix ``O`` ``[h w, K]`` (not centred, as the paper writes it), on its first right singular
  vector ``v_1``: ``O v_1``. No gradient, no score, no target. The sign of a singular vector is
  arbitrary, so the map's sign is chosen so that it correlates positively with the channel sum
  ``sum_k A^k`` (Pearson covariance over the positions; where it is 0, the sign of their inner
  product; where that is 0 too, as given).

Score-CAM and Ablation-CAM run the model once per (image, channel) pair and layer: the pairs of the
whole batch are flattened into one dimension and forwarded ``forward_batch_size`` at a time. The
scores need a :class:`~cama.explain.gradient_scores.RowScore` (``logit_score``, ``similarity_score``)
to score each flattened row against its own image's class or reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._common import combine, full_precision
from .gradient_scores import RowScore
from .hooks import check_scores, model_state_guard, record_activations, single_outputs
from .masking import mask_images
from .render import postprocess

__all__ = [
    "GRADIENT_FREE_METHODS",
    "ablation_cam_weights",
    "eigen_cam_layer_map",
    "gradient_free_layer_maps",
    "score_cam_weights",
]

GRADIENT_FREE_METHODS: tuple[str, ...] = ("scorecam", "ablationcam", "eigencam")


def score_cam_weights(scores: Tensor) -> Tensor:
    """Score-CAM's channel weights: ``softmax_k(s_k)`` of the masked images' scores ``[B, K]``."""
    with full_precision(scores) as (scores,):
        return torch.softmax(scores, dim=1)


def ablation_cam_weights(scores: Tensor, ablated: Tensor) -> Tensor:
    """Ablation-CAM's ``(y - y_k) / y`` ``[B, K]`` from ``y`` ``[B]`` and ``y_k`` ``[B, K]``; ``y - y_k``
    where ``y = 0``."""
    with full_precision(ablated, scores) as (ablated, scores):
        scale = torch.where(scores != 0, scores, torch.ones_like(scores))
        return (scores[:, None] - ablated) / scale[:, None]


def eigen_cam_layer_map(activations: Tensor) -> Tensor:
    """EigenCAM's raw map ``[B, h, w]``: each image's ``[h w, K]`` activations projected on their first
    right singular vector, the sign making it correlate positively with the channel sum (module
    docstring); one batched ``torch.linalg.svd``."""
    with full_precision(activations) as (activations,):
        batch, _, height, width = activations.shape
        matrix = activations.flatten(2).transpose(1, 2)  # [B, h w, K]
        _, _, vh = torch.linalg.svd(matrix, full_matrices=False)
        projection = (matrix @ vh[:, 0, :, None])[..., 0]  # [B, h w]
        channel_sum = matrix.sum(dim=2)
        centred = projection - projection.mean(dim=1, keepdim=True)
        covariance = (centred * (channel_sum - channel_sum.mean(dim=1, keepdim=True))).sum(dim=1)
        sign = torch.sign(covariance)
        sign = torch.where(sign == 0, torch.sign((projection * channel_sum).sum(dim=1)), sign)
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        return (projection * sign[:, None]).view(batch, height, width)


def _weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """``sum_k w_k A^k`` ``[B, h, w]`` in the working precision of the activations."""
    with full_precision(activations, weights) as (activations, weights):
        return combine(weights, activations)


def _row_chunks(total: int, size: int, device: torch.device) -> Iterator[Tensor]:
    """The flattened (image, channel) rows ``0 .. total - 1``, ``size`` at a time."""
    for start in range(0, total, size):
        yield torch.arange(start, min(start + size, total), device=device)


def _score_rows(score_fn: RowScore, rows: Tensor, output: Any) -> Tensor:
    """The scores ``[N]`` of a forward of ``N`` rows, row ``r`` a version of image ``rows[r]``."""
    return check_scores(score_fn.rows(rows)(output), rows.numel()).detach()


def _masked_scores(
    model: nn.Module, images: Tensor, score_fn: RowScore, activations: Tensor, forward_batch_size: int,
    mean: Sequence[float] | None, std: Sequence[float] | None,
) -> Tensor:
    """Score-CAM's ``s_k`` ``[B, K]``: the score of each image masked by each of its channels."""
    count, channels = activations.shape[:2]
    flat = activations.flatten(0, 1)  # [B K, h, w], row b K + k
    size = tuple(images.shape[-2:])
    scores = []
    for rows in _row_chunks(count * channels, forward_batch_size, images.device):
        image_rows = rows // channels
        masks = postprocess(flat[rows.to(flat.device)], size, rectify=False)  # Eq. 5: upsample, min-max
        masked = mask_images(images[image_rows], masks, mean, std)
        scores.append(_score_rows(score_fn, image_rows, model(masked)))
    return torch.cat(scores).view(count, channels)


def _ablation_keep(output: Tensor, channels: Tensor, reshape: Callable[[Tensor], Tensor] | None) -> Tensor:
    """1 where row ``r`` of the layer's output is kept, 0 on the entries of its channel ``channels[r]``."""
    rows = torch.arange(output.shape[0], device=output.device)
    if reshape is None:
        keep = torch.ones(output.shape[:2], dtype=output.dtype, device=output.device)
        keep[rows, channels] = 0
        return keep.view(*keep.shape, *([1] * (output.ndim - 2)))
    with torch.enable_grad():  # the entries that feed channel k: reshape's vector-Jacobian product
        probe = torch.zeros_like(output).requires_grad_(True)
        folded = reshape(probe)
        select = torch.zeros_like(folded)
        select[rows, channels] = 1
        (feeds,) = torch.autograd.grad(folded, probe, select)
    return (feeds == 0).to(output.dtype)


def _ablated_scores(
    model: nn.Module, images: Tensor, score_fn: RowScore, layer: nn.Module, channels: int,
    forward_batch_size: int, reshape: Callable[[Tensor], Tensor] | None,
) -> Tensor:
    """Ablation-CAM's ``y_k`` ``[B, K]``: the score with channel ``k`` of ``layer``'s output set to 0."""
    count = images.shape[0]
    scores = []
    for rows in _row_chunks(count * channels, forward_batch_size, images.device):
        image_rows, ablated = rows // channels, rows % channels
        calls: list[Tensor] = []

        def ablate(module: nn.Module, inputs: Any, output: Any, ablated: Tensor = ablated) -> Tensor:
            calls.append(output)
            return output * _ablation_keep(output, ablated.to(output.device), reshape)

        handle = layer.register_forward_hook(ablate)
        try:
            output = model(images[image_rows])
        finally:
            handle.remove()
        single_outputs([layer], [calls])
        scores.append(_score_rows(score_fn, image_rows, output))
    return torch.cat(scores).view(count, channels)


def gradient_free_layer_maps(
    model: nn.Module,
    images: Tensor,
    score_fn: Callable[[Any], Tensor] | None,
    layers: Sequence[nn.Module],
    method: str,
    eval_mode: bool = True,
    reshape: Callable[[Tensor], Tensor] | None = None,
    normalize: bool = True,
    forward_batch_size: int = 64,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> list[Tensor]:
    """The per-layer maps ``[B, H, W]`` of a gradient-free method, each through :func:`postprocess`
    (min-max normalised with ``normalize``): the terms of :func:`cama.explain.gradient_cam`'s
    layerization sum. The model state guarantees are :func:`cama.explain.gradient_cam`'s; no gradient
    of the model is computed."""
    if method not in GRADIENT_FREE_METHODS:
        raise ValueError(f"method must be one of {GRADIENT_FREE_METHODS}, got {method!r}")
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
    if type(forward_batch_size) is not int or forward_batch_size < 1:
        raise ValueError(f"forward_batch_size must be a positive int, got {forward_batch_size!r}")
    if method != "eigencam" and not isinstance(score_fn, RowScore):
        raise ValueError(
            f"{method} scores each image's masked or ablated copies against the image's own target: "
            f"score_fn must be a RowScore (cama.explain.logit_score / similarity_score), got {score_fn!r}"
        )
    size = tuple(images.shape[-2:])
    maps = []
    with torch.inference_mode(False), torch.no_grad(), model_state_guard(model, eval_mode):
        work = images.detach().clone()  # a normal tensor, also from a validation loop's inference mode
        ablation = method == "ablationcam"
        activations, scores = record_activations(model, work, layers, score_fn if ablation else None, reshape)
        for layer, activation in zip(layers, activations):
            if method == "eigencam":
                raw = eigen_cam_layer_map(activation)
            elif method == "scorecam":
                masked = _masked_scores(model, work, score_fn, activation, forward_batch_size, mean, std)
                raw = _weighted_sum(score_cam_weights(masked), activation)
            else:
                assert scores is not None
                ablated = _ablated_scores(model, work, score_fn, layer, activation.shape[1],
                                          forward_batch_size, reshape)
                raw = _weighted_sum(ablation_cam_weights(scores, ablated), activation)
            maps.append(postprocess(raw, size, normalize=normalize))
    return maps
