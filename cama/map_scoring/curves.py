"""Deletion and insertion curves of the scored probes' maps (:mod:`cama.metrics.deletion`), next to a
random map's and a centred prior's: what :class:`~cama.map_scoring.ProbeScorer` and
:class:`~cama.map_scoring.EpisodeScorer` add to their scores when ``deletion_steps`` is not 0.

* :class:`CurveOptions` -- the budget (the first ``samples`` probes of an epoch, ``steps`` steps) and
  the baseline, with its cost in images scored;
* :meth:`CurveOptions.draws` -- the random maps and the noise fields of the probes at given places of
  the probe list, drawn from generators seeded with ``seed`` for the whole budget, so that a probe
  gets the same draws whichever process, chunk or epoch scores it;
* :func:`ranking_scores` -- the scores of a ranking probe: the cosine similarity to its reference,
  and the AP and the reciprocal rank ``1 / r`` of its first true match over the whole gallery
  (:func:`cama.metrics.ranking.ranked_matches`, the ranking of :func:`cama.metrics.evaluate_rank`),
  only the probe changing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cama.metrics.deletion import REFERENCE_MAPS, check_steps, perturbation_curves, reference_maps
from cama.metrics.distances import pairwise_distance
from cama.metrics.imputation import check_baseline
from cama.metrics.map_scores import MapScores
from cama.metrics.ranking import EmbeddingSet, ranked_matches

__all__ = ["RANKING_SCORES", "CurveOptions", "ranking_scores"]

#: the names of :func:`ranking_scores`' columns: the similarity (unnamed), AP, reciprocal rank
RANKING_SCORES: tuple[str, ...] = ("", "ap", "rr")


@dataclass(frozen=True)
class CurveOptions:
    """Which probes get deletion / insertion curves, and how.

    Attributes:
        samples: the probes at places ``0 .. samples - 1`` of the probe list (few-shot: of an epoch's
            queries).
        steps: the curves' steps; 0 turns the curves off.
        baseline: what replaces a removed pixel (:data:`cama.metrics.imputation.BASELINES`).
        seed: of the random maps and of the noisy linear imputation's noise.
        batch_size: perturbed images per forward.
    """

    samples: int = 8
    steps: int = 4
    baseline: str = "blur"
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ValueError(f"deletion_samples must be >= 0, got {self.samples}")
        if self.steps < 0:
            raise ValueError(f"deletion_steps must be >= 0 (0: off), got {self.steps}")
        if self.steps:
            check_steps(self.steps)
        check_baseline(self.baseline)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def active(self) -> bool:
        return self.samples > 0 and self.steps > 0

    def names(self, methods: Sequence[str]) -> tuple[str, ...]:
        """The maps with curves: the methods, then :data:`~cama.metrics.deletion.REFERENCE_MAPS`."""
        return (*methods, *REFERENCE_MAPS) if self.active else ()

    def images_scored(self, maps: int) -> int:
        """Images scored (forwards) per probe with ``maps`` maps (the methods and the two references),
        its intact score known: the fully removed image, and ``2 (steps - 1)`` per map."""
        return 1 + 2 * maps * (self.steps - 1) if self.active else 0

    def draws(
        self, places: Tensor, grid: Sequence[int], image_shape: Sequence[int], device: torch.device | str
    ) -> tuple[Tensor, Tensor | None]:
        """The random maps ``[P, h, w]`` (at the methods' map resolution ``grid``) and the noise fields
        ``[P, C, H, W]`` of the probes at ``places`` (``< samples``), on ``device``; the noise only for
        ``"noisy_linear"``, the one baseline that uses it (None otherwise)."""
        places = places.cpu().long()
        maps = reference_maps("random", self.samples, grid, torch.Generator().manual_seed(self.seed))
        if self.baseline != "noisy_linear":
            return maps[places].to(device), None
        generator = torch.Generator().manual_seed(self.seed + 1)
        noise = torch.randn(self.samples, *image_shape, generator=generator)
        return maps[places].to(device), noise[places].to(device)

    def curves(
        self,
        images: Tensor,
        maps: dict[str, Tensor],
        places: Tensor,
        grid: Sequence[int],
        score: Callable[[Tensor, Tensor], Tensor],
        intact: Tensor,
    ) -> tuple[list[str], Tensor, Tensor]:
        """The curves of the probes ``images`` ``[P, C, H, W]`` (at ``places`` of the probe list) for each
        method's maps (``maps[method]`` ``[P, H, W]``) and the two reference maps, in one
        :func:`~cama.metrics.deletion.perturbation_curves` call, ``intact`` ``[P(, S)]`` the intact
        images' scores: ``(names, deletion, insertion)``, the curves ``[P, len(names), steps + 1(, S)]``."""
        random, noise = self.draws(places, grid, images.shape[1:], images.device)
        size = images.shape[-2:]

        def upsample(m: Tensor) -> Tensor:
            return F.interpolate(m[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]

        references = {
            "random": upsample(random),
            "center_prior": reference_maps("center_prior", len(places), size).to(images.device),
        }
        named = {**{k: upsample(v) for k, v in maps.items()}, **references}
        deletion, insertion = perturbation_curves(
            images, torch.stack(list(named.values()), dim=1), score, self.steps, self.baseline,
            self.batch_size, intact=intact, noise=noise,
        )
        return list(named), deletion, insertion

    def score(
        self,
        scores: MapScores,
        images: Tensor,
        maps: dict[str, Tensor],
        places: Tensor,
        grid: Sequence[int],
        score: Callable[[Tensor, Tensor], Tensor],
        intact: Tensor,
    ) -> None:
        """:meth:`curves` into ``scores`` (``update_curves`` of each map)."""
        names, deletion, insertion = self.curves(images, maps, places, grid, score, intact)
        for j, name in enumerate(names):
            scores.update_curves(name, deletion[:, j], insertion[:, j])


def ranking_scores(
    references: Tensor, gallery: EmbeddingSet, matches: Tensor, exclude: Tensor
) -> Callable[[Tensor, Tensor], Tensor]:
    """The scores of ranking probes from their embeddings, ``(embeddings [N, D], rows [N]) -> [N, 3]``:
    the cosine similarity to ``references[rows]``, then AP and ``1 / rank`` of the first true match
    (:data:`RANKING_SCORES`) among ``gallery``'s rows, ``matches[rows]`` / ``exclude[rows]`` ``[N, G]``
    the row's true matches and the images it never ranks (the task provider's); only the probe
    changes, the gallery's embeddings are fixed."""

    def score(embedding: Tensor, rows: Tensor) -> Tensor:
        embedding = embedding.float()
        similarity = F.cosine_similarity(embedding, references[rows].float(), dim=1)
        distances = pairwise_distance(embedding, gallery.embeddings, gallery.distance)
        ap, first = ranked_matches(distances, matches[rows], exclude[rows])
        return torch.stack([similarity.double(), ap, 1.0 / first.double()], dim=1).float()

    return score
