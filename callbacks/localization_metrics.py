"""``LocalizationMetrics``: do the maps point at the person? Scalars every validation epoch.

For a fixed, deterministic subset of queries (``num_samples``, chosen once among the queries with
a true match and kept in ``state_dict``; the :class:`~callbacks.ExplanationImages` probes are its
first elements when both use the same seed) the callback keeps the feature maps the model's own validation step
returned for them (:class:`~callbacks.base.ProbeCapture`: no second forward pass; a sample it could
not capture is loaded and forwarded again), finds each one's reference with the task's provider
(:mod:`cama.references`: the top-ranked gallery image under the re-ID protocol, the nearest other
image for retrieval), ranked with the embeddings the model computed in its validation loop -- and
scores each method's summed map on the query image (:mod:`cama.viz.model_explainer`: Dist-CAM against the reference's embedding, the query's own
RAM ``R_q^q``, FAM with the reference as the single support, the gradient CAMs of the similarity
to the reference, CAM of the predicted training identity) against the ground truth the data set
provides. Logged as ``<prefix>/<method>/<name>`` (``prefix="loc"``):

* with boxes (:class:`~cama.metrics.BoxLocalization`, :class:`~cama.metrics.EnergyPointingGame`):
  ``box_iou``, ``box_acc`` (IoU >= 0.5 at ``tau``), ``top1_loc_err`` (for re-ID "correct" = the
  top-1 gallery image is a true match), ``max_box_acc`` and ``max_box_acc_tau`` (best over the tau
  sweep), ``energy`` (fam Eq. 19), and ``center_box_iou`` / ``center_box_acc``: a box of the mean
  size of the method's boxes centred in the image;
* with part masks (their union is the person; :class:`~cama.metrics.OtsuSegmentation`):
  ``otsu_miou``, ``otsu_iou``, ``otsu_precision``, ``otsu_recall``, ``otsu_micro_f1``;
* with the part evidence of the synthetic re-ID set (``evidence_required``: the parts that alone
  tell the identity from one of its look-alikes, :mod:`cama.metrics.parts`): ``person_energy``
  (the summed map's energy share on the person), ``evidence_energy``, ``evidence_area``,
  ``evidence_ratio`` (of the energy on the person, the share on those parts, over their share of
  the person; above 1: the map prefers the evidence) and ``parts_covered`` (parts touched by the
  union of the branches' top-k regions, k the OAP's);
* always, on the first ``num_faithfulness_samples`` (:class:`~cama.metrics.AverageDropIncrease`):
  ``ad`` and ``ic`` (fam Eq. 21-22) with the cosine similarity to the reference as the score and the
  query masked by the map (:func:`cama.metrics.mask_images`).

And: ``<prefix>/center_baseline/box_iou`` and ``box_acc`` (a centred box of the mean ground-truth
size), ``<prefix>/uniform_baseline/energy`` (the pointing-game score of a constant map: the box's
share of the image) -- these baselines and the thresholds ``max_box_acc_tau`` go to
``trainer.callback_metrics`` and, as text, to TensorBoard, not as scalar curves
(:class:`~callbacks.score_logging.ScoreLogger`) -- and, for a multi-branch model,
``<prefix>/branch_overlap_iou``: the mean pairwise IoU between the branches' top-k masks of their
RAMs ``R_q^q`` with ``k`` the OAP's (the model's ``overlap_topk()``,
:class:`cama.protocols.HasOverlapPenalty`, cama-ram Eq. 5) -- what the Overlapped Activation
Penalty exists to lower. With ``per_branch=True`` every method's per-branch maps are scored too
(``<prefix>/<method>_branch<i>/<name>``).

Gradient methods cost a forward and backward per branch: they are scored on the first
``num_gradient_samples`` only. The metrics (:class:`cama.metrics.map_scores.MapScores`) are torchmetrics Metrics, so every process
scores its share of the subset and ``compute()`` reduces them: the numbers do not depend on the
number of processes. The sanity-check epoch is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from callbacks.base import ScoredRankingCallback, cpu_threads, load_items, stack_captured
from cama.metrics.boxes import any_along
from cama.metrics.faithfulness import mask_images
from cama.metrics.localization import DEFAULT_TAUS
from cama.metrics.map_scores import MapScores
from cama.metrics.ranking import EmbeddingSet
from cama.protocols import HasOverlapPenalty, ShowsImages
from cama.viz import GRADIENT_METHODS, ModelExplainer, Features, Own, ProbeAgainst, check_methods

__all__ = ["LocalizationMetrics"]

EVIDENCE = "evidence_required"  # the synthetic re-ID items' discriminative parts (cama.metrics.parts)


class LocalizationMetrics(ScoredRankingCallback):
    """Localization and faithfulness scores of explanation maps, logged every validation epoch.

    Args:
        methods: explanation methods to score (see :mod:`cama.viz.model_explainer`).
        num_samples: queries scored per epoch (a fixed subset; the cost is one forward of them).
        seed: seed of the subset (a private generator).
        every_n_epochs: run on every n-th validation epoch (the first one always runs).
        tau: relative threshold of the box (``tau * max``; 0.2 as CAM and fam Sec. V-A).
        taus: the sweep of MaxBoxAcc (default 0.05, 0.15, ..., 0.95).
        iou_threshold: IoU for a correct box.
        num_faithfulness_samples: queries scored with AD/IC (one extra forward per method); 0: off.
        num_gradient_samples: queries scored with the gradient methods.
        per_branch: also score each branch's map.
        branch_overlap: log the branch overlap of a multi-branch model.
        batch_size: queries per forward.
        gradient_layers, truncation, truncation_per_channel: the gradient methods' options.
        prefix: logged names start with it.
        reuse_features: keep the feature maps the model's validation step returns for the samples
            (:class:`~callbacks.base.ProbeCapture`) instead of a second forward pass; samples it
            could not capture are recomputed.
        cpu_threads: intra-op threads for the callback's own work on CPU (small batches run
            fastest on one); ``None`` keeps torch's setting.
    """

    def __init__(
        self,
        methods: Sequence[str] = ("dist_cam", "ram", "fam"),
        num_samples: int = 64,
        seed: int = 0,
        every_n_epochs: int = 1,
        tau: float = 0.2,
        taus: Sequence[float] | None = None,
        iou_threshold: float = 0.5,
        num_faithfulness_samples: int = 8,
        num_gradient_samples: int = 16,
        per_branch: bool = False,
        branch_overlap: bool = True,
        batch_size: int = 64,
        gradient_layers: list[str] | None = None,
        truncation: float | None = None,
        truncation_per_channel: bool = False,
        prefix: str = "loc",
        reuse_features: bool = True,
        cpu_threads: int | None = 1,
    ) -> None:
        if num_samples < 1 or batch_size < 1:
            raise ValueError("num_samples and batch_size must be >= 1")
        super().__init__(every_n_epochs, cpu_threads, num_samples, seed, prefix)
        self.methods = check_methods(methods)
        self.tau = float(tau)
        self.taus = tuple(taus) if taus is not None else DEFAULT_TAUS
        self.iou_threshold = float(iou_threshold)
        self.num_faithfulness_samples = max(0, int(num_faithfulness_samples))
        self.num_gradient_samples = max(0, int(num_gradient_samples))
        self.per_branch = per_branch
        self.branch_overlap = branch_overlap
        self.batch_size = int(batch_size)
        self.gradient_layers = gradient_layers
        self.truncation = truncation
        self.truncation_per_channel = truncation_per_channel
        self.reuse_features = reuse_features
        self.last_results: dict[str, float] = {}
        self._scores: tuple[Any, MapScores] | None = None

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._capture = None
        if self.due(trainer) and self.reuse_features:
            self.start_capture(trainer, pl_module, self.samples)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        captured = self.stop_capture()
        if not self.end_epoch(trainer):
            return
        inputs = self.epoch_inputs(trainer, pl_module, self.samples)  # collective: every rank
        if inputs is None:
            return
        forward_threads = torch.get_num_threads()  # the masked queries' forward is a large batch
        with self.threads(pl_module):
            results = self._score(trainer, pl_module, *inputs, captured, forward_threads)
        self.last_results = {k: float(v) for k, v in results.items()}
        self.score_logger.log(trainer, pl_module, results)

    # ------------------------------------------------------------------ scoring
    def _owned_positions(
        self, trainer: pl.Trainer, samples: list[int], captured: dict[int, Any], device: torch.device
    ) -> list[int]:
        """Positions in ``samples`` this process scores: the first process that captured a sample
        owns it, the others are dealt round-robin (and recomputed). A collective when distributed."""
        world, count = trainer.world_size, len(samples)
        seen = torch.tensor([int(i in captured) for i in samples], dtype=torch.int32, device=device)
        everyone = trainer.strategy.all_gather(seen).reshape(-1, count) if world > 1 else seen[None]
        has = everyone > 0
        fallback = torch.arange(count, device=device) % world
        owner = torch.where(has.any(dim=0), has.int().argmax(dim=0), fallback)
        return (owner == trainer.global_rank).nonzero().squeeze(1).tolist()

    def _features(
        self, explainer: ModelExplainer, indices: list[int], captured: dict[int, Any], device: torch.device
    ) -> tuple[Features, dict[str, Tensor], list[int]]:
        """Features and batch of ``indices``: captured ones reused, the others loaded and forwarded.

        Returns the features, the batch (``image``, ``box``, ``mask``, ...) and the order of
        ``indices`` they follow (captured first).
        """
        have = [i for i in indices if i in captured]
        missing = [i for i in indices if i not in captured]
        parts: list[tuple[Features, dict[str, Tensor]]] = []
        if have:
            batch, maps = stack_captured(captured, have, device)
            parts.append((explainer.features_from_maps(batch["image"], maps), batch))
        if missing:
            batch = load_items(self.samples.dataset, missing, device)
            parts.append((explainer.features(batch["image"]), batch))
        if len(parts) == 1:
            return parts[0][0], parts[0][1], have + missing
        (first, batch_a), (second, batch_b) = parts
        features = Features(
            images=torch.cat([first.images, second.images]),
            maps=[torch.cat([a, b]) for a, b in zip(first.maps, second.maps)],
            embedding=torch.cat([first.embedding, second.embedding]),
            slices=first.slices,
        )
        batch = {k: torch.cat([batch_a[k], batch_b[k]]) for k in batch_a if k in batch_b and isinstance(batch_b[k], Tensor)}
        return features, batch, have + missing

    def _map_scores(
        self,
        image_size: tuple[int, int],
        has_box: bool,
        has_mask: bool,
        evidence_topk: float | None,
        branches: int,
        topk: Any,
        device: torch.device,
    ) -> MapScores:
        """The score group of every map (built once, reset after every epoch)."""
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
            )
            self._scores = (key, scores.to(device))
        return self._scores[1]

    @torch.no_grad()
    def _score(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        provider: Any,
        gallery: EmbeddingSet,
        captured: dict[int, Any],
        forward_threads: int | None = None,
    ) -> dict[str, Tensor]:
        device = pl_module.device
        gallery = gallery.to(device)
        samples = self.samples.choose(provider, self.warn_once)
        if not samples:
            self.warn_once("no query has a true match in the gallery; nothing is logged")
            return {}
        first = self.samples.dataset[samples[0]]
        has_box, has_mask = "box" in first, "mask" in first
        has_evidence = has_mask and EVIDENCE in first
        image_size = tuple(first["image"].shape[-2:])
        explainer = ModelExplainer(pl_module, self.gradient_layers, self.truncation, self.truncation_per_channel)
        if captured:
            grid = [tuple(m.shape[-2:]) for m in next(iter(captured.values()))["maps"]]
        else:
            grid = [tuple(m.shape[-2:]) for m in explainer.features(first["image"][None].to(device)).maps]
        branches = len(grid)
        topk = pl_module.overlap_topk() if isinstance(pl_module, HasOverlapPenalty) else 0.2  # the OAP's k (Eq. 5)
        # the OAP's k as a share of the feature grid: the part scores take it on image-size maps
        evidence_topk = (topk if isinstance(topk, float) else topk / (grid[0][0] * grid[0][1])) if has_evidence else None
        scores = self._map_scores(image_size, has_box, has_mask, evidence_topk, branches, topk, device)
        datamodule = trainer.datamodule
        mean, std = (datamodule.mean, datamodule.std) if isinstance(datamodule, ShowsImages) else (None, None)

        positions = self._owned_positions(trainer, samples, captured, device)  # collective
        for start in range(0, len(positions), self.batch_size):
            chunk = positions[start : start + self.batch_size]
            position_of = {samples[p]: p for p in chunk}
            features, batch, order = self._features(explainer, [samples[p] for p in chunk], captured, device)
            ordered = [position_of[i] for i in order]
            self._score_chunk(
                explainer, provider, features, batch, gallery, order, ordered, scores, mean, std, forward_threads
            )
        results = scores.compute_named(self.prefix)  # the same order on every rank: compute() syncs
        scores.reset()
        return results

    def _score_chunk(
        self,
        explainer: ModelExplainer,
        provider: Any,
        features: Features,
        batch: dict[str, Tensor],
        gallery: EmbeddingSet,
        indices: list[int],
        chunk: list[int],
        scores: MapScores,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        forward_threads: int | None = None,
    ) -> None:
        """Score the samples ``indices`` (dataset indices; positions ``chunk`` of the subset), the
        rows of ``features`` / ``batch``."""
        device = features.embedding.device
        references, matches = provider.rank(gallery, features.embedding, torch.tensor(indices, device=device), 1)
        rankable = (references[:, 0] >= 0).nonzero().squeeze(1)
        if rankable.numel() == 0:
            return
        features = features.select(rankable)
        position = torch.as_tensor(chunk, device=device)[rankable]
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

        faithful = (position < self.num_faithfulness_samples).nonzero().squeeze(1)
        masked_images: list[Tensor] = []
        masked_rows: list[tuple[str, Tensor]] = []  # (method, rows of `features`) of each masked block
        for method in self.methods:
            rows_used = torch.arange(position.numel(), device=device)
            if method in GRADIENT_METHODS:
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
                    masked_images.append(mask_images(used.images[keep], summed[keep], mean, std))
                    masked_rows.append((method, rows_used[keep]))

        if masked_images:  # fam Eq. 21-22: one forward for every method's masked queries
            with cpu_threads(forward_threads, device):
                masked = explainer.features(torch.cat(masked_images)).embedding
            offset = 0
            for method, rows_used in masked_rows:
                count = rows_used.numel()
                target = reference_embeddings[rows_used]  # the score: cosine similarity to the reference
                similarity = F.cosine_similarity(features.embedding[rows_used], target, dim=1)
                masked_similarity = F.cosine_similarity(masked[offset : offset + count], target, dim=1)
                scores.update_faithfulness(method, similarity, masked_similarity)
                offset += count
