"""Deletion and insertion curves of the scored probes' maps (:mod:`cama.metrics.deletion`), next to a
random map's and a centred prior's: what :class:`~cama.map_scoring.ProbeScorer` and
:class:`~cama.map_scoring.EpisodeScorer` add to their scores when ``deletion_steps`` is not 0.

* :class:`CurveOptions` -- the budget (the first ``samples`` probes of an epoch, ``steps`` steps) and
  the baseline, with its cost in images scored;
* :meth:`CurveOptions.draws` -- the random maps and the noise fields of the probes at given places of
  the probe list, each place's from a generator of its own seeded with ``(seed, place)``
  (:meth:`CurveOptions.generator`), so that a probe gets the same draws whichever process, chunk or
  epoch scores it and whichever places are drawn with it, and a call draws only the places it is given;
* :func:`ranking_scores` -- the scores of a ranking probe: the cosine similarity to its reference,
  and the AP and the reciprocal rank ``1 / r`` of its first true match over the whole gallery
  (:func:`cama.metrics.ranking.ranked_matches`, the ranking of :func:`cama.metrics.evaluate_rank`),
  only the probe changing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cama.metrics.deletion import REFERENCE_MAPS, check_steps, perturbation_curves, reference_maps
from cama.metrics.distances import pairwise_distance
from cama.metrics.imputation import check_baseline
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
        seed: of the random maps and of the noisy linear imputation's noise (>= 0; each place's
            generator is seeded with ``(seed, place)``, :meth:`generator`).
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
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
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

    def generator(self, place: int) -> torch.Generator:
        """The generator of the probe at ``place``: seeded with ``(seed, place)`` (NumPy's
        ``SeedSequence(seed, spawn_key=(place,))``, one independent stream per place)."""
        state = np.random.SeedSequence(self.seed, spawn_key=(int(place),)).generate_state(1, np.uint64)
        return torch.Generator().manual_seed(int(state[0]))

    def draws(
        self, places: Tensor, grid: Sequence[int], image_shape: Sequence[int], device: torch.device | str
    ) -> tuple[Tensor, Tensor | None]:
        """The random maps ``[P, h, w]`` (at the methods' map resolution ``grid``) and the noise fields
        ``[P, C, H, W]`` of the probes at ``places`` (``0 <= place < samples``), on ``device``; the noise
        only for ``"noisy_linear"``, the one baseline that uses it (None otherwise).

        Each place draws from its own :meth:`generator`, its random map first, then its noise field:
        a place's draws are the same drawn alone or among others, every epoch, and a call draws only
        the ``P`` places it is given (not the whole budget: ``explain.py``'s curves of ``n`` queries,
        scored in chunks, draw ``n`` maps, not ``n`` per chunk). These draws differ from those of the
        earlier versions, which drew the whole budget from one generator seeded with ``seed``."""
        places = places.cpu().long()
        if places.numel() and (int(places.min()) < 0 or int(places.max()) >= self.samples):
            raise ValueError(f"places must be in [0, {self.samples}) (samples), got {places.tolist()}")
        noisy = self.baseline == "noisy_linear"
        maps, noise = [torch.empty(0, *grid)], [torch.empty(0, *image_shape)]
        for place in places.tolist():  # one generator per place: a torch draw takes one generator
            generator = self.generator(place)
            maps.append(reference_maps("random", 1, grid, generator))
            if noisy:
                noise.append(torch.randn(1, *image_shape, generator=generator))
        return torch.cat(maps).to(device), torch.cat(noise).to(device) if noisy else None

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
