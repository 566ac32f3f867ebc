"""What replaces the pixels a deletion / insertion curve removes (:mod:`cama.metrics.deletion`).

Three baselines, chosen by name (:data:`BASELINES`):

* ``"blur"`` -- the pixel of a Gaussian blur of the image (RISE, Petsiuk et al. 2018, Sec. 4.1, the
  baseline of its insertion curve): a separable kernel of standard deviation ``sigma`` (default
  ``max(H, W) / 45`` pixels, RISE's ``sigma = 5`` at 224 pixels), cut at ``3 sigma``, the border
  replicated (:func:`gaussian_blur`);
* ``"mean"`` -- 0 in the network's input space: the data set's mean colour, since every data module
  of the project normalises its images with the data's (ImageNet's) mean and standard deviation.
  Not the image's own mean colour, which would keep its colours (a re-ID person's clothing) in the
  fully removed image;
* ``"noisy_linear"`` -- ROAD's noisy linear imputation (Rong et al., "A Consistent and Efficient
  Evaluation Strategy for Attribution Methods", ICML 2022, Sec. 4; :func:`noisy_linear_imputation`):
  every removed pixel is the weighted mean of its 8 neighbours, the direct ones weighing 1/6 and the
  diagonal ones 1/12 (renormalised over the neighbours inside the image), which for all removed
  pixels together is a sparse linear system whose known pixels are fixed; then Gaussian noise of
  standard deviation ``noise_std`` (ROAD's 0.01, in input units) is added to the imputed pixels.
  Removing a region therefore leaves a smooth fill that carries no edge of the removed shape, so
  the model does not see an out-of-distribution mask (ROAD Sec. 3).

**The solve.** For the removed set ``R`` of one image and channel, with ``w_ij`` the neighbour
weights and ``s_i = sum_{j in image} w_ij`` (1 inside, less at the border), the system is

    s_i u_i - sum_{j in R} w_ij u_j = sum_{j not in R} w_ij x_j        for every i in R,

symmetric and positive definite as soon as one pixel is known (every removed region then touches a
known pixel). It is solved matrix-free on the whole batch at once -- the neighbour sums are one
depthwise 3 x 3 convolution with zero padding -- by conjugate gradients with the Jacobi
preconditioner ``1 / s_i``, started from the mean of the image's known pixels. The iteration stops
when every removed pixel of every image and channel satisfies its equation to within ``tol``
(default ``1e-5``, in input units: the pixel differs from its neighbours' weighted mean by at most
``tol / s_i``), or after ``max_iter`` iterations (default ``8 max(H, W) + 64``; CG needs about
``max(H, W)`` on the grid's hardest regions). When every pixel is removed there is no known pixel
and the start, 0 (the data's mean colour, as ``"mean"``), is kept. ``tests/test_deletion_insertion.py``
checks the solve against a dense solve of the same system.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cama.explain.precision import autocast_off, work_dtype

__all__ = [
    "BASELINES", "ROAD_WEIGHTS", "check_baseline", "fill_removed", "gaussian_blur", "noisy_linear_imputation",
]

BASELINES: tuple[str, ...] = ("blur", "mean", "noisy_linear")

#: ROAD's neighbour weights (Sec. 4): direct neighbours 1/6, diagonal ones 1/12 (they sum to 1)
ROAD_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def check_baseline(baseline: str) -> str:
    """``baseline`` if it is one of :data:`BASELINES`, else a ValueError naming them."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {list(BASELINES)}, got {baseline!r}")
    return baseline


