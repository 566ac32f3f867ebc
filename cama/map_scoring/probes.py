"""Every method's maps of chosen probes against their references, scored (the localization scores).

:class:`ProbeScorer` holds what to score (the methods, per branch or not, the branch overlap, how many
probes get AD / IC and the layer methods) and the box protocol, and scores chunks of probes into a
:class:`~cama.metrics.map_scores.MapScores` (built once for the data's shapes, reset by the caller
after ``compute``). What is scored is documented in ``callbacks/localization_metrics.py``; the deletion
/ insertion curves of the first probes are :mod:`cama.map_scoring.curves`'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cama.map_scoring.curves import RANKING_SCORES, CurveOptions, ranking_scores
from cama.map_scoring.features import complete_features, masked_embeddings
from cama.metrics.boxes import DEFAULT_TAUS, any_along
from cama.metrics.map_scores import MapScores
from cama.metrics.ranking import EmbeddingSet
from cama.viz import LAYER_METHODS, Features, ModelExplainer, Own, ProbeAgainst

__all__ = ["EVIDENCE", "ProbeScorer"]

EVIDENCE = "evidence_required"  # the synthetic re-ID items' discriminative parts (cama.metrics.parts)


class ProbeScorer:
    """Scores the maps of probes of a ranking task against their references (module docstring).

    Args:
        methods: explanation methods (:mod:`cama.viz.model_explainer`), checked by the caller.
        per_branch: also score each branch's map (``<method>_branch<i>``).
        branch_overlap: score the branch overlap of a multi-branch model.
        num_faithfulness_samples: the probes at positions below it are scored with AD / IC; 0: off.
        num_gradient_samples: the probes at positions below it are scored with the layer methods
            (:data:`cama.viz.LAYER_METHODS`: gradient and gradient-free).
        tau, taus, iou_threshold: the box protocol (:class:`~cama.metrics.map_scores.MapScores`).
        curves: the deletion / insertion curves (:class:`~cama.map_scoring.curves.CurveOptions`: the
            probes at positions below ``samples``, every method next to a random map and a centred
            prior; off by default here, on in ``LocalizationMetrics``).
    """

    def __init__(
        self,
        methods: Sequence[str],
        per_branch: bool = False,
        branch_overlap: bool = True,
        num_faithfulness_samples: int = 8,
        num_gradient_samples: int = 16,
        tau: float = 0.2,
        taus: Sequence[float] | None = None,
        iou_threshold: float = 0.5,
        curves: CurveOptions | None = None,
    ) -> None:
        self.methods = tuple(methods)
        self.curves = curves if curves is not None else CurveOptions(samples=0)
        layered = any(m in LAYER_METHODS for m in self.methods)
        # every method's maps of a probe are in one call: with a layer method, its probes only
        self.curve_samples = (
            min(self.curves.samples, num_gradient_samples) if layered else self.curves.samples
        )
        self.per_branch = per_branch
        self.branch_overlap = branch_overlap
        self.num_faithfulness_samples = num_faithfulness_samples
        self.num_gradient_samples = num_gradient_samples
        self.tau = tau
        self.taus = tuple(taus) if taus is not None else DEFAULT_TAUS
        self.iou_threshold = iou_threshold
        self._scores: tuple[Any, MapScores] | None = None

    def perturbed_forwards(self, probes: int) -> int:
        """Forwards of perturbed probes that AD / IC and the curves cost in an epoch of ``probes``
        probes (what ``faithfulness=False`` in :meth:`score` saves): one per method and probe with
        AD / IC (a layer method's on its first ``num_gradient_samples`` probes only), and
        :meth:`CurveOptions.images_scored` per probe with curves (the methods and the two
        reference maps)."""
        faithful = min(self.num_faithfulness_samples, probes)
        layered = min(faithful, self.num_gradient_samples)
        ad_ic = sum(layered if method in LAYER_METHODS else faithful for method in self.methods)
        curved = min(self.curve_samples, probes)
        return ad_ic + curved * self.curves.images_scored(len(self.methods) + 2)

    def map_scores(
        self,
        image_size: tuple[int, int],
        has_box: bool,
        has_mask: bool,
        evidence_topk: float | None,
        branches: int,
        topk: Any,
        device: torch.device,
    ) -> MapScores:
        """The score group of every map, built once for these shapes (the caller resets it)."""
        key = (image_size, has_box, has_mask, evidence_topk, branches, topk, str(device))
        if self._scores is None or self._scores[0] != key:
            names = list(self.methods)
            if self.per_branch and branches > 1:
                names += [f"{m}_branch{i + 1}" for m in self.methods for i in range(branches)]
            scores = MapScores(
                names, image_size, has_box, has_mask,
                faithfulness_names=self.methods if self.num_faithfulness_samples else (),
                tau=self.tau, taus=self.taus, iou_threshold=self.iou_threshold,
                branch_overlap_topk=topk if self.branch_overlap and branches > 1 else None,
                evidence_topk=evidence_topk,
                evidence_names=self.methods,
                curve_names=self.curves.names(self.methods),
                curve_scores=RANKING_SCORES,
            )
            self._scores = (key, scores.to(device))
        return self._scores[1]

    @torch.no_grad()
    def score(
        self,
        explainer: ModelExplainer,
        provider: Any,
        gallery: EmbeddingSet,
        probes: Sequence[int],
        positions: Sequence[int],
        first: Mapping[str, Any],
        captured: Mapping[int, Mapping[str, Any]],
        load: Callable[[list[int]], dict[str, Any]],
        topk: Any,
        batch_size: int,
        embed_masked: Callable[[Tensor], Tensor],
        device: torch.device | str,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        faithfulness: bool = True,
    ) -> MapScores:
        """Score the probes at ``positions`` of ``probes`` (dataset indices), ``batch_size`` at a time,
        and return the updated :class:`MapScores` (``compute_named`` it on every process, then reset;
        with ``faithfulness=False`` its ``"faith"`` and ``"curves"`` metrics are left untouched:
        skip them there).

        Args:
            explainer: the model's explainer (its model on ``device``, where the work runs).
            provider: the task's reference provider (:mod:`cama.references`), ``gallery`` the epoch's
                gallery embeddings it ranks.
            first: the dataset item of ``probes[0]`` (the data's keys and image size).
            captured: the maps kept from the validation steps (:func:`~cama.map_scoring.stack_captured`).
            load: dataset indices -> their collated batch on the device (the probes not captured).
            topk: the OAP's k (an int, or a float share of the feature grid).
            embed_masked: ``[M, 3, H, W] -> [M, D]`` embeddings of the masked images (AD / IC).
            mean, std: the images' normalisation (:func:`cama.metrics.mask_images`).
            faithfulness: score AD / IC and the curves (:meth:`perturbed_forwards` forwards).
        """
        gallery = gallery.to(device)
        has_box, has_mask = "box" in first, "mask" in first
        has_evidence = has_mask and EVIDENCE in first
        image_size = tuple(first["image"].shape[-2:])
        if captured:
            grid = [tuple(m.shape[-2:]) for m in next(iter(captured.values()))["maps"]]
        else:
            grid = [tuple(m.shape[-2:]) for m in explainer.features(first["image"][None].to(device)).maps]
        branches = len(grid)
        # the OAP's k as a share of the feature grid: the part scores take it on image-size maps
        evidence_topk = (topk if isinstance(topk, float) else topk / (grid[0][0] * grid[0][1])) if has_evidence else None
        scores = self.map_scores(image_size, has_box, has_mask, evidence_topk, branches, topk, device)
        for start in range(0, len(positions), batch_size):
            chunk = list(positions[start : start + batch_size])
            position_of = {probes[p]: p for p in chunk}
            features, batch, order = complete_features(explainer, [probes[p] for p in chunk], captured, load, device)
            self.score_chunk(
                explainer, provider, features, batch, gallery, order, [position_of[i] for i in order],
                scores, embed_masked, mean, std, faithfulness,
            )
        return scores

    def score_chunk(
        self,
        explainer: ModelExplainer,
        provider: Any,
        features: Features,
        batch: Mapping[str, Tensor],
        gallery: EmbeddingSet,
        indices: list[int],
        positions: list[int],
        scores: MapScores,
        embed_masked: Callable[[Tensor], Tensor],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        faithfulness: bool = True,
    ) -> None:
        """Score the probes ``indices`` (dataset indices; ``positions`` in the probe list), the rows of
        ``features`` / ``batch``, against their references (the provider's top-ranked image); AD / IC
        and the curves only with ``faithfulness``."""
        device = features.embedding.device
        references, matches = provider.rank(gallery, features.embedding, torch.tensor(indices, device=device), 1)
        rankable = (references[:, 0] >= 0).nonzero().squeeze(1)
        if rankable.numel() == 0:
            return
        features = features.select(rankable)
        position = torch.as_tensor(positions, device=device)[rankable]
        rows = torch.searchsorted(gallery.indices, references[rankable, 0])  # gallery rows, sorted by index
        reference_embeddings = gallery.embeddings[rows].to(features.embedding.dtype)
        correct = matches[rankable, 0]
        boxes = batch["box"][rankable].float() if "box" in batch else None
        parts = batch["mask"][rankable].bool() if "mask" in batch else None
        person = any_along(parts, 1) if parts is not None else None
        evidence = batch[EVIDENCE][rankable].bool() if parts is not None and EVIDENCE in batch else None

        if boxes is not None:
            scores.update_baselines(boxes, tuple(features.images.shape[-2:]))
        if self.branch_overlap and features.num_branches > 1:
            scores.update_overlap(explainer.raw_maps("ram", features, Own()))

        faithful = (position < (self.num_faithfulness_samples if faithfulness else 0)).nonzero().squeeze(1)
        curved = (
            (position < self.curve_samples).nonzero().squeeze(1) if self.curves.active and faithfulness
            else position[:0]
        )
        curve_maps: dict[str, Tensor] = {}
        masked_images: list[Tensor] = []
        masked_maps: list[Tensor] = []
        masked_rows: list[tuple[str, Tensor]] = []  # (method, rows of `features`) of each masked block
        for method in self.methods:
            rows_used = torch.arange(position.numel(), device=device)
            if method in LAYER_METHODS:
                rows_used = (position < self.num_gradient_samples).nonzero().squeeze(1)
                if rows_used.numel() == 0:
                    continue
            used = features.select(rows_used) if rows_used.numel() < position.numel() else features
            target = ProbeAgainst(reference_embeddings[rows_used])
            # branches then summed; the part scores need the branches' regions
            maps = explainer.explain(method, used, target, branches=self.per_branch or evidence is not None)
            summed = maps[:, -1]
            box, mask = (None if t is None else t[rows_used] for t in (boxes, person))
            scores.update_maps(method, summed, box, mask, correct[rows_used])
            if evidence is not None:
                branch_maps = maps[:, :-1] if maps.shape[1] > 1 else maps
                scores.update_parts(method, summed, parts[rows_used], evidence[rows_used], branch_maps)
            if self.per_branch and maps.shape[1] > 1:  # (their scores, without the part evidence)
                for i in range(maps.shape[1] - 1):
                    scores.update_maps(f"{method}_branch{i + 1}", maps[:, i], box, mask, correct[rows_used])
            if scores.has_faithfulness(method):
                keep = torch.isin(rows_used, faithful).nonzero().squeeze(1)
                if keep.numel():
                    masked_images.append(used.images[keep])
                    masked_maps.append(summed[keep])
                    masked_rows.append((method, rows_used[keep]))
            if curved.numel():  # rows_used holds them (curve_samples <= num_gradient_samples)
                curve_maps[method] = summed[torch.searchsorted(rows_used, curved)]

        # fam Eq. 21-22: one forward for every method's masked queries
        masked = masked_embeddings(embed_masked, masked_images, masked_maps, mean, std)
        for (method, rows_used), masked_embedding in zip(masked_rows, masked):
            target = reference_embeddings[rows_used]  # the score: cosine similarity to the reference
            similarity = F.cosine_similarity(features.embedding[rows_used], target, dim=1)
            masked_similarity = F.cosine_similarity(masked_embedding, target, dim=1)
            scores.update_faithfulness(method, similarity, masked_similarity)

        if curve_maps:  # RISE's deletion / insertion (cama.metrics.deletion), the probes' ranking scores
            probe_index = torch.as_tensor(indices, device=device)[rankable][curved]
            ranked = gallery.gallery()
            true_matches = provider.labels.to(device)[probe_index][:, None] == ranked.labels[None, :]
            of_embeddings = ranking_scores(
                reference_embeddings[curved], ranked, true_matches, provider.excluded(probe_index, ranked)
            )
            intact = of_embeddings(features.embedding[curved], torch.arange(curved.numel(), device=device))
            scores.update_curves(*self.curves.curves(
                features.images[curved], curve_maps, position[curved], features.maps[0].shape[-2:],
                lambda images, rows: of_embeddings(embed_masked(images), rows), intact,
            ))
