"""Max-sensitivity of explanation maps (Yeh et al. 2019): how far a map moves under small input noise.

Yeh, Hsieh, Suggala, Inouye and Ravikumar, "On the (In)fidelity and Sensitivity of Explanations",
NeurIPS 2019, Sec. 3 (the definition of ``SENS_MAX``)::

    SENS_MAX(Phi, f, x, r) = max_{||y - x|| <= r} ||Phi(f, y) - Phi(f, x)||

estimated, as the paper's experiments and Quantus do, by Monte Carlo: ``samples`` points ``y`` drawn
uniformly in the ball around ``x``, and the largest difference among them. The estimate is a lower
bound of the true maximum, and it can only grow with more samples of the same generator (the first
``S`` draws of a longer run are those of a run of ``S``).

The choices, stated once (docs/explanations.md#max-sensitivity):

* the ball is the **L-inf** ball of radius ``radius``: every input element moves by an independent
  ``u ~ U[-radius, radius]`` (the authors' code, ``sample_eps_Inf``; Quantus's uniform noise). With
  ``std`` (the inputs normalised as ``(picture - mean) / std``) the radius is on the ``[0, 1]``
  picture scale, the convention of :func:`cama.metrics.faithfulness.mask_images`: the noise is added
  to the de-normalised picture, so the network input moves by ``u / std`` per channel (the mean
  cancels). Without it the radius is in the units of ``images``. No clipping to ``[0, 1]``;
* the distance of two maps is the **Frobenius** norm of their difference (the L2 norm over every
  element of a map);
* ``normalise=True`` (the default) divides it by the Frobenius norm of the unperturbed map
  ``||Phi(f, x)||``, as the authors' code does: a relative change, comparable between methods whose
  maps live on different scales (a raw RAM sums to a similarity, a gradient CAM lies in ``[0, 1]``).
  An image whose map is zero and moves has no relative change: NaN; a map that does not move gives 0.

Batched: the ``samples x B`` perturbed images are one flat batch, row ``s B + b`` the ``s``-th sample
of image ``b``, handed to ``explain_fn`` in chunks of at most ``chunk_size`` rows. The noise is drawn
one sample at a time (a ``[B, ...]`` draw per sample, in sample order), whatever the chunk size, so
the chunk size never changes the result. The noise and the differences are computed in float32
(:func:`cama.explain.precision.work_dtype`: float64 stays float64).

Knows no model: ``explain_fn(perturbed, rows)`` maps a batch of images to a batch of maps, with
``rows`` the index (into ``images``) of the image each perturbed row comes from, so that it can
explain each row against that image's own reference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from .precision import work_dtype

__all__ = ["max_sensitivity"]

Maps = Tensor | Mapping[str, Tensor]  # what explain_fn returns


def _explain(explain_fn: Callable[[Tensor, Tensor], Maps], images: Tensor, rows: Tensor, dtype: torch.dtype
             ) -> dict[str | None, Tensor]:
    """``explain_fn`` of one chunk as ``{name: maps [N, -1]}`` in ``dtype`` (a bare tensor: name ``None``)."""
    given = explain_fn(images, rows)
    out = {}
    for name, maps in ({None: given} if isinstance(given, Tensor) else given).items():
        if maps.shape[0] != images.shape[0]:
            raise ValueError(f"explain_fn gave {maps.shape[0]} maps{f' ({name})' if name else ''} "
                             f"for {images.shape[0]} images")
        out[name] = maps.detach().reshape(maps.shape[0], -1).to(dtype)
    return out


def max_sensitivity(
    explain_fn: Callable[[Tensor, Tensor], Maps],
    images: Tensor,
    radius: float,
    samples: int,
    generator: torch.Generator | None = None,
    std: Sequence[float] | None = None,
    normalise: bool = True,
    chunk_size: int = 64,
) -> Tensor | dict[str, Tensor]:
    """Monte-Carlo max-sensitivity of each image's map (Yeh et al. 2019, ``SENS_MAX``; module docstring).

    Args:
        explain_fn: ``explain_fn(images [N, ...], rows [N] long) -> maps [N, ...]`` (any trailing
            shape), or a mapping ``{name: maps}`` to score several methods on one pass; ``rows[i]``
            is the index into ``images`` of the image row ``i`` perturbs. Called once on the
            unperturbed images (``rows = 0 .. B-1``) and on the perturbed ones, in chunks.
        images: ``[B, C, ...]`` inputs (normalised as ``(picture - mean) / std`` when ``std`` is given).
        radius: the L-inf radius, ``>= 0``: on the ``[0, 1]`` picture scale with ``std``, else in the
            units of ``images``.
        samples: Monte-Carlo samples per image, ``>= 1``.
        generator: the generator the noise is drawn from, on ``images``' device (``None``: torch's
            default one).
        std: the per-channel standard deviations of the inputs' normalisation (e.g. a data
            module's ``std``, :class:`cama.protocols.ShowsImages`), one positive value per channel.
        normalise: divide by the norm of the unperturbed map (relative change).
        chunk_size: most rows per ``explain_fn`` call, ``>= 1``.

    Returns:
        ``[B]`` float32 sensitivities (float64 for float64 images): a tensor, or a dict of them
        with ``explain_fn``'s names when it returns a mapping.
    """
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty [B, C, ...] batch, got shape {tuple(images.shape)}")
    if not (radius >= 0 and radius < float("inf")):
        raise ValueError(f"radius must be a finite number >= 0, got {radius}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dtype = work_dtype(images.dtype)
    work = images.detach().to(dtype)
    count = work.shape[0]
    index = torch.arange(count, device=work.device)
    scale = torch.as_tensor(radius, dtype=dtype, device=work.device)
    if std is not None:
        std_t = torch.as_tensor(std, dtype=dtype, device=work.device)
        if std_t.numel() != work.shape[1] or not bool((std_t > 0).all()):
            raise ValueError(f"std must hold one positive value per channel ({work.shape[1]}), "
                             f"got {list(std)}")
        scale = scale / std_t.view(1, -1, *([1] * (work.ndim - 2)))  # picture noise u -> input noise u / std

    base: dict[str | None, list[Tensor]] = {}
    for chunk, rows in zip(work.split(chunk_size), index.split(chunk_size)):
        for name, maps in _explain(explain_fn, chunk, rows, dtype).items():
            base.setdefault(name, []).append(maps)
    unperturbed = {name: torch.cat(parts) for name, parts in base.items()}
    largest = {name: torch.zeros(count, dtype=dtype, device=work.device) for name in unperturbed}

    per_group = max(1, chunk_size // count)  # whole samples of every image at once, when they fit
    for first in range(0, samples, per_group):
        drawn = min(per_group, samples - first)
        # one [B, ...] draw per sample, in sample order: the same numbers whatever chunk_size is
        noise = torch.stack([
            torch.rand(work.shape, generator=generator, dtype=dtype, device=work.device) for _ in range(drawn)
        ])
        perturbed = (work + (2 * noise - 1) * scale).flatten(0, 1)  # row s B + b: sample s of image b
        sources = index.repeat(drawn)
        for chunk, source in zip(perturbed.split(chunk_size), sources.split(chunk_size)):
            for name, maps in _explain(explain_fn, chunk, source, dtype).items():
                if name not in largest:
                    raise ValueError(f"explain_fn gave {name!r} on perturbed images but not on the originals")
                distance = torch.linalg.vector_norm(maps - unperturbed[name][source], dim=1)
                largest[name] = largest[name].scatter_reduce(0, source, distance, reduce="amax")

    out = {}
    for name, value in largest.items():
        if normalise:  # max_s d_s / ||Phi(x)|| = max_s (d_s / ||Phi(x)||): one division at the end
            norm = torch.linalg.vector_norm(unperturbed[name], dim=1)
            value = torch.where(value == 0, value, value / torch.where(norm > 0, norm, torch.nan))
        out[name] = value
    return out[None] if None in out else out