def gaussian_blur(images: Tensor, sigma: float | None = None) -> Tensor:
    """``[B, C, H, W]`` images blurred by a separable Gaussian of standard deviation ``sigma`` pixels
    (default ``max(H, W) / 45``), cut at ``3 sigma``, the border replicated; in the working dtype."""
    height, width = images.shape[-2:]
    sigma = max(height, width) / 45.0 if sigma is None else float(sigma)
    if sigma <= 0:
        raise ValueError(f"blur sigma must be > 0, got {sigma}")
    radius = max(1, math.ceil(3 * sigma))
    dtype = work_dtype(images.dtype)
    with autocast_off(images.device.type):
        x = torch.arange(-radius, radius + 1, device=images.device, dtype=dtype)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        kernel = kernel / kernel.sum()
        channels = images.shape[1]
        work = images.to(dtype)
        rows = F.pad(work, (0, 0, radius, radius), mode="replicate")
        work = F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
        cols = F.pad(work, (radius, radius, 0, 0), mode="replicate")
        return F.conv2d(cols, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


def _neighbour_sum(x: Tensor) -> Tensor:
    """``sum_j w_ij x_j`` over the 8 neighbours inside the image (:data:`ROAD_WEIGHTS`), every channel
    alike: the separable ``[1, 2, 1] x [1, 2, 1] / 12`` less its centre ``4 / 12``, zero outside the
    image (shifted sums: several times faster than a depthwise convolution on CPU)."""
    padded = F.pad(x, (1, 1, 1, 1))
    rows = padded[..., :-2, :] + 2 * padded[..., 1:-1, :] + padded[..., 2:, :]
    return (rows[..., :-2] + 2 * rows[..., 1:-1] + rows[..., 2:] - 4 * x) / 12


def _per_system(x: Tensor) -> Tensor:
    """Sum over the pixels of each (image, channel) system, ``[N, C, 1, 1]``."""
    return x.sum(dim=(2, 3), keepdim=True)


def noisy_linear_imputation(
    images: Tensor,
    removed: Tensor,
    noise: Tensor | None = None,
    noise_std: float = 0.01,
    tol: float = 1e-5,
    max_iter: int | None = None,
) -> Tensor:
    """ROAD's noisy linear imputation (module docstring) of the ``removed`` pixels of ``images``.

    Args:
        images: ``[N, C, H, W]``.
        removed: ``[N, H, W]`` (or ``[N, 1, H, W]``) bool, the pixels to impute.
        noise: ``[N, C, H, W]`` standard normal draws (e.g. from a seeded generator); None: no noise.
        noise_std: the standard deviation the noise is scaled to, in input units.
        tol, max_iter: the conjugate-gradient stopping rule (module docstring).

    Returns:
        ``[N, C, H, W]`` in the working dtype: the known pixels unchanged, the removed ones imputed.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
    mask = removed.reshape(images.shape[0], 1, *images.shape[-2:])
    height, width = images.shape[-2:]
    max_iter = 8 * max(height, width) + 64 if max_iter is None else int(max_iter)
    dtype = work_dtype(images.dtype)
    with autocast_off(images.device.type), torch.no_grad():
        x = images.to(dtype)
        m = mask.to(dtype)
        known = 1.0 - m
        s = _neighbour_sum(torch.ones(1, 1, height, width, dtype=dtype, device=x.device))
        inverse_s = torch.where(s > 0, 1.0 / s.clamp_min(1e-12), torch.zeros_like(s))

        def apply(v: Tensor) -> Tensor:  # the system's matrix, for v zero outside the removed pixels
            return m * (s * v - _neighbour_sum(v))

        b = m * _neighbour_sum(known * x)
        count = _per_system(known.expand_as(x))
        start = _per_system(known * x) / count.clamp_min(1.0)  # the mean of the known pixels; 0 if none
        u = m * start
        r = b - apply(u)
        p = inverse_s * r
        rz = _per_system(r * p)
        for _ in range(max_iter):  # r, p stay zero outside the removed pixels
            if float(r.abs().amax()) <= tol:
                break
            q = apply(p)
            curvature = _per_system(p * q)
            alpha = torch.where(curvature > 0, rz / curvature.clamp_min(1e-30), torch.zeros_like(rz))
            u.add_(alpha * p)
            r.sub_(alpha * q)
            z = inverse_s * r
            rz_next = _per_system(r * z)
            beta = torch.where(rz > 0, rz_next / rz.clamp_min(1e-30), torch.zeros_like(rz))
            p = z.add_(beta * p)
            rz = rz_next
        if noise is not None:
            u = u + noise_std * noise.to(dtype)
        return known * x + m * u


def fill_removed(
    images: Tensor,
    removed: Tensor,
    baseline: str,
    blurred: Tensor | None = None,
    noise: Tensor | None = None,
    noise_std: float = 0.01,
) -> Tensor:
    """``images`` ``[N, C, H, W]`` with the ``removed`` ``[N, H, W]`` pixels replaced by ``baseline``'s
    (module docstring); ``blurred``: the images' :func:`gaussian_blur` (``"blur"``), ``noise``:
    ``[N, C, H, W]`` standard normal draws (``"noisy_linear"``). In the working dtype."""
    check_baseline(baseline)
    if baseline == "noisy_linear":
        return noisy_linear_imputation(images, removed, noise, noise_std)
    dtype = work_dtype(images.dtype)
    mask = removed.reshape(images.shape[0], 1, *images.shape[-2:])
    if baseline == "blur":
        fill = gaussian_blur(images) if blurred is None else blurred.to(dtype)
        return torch.where(mask, fill, images.to(dtype))
    return images.to(dtype).masked_fill(mask, 0.0)
