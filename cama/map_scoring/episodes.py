"""Scoring the maps of few-shot queries: the work of the few-shot explanation callback, without Lightning.

:class:`EpisodeScorer` explains every query of an episode against its predicted class's prototype
(``cama.viz.episodes.episode_maps``: dist-cam Eq. 4-6, fam Eq. 11-13, cama-ram Eq. 10, the gradient
CAMs) and scores the maps into one :class:`~cama.metrics.map_scores.MapScores`
(``docs/map-scores.md``): the boxes and the energy against the ground truth, and AD / IC (fam
Eq. 21-22) of the first ``num_faithfulness_samples`` queries of an epoch, whose masked images are
embedded in one forward (:func:`~cama.map_scoring.features.masked_embeddings`), and the deletion /
insertion curves (:class:`~cama.map_scoring.curves.CurveOptions`) of the first ``curves.samples``
queries of an epoch, every method next to a random map and a centred prior, the score being the
softmax probability of the predicted class over the episode's prototypes. The caller decides
which episodes to score and where the numbers go; it gets the maps back for its pictures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from cama.map_scoring.curves import CurveOptions
from cama.map_scoring.features import masked_embeddings
from cama.metrics.boxes import DEFAULT_TAUS
from cama.metrics.map_scores import MapScores
from cama.protocols import EpisodeTask
from cama.references import EpisodeReferences
from cama.viz import ModelExplainer
from cama.viz.episodes import episode_maps

__all__ = ["EpisodeScorer"]


class EpisodeScorer:
    """Every method's maps of the queries of episodes, scored into one :class:`MapScores` per epoch.

    Args:
        methods: the map methods (``cama.viz.episodes.FEW_SHOT_METHODS``).
        num_faithfulness_samples: queries of an epoch scored with AD / IC, the first ones (0: off).
        tau, taus, iou_threshold: the box protocol (``docs/map-scores.md#box-from-a-map``).
        curves: the deletion / insertion curves of the first queries of an epoch (default: off).
    """

    def __init__(
        self,
        methods: Sequence[str],
        num_faithfulness_samples: int,
        tau: float = 0.2,
        taus: Sequence[float] | None = None,
        iou_threshold: float = 0.5,
        curves: CurveOptions | None = None,
    ) -> None:
        if num_faithfulness_samples < 0:
            raise ValueError(f"num_faithfulness_samples must be >= 0, got {num_faithfulness_samples}")
        self.methods = tuple(methods)
        self.num_faithfulness_samples = int(num_faithfulness_samples)
        self.tau = float(tau)
        self.taus = tuple(taus) if taus is not None else DEFAULT_TAUS
        self.iou_threshold = float(iou_threshold)
        self.faithfulness_left = 0
        self.faithfulness = True
        self.curves = curves if curves is not None else CurveOptions(samples=0)
        self.curves_done = 0
        self._scores: tuple[Any, MapScores] | None = None

    def perturbed_forwards(self) -> int:
        """Forwards of perturbed queries AD / IC and the curves cost in an epoch (what
        ``start_epoch(faithfulness=False)`` saves): one per method and AD / IC query, and
        :meth:`CurveOptions.images_scored` per query with curves (the methods and the two reference maps)."""
        methods = len(self.methods)
        curves = self.curves.samples * self.curves.images_scored(methods + 2)
        return self.num_faithfulness_samples * methods + curves

    def start_epoch(self, faithfulness: bool = True) -> None:
        """Forget the last epoch's scores; the AD / IC budget starts again (none this epoch, and no
        curves, with ``faithfulness=False``: their metrics are then skipped by :meth:`compute`)."""
        if self._scores is not None:
            self._scores[1].reset()
        self.faithfulness = faithfulness
        self.faithfulness_left = self.num_faithfulness_samples if faithfulness else 0
        self.curves_done = 0 if faithfulness else self.curves.samples

    def compute(self, prefix: str) -> dict[str, Tensor]:
        """The epoch's scores as ``<prefix>/<method>/<name>`` (a collective under DDP: every process
        calls it), then reset; empty when nothing was scored."""
        if self._scores is None:
            return {}
        skip = () if self.faithfulness else ("faith", "curves")
        results = self._scores[1].compute_named(prefix, skip)
        self._scores[1].reset()
        return results

    def map_scores(self, image_size: tuple[int, int], has_box: bool, has_mask: bool, device: Any) -> MapScores:
        """The score group for these inputs, built once (kept while the inputs keep their shapes)."""
        key = (image_size, has_box, has_mask, str(device))
        if self._scores is None or self._scores[0] != key:
            scores = MapScores(
                self.methods, image_size, has_box, has_mask,
                faithfulness_names=self.methods if self.num_faithfulness_samples else (),
                tau=self.tau, taus=self.taus, iou_threshold=self.iou_threshold,
                curve_names=self.curves.names(self.methods),
            )
            self._scores = (key, scores.to(device))
        return self._scores[1]

    @torch.no_grad()
    def score(
        self,
        task: EpisodeTask,
        explainer: ModelExplainer,
        batch: dict[str, Tensor],
        refs: EpisodeReferences,
        embed: Callable[[Tensor], Tensor],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> dict[str, Tensor]:
        """Score one episode; returns each method's maps of its queries, ``[Q, H, W]``.

        ``batch``: the episode (``image`` ``[B, 3, H, W]`` and, where the data has them, ``box`` and
        ``mask``), on the model's device; ``refs``: ``task.episode_references`` of it; ``embed``:
        images -> the model's embeddings ``[N, D]`` (of the masked queries of AD / IC, scored by
        ``task.logits`` against the episode's prototypes); ``mean`` / ``std``: the data's
        normalisation (masking fills with black).
        """
        images = batch["image"]
        size = (int(images.shape[-2]), int(images.shape[-1]))
        has_box, has_mask = "box" in batch, "mask" in batch
        scores = self.map_scores(size, has_box, has_mask, images.device)
        query_images = images[refs.query_index]
        correct = refs.prediction == refs.target
        boxes = batch["box"][refs.query_index].float() if has_box else None
        person = batch["mask"][refs.query_index].flatten(1, -3).any(dim=1) if has_mask else None
        if boxes is not None:
            scores.update_baselines(boxes, size)
        faithful = min(self.faithfulness_left, len(query_images))  # AD / IC on the first queries
        self.faithfulness_left -= faithful
        maps_of: dict[str, Tensor] = {}
        for method in self.methods:
            maps = episode_maps(
                method, explainer, query_images, refs.query_maps, refs.prototype, refs.supports, refs.metric, size
            )
            scores.update_maps(method, maps, boxes, person, correct)
            maps_of[method] = maps
        if faithful:  # the probability of the predicted class (fam Eq. 21-22), on the masked queries: one forward
            predicted = refs.prediction[:faithful, None]
            score = refs.logits[:faithful].softmax(1).gather(1, predicted)[:, 0]
            blocks = masked_embeddings(
                embed, [query_images[:faithful]] * len(maps_of),
                [maps[:faithful] for maps in maps_of.values()], mean, std,
            )
            probabilities = task.logits(torch.cat(blocks), refs.prototypes).softmax(1)
            masked_scores = probabilities.gather(1, predicted.repeat(len(maps_of), 1))[:, 0]
            for method, chunk in zip(maps_of, masked_scores.split(faithful)):
                scores.update_faithfulness(method, score, chunk)
        curved = min(self.curves.samples - self.curves_done, len(query_images)) if self.curves.active else 0
        if curved > 0:  # RISE's deletion / insertion, the probability of the predicted class
            predicted = refs.prediction[:curved, None]

            def class_score(images: Tensor, rows: Tensor) -> Tensor:
                probabilities = task.logits(embed(images), refs.prototypes).softmax(1)
                return probabilities.gather(1, predicted[rows])[:, 0]

            places = torch.arange(self.curves_done, self.curves_done + curved)
            self.curves_done += curved
            scores.update_curves(*self.curves.curves(
                query_images[:curved], {m: maps[:curved] for m, maps in maps_of.items()}, places,
                refs.query_maps.shape[-2:], class_score,
                refs.logits[:curved].softmax(1).gather(1, predicted)[:, 0],
            ))
        return maps_of
