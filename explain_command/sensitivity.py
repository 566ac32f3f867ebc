"""Max-sensitivity of ``explain.py``'s maps (``--max_sensitivity N``; Yeh et al. 2019, ``SENS_MAX``).

Each explained query is perturbed ``N`` times by uniform noise in the L-inf ball of radius
``--sensitivity_radius`` (on the ``[0, 1]`` picture scale: the images' ``std``), each method's map of
every perturbed copy is computed against the query's own fixed reference, and the largest Frobenius
change relative to the unperturbed map's norm is kept: :func:`cama.explain.max_sensitivity`, the
noise drawn from a generator seeded with ``--seed`` (docs/explanations.md#max-sensitivity). The maps
are the ones :class:`callbacks.sanity_checks.SanityChecks` scores for re-ID / retrieval
(:func:`callbacks.sanity_checks.maps_against`: the summed map against the top-ranked image, raw and
signed for the forward-only methods) and the pictures' maps for few-shot (against the prototype of
the predicted class, :func:`cama.viz.episodes.episode_maps`).

:class:`QuerySensitivity` collects the queries one by one and, at the end, scores them all in one
batched call and writes ``sensitivity.json``: the radius, the samples, the seed, the queries' names
and per method the mean over the queries with the half-width of its 95% interval
(:class:`cama.metrics.MaxSensitivity`) and each query's value (``null``: a zero map that moved).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cama.explain import max_sensitivity
from cama.metrics import MaxSensitivity
from explain_command.common import write_json

__all__ = ["SensitivityOptions", "QuerySensitivity"]


@dataclass(frozen=True)
class SensitivityOptions:
    """``samples`` noisy copies per query (0: off) in the L-inf ball of ``radius``, the noise seeded
    with ``seed``; at most ``chunk_size`` copies explained at once."""

    samples: int = 0
    radius: float = 0.02
    seed: int = 0
    chunk_size: int = 64

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ValueError(f"--max_sensitivity must be >= 0 (0: off), got {self.samples}")
        if not (0 <= self.radius < float("inf")):
            raise ValueError(f"--sensitivity_radius must be a finite number >= 0, got {self.radius}")
        if self.chunk_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.chunk_size}")

    @property
    def active(self) -> bool:
        return self.samples > 0


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


class QuerySensitivity:
    """The max-sensitivity of the explained queries (module docstring).

    Args:
        methods: the methods explained.
        options: the samples, radius, seed and chunk size.
        std: the per-channel std of the inputs' normalisation (the radius is then on the ``[0, 1]``
            picture scale); ``None``: the radius is in the input's units.
    """

    def __init__(
        self, methods: Sequence[str], options: SensitivityOptions, std: Sequence[float] | None
    ) -> None:
        self.methods = tuple(methods)
        self.options = options
        self.std = list(std) if std is not None else None
        self.names: list[str] = []
        self.images: list[Tensor] = []
        self.targets: list[tuple[Tensor, ...]] = []

    def add(self, names: Sequence[str], images: Tensor, *targets: Tensor) -> None:
        """Queries ``images`` ``[B, C, H, W]`` named ``names``, each explained against its row of every
        tensor of ``targets`` (e.g. its reference embedding ``[B, D]``)."""
        self.names += list(names)
        self.images.append(images.detach())
        self.targets.append(tuple(t.detach() for t in targets))

    def write(self, maps: Callable[..., Mapping[str, Tensor]], output: Path) -> Path | None:
        """Score the queries added and write ``<output>/sensitivity.json``; None when there is none.
        ``maps(images, *targets)`` gives each method's maps of ``images`` against the rows of targets."""
        if not self.images:
            return None
        images = torch.cat(self.images)
        targets = [torch.cat(parts) for parts in zip(*self.targets)]
        generator = torch.Generator(device=images.device).manual_seed(self.options.seed)
        values = max_sensitivity(
            lambda perturbed, rows: maps(perturbed, *(t[rows] for t in targets)), images, self.options.radius,
            self.options.samples, generator, std=self.std, chunk_size=self.options.chunk_size,
        )
        summary: dict[str, Any] = {
            "samples": self.options.samples, "radius": self.options.radius,
            "radius_scale": "[0, 1] picture" if self.std is not None else "network input",
            "seed": self.options.seed, "queries": self.names, "methods": {},
        }
        for method in self.methods:
            metric = MaxSensitivity().to(images.device)
            metric.update(values[method])
            summary["methods"][method] = {
                **{name: _number(float(v)) for name, v in metric.compute().items()},
                "per_query": [_number(v) for v in values[method].tolist()],
            }
        path = output / "sensitivity.json"
        write_json(summary, path)
        return path
