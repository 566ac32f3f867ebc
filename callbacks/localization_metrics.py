"""``LocalizationMetrics``: do the maps point at the person? Scalars every validation epoch.

For a fixed, deterministic subset of queries (``num_samples``, chosen once among the queries with
a true match and kept in ``state_dict``; the :class:`~callbacks.ExplanationImages` probes are its
first elements when both use the same seed) the callback keeps the feature maps the model computes
for them in its own validation step (:class:`~callbacks.reid_probes.FeatureCapture`: no second
forward pass; a sample it could not capture is loaded and forwarded again), finds each one's
reference -- the top-ranked gallery image under the re-ID protocol, ranked with the embeddings the
model computed in its validation loop -- and scores each method's summed map on the query image
(:mod:`callbacks.explanation_maps`: Dist-CAM against the reference's embedding, the query's own
RAM ``R_q^q``, FAM with the reference as the single support, the gradient CAMs of the similarity
to the reference, CAM of the predicted training identity) against the ground truth the data set
provides. Logged as ``<prefix>/<method>/<name>`` (``prefix="val/loc"``):

* with boxes (:class:`~cama.metrics.BoxLocalization`, :class:`~cama.metrics.EnergyPointingGame`):
  ``box_iou``, ``box_acc`` (IoU >= 0.5 at ``tau``), ``top1_loc_err`` (for re-ID "correct" = the
  top-1 gallery image is a true match), ``max_box_acc`` and ``max_box_acc_tau`` (best over the tau
  sweep), ``energy`` (fam Eq. 19), and ``center_box_iou`` / ``center_box_acc``: a box of the mean
  size of the method's boxes centred in the image;
* with part masks (their union is the person; :class:`~cama.metrics.OtsuSegmentation`):
  ``otsu_miou``, ``otsu_iou``, ``otsu_precision``, ``otsu_recall``, ``otsu_micro_f1``;
* always, on the first ``num_faithfulness_samples`` (:class:`~cama.metrics.AverageDropIncrease`):
  ``ad`` and ``ic`` (fam Eq. 21-22) with the cosine similarity to the reference as the score and the
  query masked by the map (:func:`cama.metrics.mask_images`).

And once per epoch: ``<prefix>/center_baseline/box_iou`` and ``box_acc`` (a centred box of the
mean ground-truth size), ``<prefix>/uniform_baseline/energy`` (the pointing-game score of a
constant map: the box's share of the image) and, for a multi-branch model,
``<prefix>/branch_overlap_iou``: the mean
pairwise IoU between the branches' top-k masks of their RAMs ``R_q^q`` with ``k`` the OAP's
(``resolve_topk(hparams.oap_topk, h*w)``, cama-ram Eq. 5) -- what the Overlapped Activation
Penalty exists to lower. With ``per_branch=True`` every method's per-branch maps are scored too
(``<prefix>/<method>_branch<i>/<name>``).

Gradient methods cost a forward and backward per branch: they are scored on the first
``num_gradient_samples`` only. The metrics are torchmetrics Metrics (sum states), so every process
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

from callbacks.explanation_maps import GRADIENT_METHODS, Explainer, Features, check_methods, cpu_threads
from callbacks.reid_probes import (
    CapturingCallback,
    EvalSet,
    FeatureCapture,
    Gallery,
    find_rank_metric,
    identities,
)
from cama.metrics.faithfulness import AverageDropIncrease, mask_images
from cama.metrics.localization import (
    DEFAULT_TAUS,
    BoxLocalization,
    BranchOverlap,
    CenteredBoxBaseline,
    EnergyPointingGame,
    OtsuSegmentation,
    boxes_from_maps,
)

__all__ = ["LocalizationMetrics", "metric_names"]


def metric_names(prefix: str, name: str, key: str, value: Any) -> dict[str, Tensor]:
    """Logged names of the result ``value`` of the metric ``key`` of map ``name`` (a method, or a
    baseline): ``<prefix>/<name>/<score>``, e.g. ``val/loc/ram/box_iou``, ``val/loc/fam/otsu_miou``."""
    p = prefix
    if key == "overlap":
        return {f"{p}/branch_overlap_iou": value}
    if key == "center" and name == "center_baseline":
        return {f"{p}/center_baseline/{k}": v for k, v in value.items()}
    if key == "center":
        return {f"{p}/{name}/center_{k}": v for k, v in value.items()}
    if key == "energy":
        return {f"{p}/{name}/energy": value}
    if key == "otsu":
        return {f"{p}/{name}/otsu_{k}": v for k, v in value.items()}
    return {f"{p}/{name}/{k}": v for k, v in value.items()}  # box, faith


class LocalizationMetrics(CapturingCallback):
    """Localization and faithfulness scores of explanation maps, logged every validation epoch.

    Args:
        methods: explanation methods to score (see :mod:`callbacks.explanation_maps`).
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
        metric_attribute: the module's ranking metric holding the validation embeddings.
        prefix: logged names start with it.
        reuse_features: keep the feature maps the model computes for the samples in its own
            validation step (:class:`~callbacks.reid_probes.FeatureCapture`) instead of a second
            forward pass; samples it could not capture are recomputed.
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
        metric_attribute: str = "val_metric",
        prefix: str = "val/loc",
        reuse_features: bool = True,
        cpu_threads: int | None = 1,
    ) -> None:
        super().__init__()
        if num_samples < 1 or every_n_epochs < 1 or batch_size < 1:
            raise ValueError("num_samples, every_n_epochs and batch_size must be >= 1")
        self.methods = check_methods(methods)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.every_n_epochs = int(every_n_epochs)
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
        self.metric_attribute = metric_attribute
        self.prefix = prefix.rstrip("/")
        self.reuse_features = reuse_features
        self.cpu_threads = cpu_threads
        self._active = False
        self._capture: FeatureCapture | None = None
        self._metrics: tuple[Any, dict[str, Any]] | None = None
        self.sample_indices: list[int] = []
        self.validation_epochs = 0
        self.last_results: dict[str, float] = {}

    # ------------------------------------------------------------------ state
    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    def state_dict(self) -> dict[str, Any]:
        return {"sample_indices": list(self.sample_indices), "validation_epochs": self.validation_epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sample_indices = [int(i) for i in state_dict.get("sample_indices", [])]
        self.validation_epochs = int(state_dict.get("validation_epochs", 0))

    def _samples(self, evalset: EvalSet) -> list[int]:
        self.sample_indices = self._fixed_queries(
            evalset, self.sample_indices, self.num_samples, self.seed, "samples"
        )
        return self.sample_indices

    # ------------------------------------------------------------------ metrics
    def _new_metrics(
        self,
        image_size: tuple[int, int],
        has_box: bool,
        has_mask: bool,
        branches: int,
        topk: float | int,
        device: torch.device,
    ) -> dict[str, Any]:
        names = self._map_names(branches)
        metrics: dict[str, Any] = {}
        for name in names:
            group: dict[str, Any] = {}
            if has_box:
                group["box"] = BoxLocalization(self.tau, self.taus, self.iou_threshold)
                group["energy"] = EnergyPointingGame()
                group["center"] = CenteredBoxBaseline(
                    image_size, size_from="predicted", iou_threshold=self.iou_threshold
                )
            if has_mask:
                group["otsu"] = OtsuSegmentation()
            if name in self.methods and self.num_faithfulness_samples:
                group["faith"] = AverageDropIncrease()
            metrics[name] = group
        if has_box:
            metrics["center_baseline"] = {"center": CenteredBoxBaseline(image_size, "gt", self.iou_threshold)}
            metrics["uniform_baseline"] = {"energy": EnergyPointingGame()}
        if self.branch_overlap and branches > 1:
            metrics["branch_overlap"] = {"overlap": BranchOverlap(topk)}
        for group in metrics.values():
            for metric in group.values():
                metric.to(device)
        return metrics

    def _map_names(self, branches: int) -> list[str]:
        names = list(self.methods)
        if self.per_branch and branches > 1:
            names += [f"{m}_branch{i + 1}" for m in self.methods for i in range(branches)]
        return names

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active, self._capture = False, None
        if trainer.sanity_checking:
            return
        self._active = self.validation_epochs % self.every_n_epochs == 0
        evalset = EvalSet.from_trainer(trainer) if self._active and self.reuse_features else None
        if evalset is not None:
            self._capture = FeatureCapture(self._samples(evalset))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validation_epochs += 1
        active, capture = self._active, self._capture
        self._active, self._capture = False, None
        if not active:
            return
        if capture is not None:
            capture.stop()
        evalset = EvalSet.from_trainer(trainer)
        metric = find_rank_metric(pl_module, self.metric_attribute)
        if evalset is None or metric is None:
            self._warn_once(
                "setup",
                "needs a re-ID (num_query, pids, camids) or retrieval (labels) evaluation set and the "
                f"model's ranking metric `{self.metric_attribute}` holding the embeddings; nothing is "
                "logged (for a few-shot model use callbacks.fewshot_explanations.FewShotExplanations)",
            )
            return
        gallery = Gallery.from_metric(metric)  # collective: every rank
        if len(gallery) == 0:
            self._warn_once("gallery", "no gallery embedding in this validation epoch; nothing is logged")
            return
        with cpu_threads(self.cpu_threads, pl_module.device):
            results = self._score(trainer, pl_module, evalset, gallery, capture.captured if capture else {})
        self.last_results = {k: float(v) for k, v in results.items()}
        for name, value in results.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)

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
        self,
        explainer: Explainer,
        evalset: EvalSet,
        indices: list[int],
        captured: dict[int, Any],
        device: torch.device,
    ) -> tuple[Features, dict[str, Tensor], list[int]]:
        """Features and targets of ``indices``: captured ones reused, the others loaded and forwarded.

        Returns the features, the batch (``image``, ``pid``, ``camid``, ``box``, ``mask``) and the
        order of ``indices`` they follow (captured first).
        """
        have = [i for i in indices if i in captured]
        missing = [i for i in indices if i not in captured]
        parts: list[tuple[Features, dict[str, Tensor]]] = []
        if have:
            items = [captured[i] for i in have]
            batch = {k: torch.stack([item[k] for item in items]).to(device) for k in items[0] if k != "maps"}
            maps = [
                torch.stack([item["maps"][b] for item in items]).to(device)
                for b in range(len(items[0]["maps"]))
            ]
            parts.append((explainer.features_from_maps(batch["image"], maps), batch))
        if missing:
            batch = evalset.load(missing, device)
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
        batch = {
            k: torch.cat([batch_a[k], batch_b[k]])
            for k in batch_a
            if k in batch_b and isinstance(batch_b[k], Tensor)
        }
        return features, batch, have + missing

    @torch.no_grad()
    def _score(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        evalset: EvalSet,
        gallery: Gallery,
        captured: dict[int, Any],
    ) -> dict[str, Tensor]:
        device = pl_module.device
        gallery = Gallery(
            gallery.embeddings.to(device),
            gallery.pids.to(device),
            gallery.camids.to(device),
            gallery.indices.to(device),
            gallery.distance,
        )
        samples = self._samples(evalset)
        if not samples:
            self._warn_once("samples", "no query has a true match in the gallery; nothing is logged")
            return {}
        first = evalset.dataset[samples[0]]
        has_box, has_mask = "box" in first, "mask" in first
        image_size = tuple(first["image"].shape[-2:])
        explainer = Explainer(pl_module, self.gradient_layers, self.truncation, self.truncation_per_channel)
        if captured:
            branches = len(next(iter(captured.values()))["maps"])
        else:
            branches = len(explainer.features(first["image"][None].to(device)).maps)
        hparams = getattr(pl_module, "hparams", None)
        topk = hparams.get("oap_topk", 0.2) if hasattr(hparams, "get") else 0.2  # the OAP's k (Eq. 5)
        key = (image_size, has_box, has_mask, branches, topk, str(device))
        if self._metrics is None or self._metrics[0] != key:  # built once, reset after every epoch
            self._metrics = (key, self._new_metrics(image_size, has_box, has_mask, branches, topk, device))
        metrics = self._metrics[1]
        for group in metrics.values():
            if "center" in group:  # cat states: every rank holds a tensor, even without samples
                group["center"].update(torch.zeros(0, 4, device=device), torch.zeros(0, 4, device=device))
        datamodule = getattr(trainer, "datamodule", None)
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)

        positions = self._owned_positions(trainer, samples, captured, device)  # collective
        for start in range(0, len(positions), self.batch_size):
            chunk = positions[start : start + self.batch_size]
            position_of = {samples[p]: p for p in chunk}
            features, batch, order = self._features(
                explainer, evalset, [samples[p] for p in chunk], captured, device
            )
            ordered = [position_of[i] for i in order]
            self._score_chunk(
                explainer, features, batch, gallery, ordered, metrics, has_box, has_mask, mean, std, device
            )

        results: dict[str, Tensor] = {}
        for name, group in metrics.items():  # the same order on every rank: compute() syncs
            for key, metric in group.items():
                value = metric.compute()
                metric.reset()
                results.update(metric_names(self.prefix, name, key, value))
        return results

    def _score_chunk(
        self,
        explainer: Explainer,
        features: Features,
        batch: dict[str, Tensor],
        gallery: Gallery,
        chunk: list[int],
        metrics: dict[str, Any],
        has_box: bool,
        has_mask: bool,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        device: torch.device,
    ) -> None:
        """Score the samples at positions ``chunk`` of the subset (rows of ``features`` / ``batch``)."""
        rows, matches = gallery.rank(features.embedding, *identities(batch), 1)
        rankable = (rows[:, 0] >= 0).nonzero().squeeze(1)
        if rankable.numel() == 0:
            return
        features = features.select(rankable)
        position = torch.as_tensor(chunk, device=device)[rankable]
        references = gallery.embeddings[rows[rankable, 0]].to(features.embedding.dtype)
        correct = matches[rankable, 0]
        boxes = batch["box"][rankable].float() if has_box else None
        person = batch["mask"][rankable].any(dim=1) if has_mask else None

        if "center_baseline" in metrics:
            metrics["center_baseline"]["center"].update(boxes)
            uniform = torch.ones(boxes.shape[0], *features.images.shape[-2:], device=boxes.device)
            metrics["uniform_baseline"]["energy"].update(uniform, boxes)
        if "branch_overlap" in metrics:
            metrics["branch_overlap"]["overlap"].update(
                explainer.raw_maps("ram", features, features.embedding)
            )

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
            target = used.embedding if method == "ram" else references[rows_used]
            maps = explainer.explain(method, used, target, branches=self.per_branch)  # branches then summed
            summed = maps[:, -1]
            self._update(metrics[method], summed, boxes, person, correct, rows_used)
            if self.per_branch and maps.shape[1] > 1:
                for i in range(maps.shape[1] - 1):
                    self._update(
                        metrics[f"{method}_branch{i + 1}"], maps[:, i], boxes, person, correct, rows_used
                    )
            if "faith" in metrics[method]:
                keep = torch.isin(rows_used, faithful).nonzero().squeeze(1)
                if keep.numel():
                    masked_images.append(mask_images(used.images[keep], summed[keep], mean, std))
                    masked_rows.append((method, rows_used[keep]))

        if masked_images:  # fam Eq. 21-22: one forward for every method's masked queries
            masked = explainer.features(torch.cat(masked_images)).embedding
            offset = 0
            for method, rows_used in masked_rows:
                count = rows_used.numel()
                target = references[rows_used]  # the score: cosine similarity to the reference
                scores = F.cosine_similarity(features.embedding[rows_used], target, dim=1)
                masked_scores = F.cosine_similarity(masked[offset : offset + count], target, dim=1)
                metrics[method]["faith"].update(scores, masked_scores)
                offset += count

    @staticmethod
    def _update(
        group: dict[str, Any],
        maps: Tensor,
        boxes: Tensor | None,
        person: Tensor | None,
        correct: Tensor,
        rows: Tensor,
    ) -> None:
        if boxes is not None:
            box = boxes[rows]
            predicted = boxes_from_maps(maps, group["box"].thresholds)  # one labelling pass, every tau
            group["box"].update(maps, box, correct[rows], boxes=predicted)
            group["energy"].update(maps, box)
            group["center"].update(box, predicted[:, -1])  # the box at tau
        if person is not None:
            group["otsu"].update(maps, person[rows])
