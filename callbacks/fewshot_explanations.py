"""``FewShotExplanations``: where a few-shot query matched its class, as pictures and scores.

The few-shot twin of :class:`~callbacks.ExplanationImages` + :class:`~callbacks.LocalizationMetrics`
(``DESIGN.md``: "few-shot explains a query against the prototype of its predicted class and its
support set"). On the first ``num_episodes`` validation episodes (the validation episodes are fixed,
so these are the same queries every epoch) every query is explained against the class the model
predicts for it, through the model's ``episode_references`` (:meth:`cama.models.ProtoNet.episode_references`):

* ``dist_cam`` (dist-cam Eq. 4-7): channel weights from ``|p - q|``, ``p`` the predicted class's
  prototype (the mean support embedding, Eq. 7);
* ``fam`` (fam Eq. 11-13): channel contributions to the similarity averaged over the class's
  supports, with the model's own metric (cosine or squared Euclidean);
* ``ram`` (cama-ram Eq. 10 with the prototype as the reference): ``<p, Q(x, y)> / ||p||``;
* ``gradcam``, ``gradcam++``, ``layercam``, ``fullgrad``: the gradient CAMs of the cosine
  similarity to the prototype (:class:`callbacks.explanation_maps.Explainer`).

Scalars (``<prefix>/<method>/<name>``, the names of :class:`~callbacks.LocalizationMetrics`):
``box_iou``, ``box_acc``, ``top1_loc_err`` (correct = the predicted class is the true one),
``max_box_acc``, ``max_box_acc_tau``, ``energy``, ``center_box_iou`` / ``center_box_acc`` (a
centred box of the mean size of the method's boxes), ``otsu_*`` against the object mask, and
``ad`` / ``ic`` (fam Eq. 21-22, the score being the softmax probability of the predicted class over
the episode's prototypes, on the query and on the query multiplied by its map). Once per epoch:
``<prefix>/center_baseline/box_iou``, ``box_acc`` (centred box of the mean ground-truth size) and
``<prefix>/uniform_baseline/energy``.

Pictures (``<tag_prefix>/<method>``), one row per probe query of the first episode: query |
first support of the predicted class (green frame: right class, red: wrong) | the map on the query |
the map on that support against the query. Pictures go to every TensorBoard logger or, without
one, to ``<log_dir>/<tag_prefix>/epoch_XXX/*.png``; image work runs on rank zero only. The metrics
are torchmetrics Metrics; under DDP each process scores the first ``ceil(num_episodes / world)``
episodes of its share. The sanity-check epoch is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from callbacks.explanation_maps import GRADIENT_METHODS, Explainer, WarnOnceCallback, check_methods, cpu_threads
from callbacks.localization_metrics import LocalizationMetrics, metric_names
from callbacks.rendering import ImageSink, logging_step, probe_grid, to_uint8
from cama.explain import dist_cam, fam, postprocess, ram
from cama.metrics.faithfulness import AverageDropIncrease, mask_images
from cama.metrics.localization import (
    DEFAULT_TAUS,
    BoxLocalization,
    CenteredBoxBaseline,
    EnergyPointingGame,
    OtsuSegmentation,
)

__all__ = ["FewShotExplanations"]

FEW_SHOT_METHODS: tuple[str, ...] = ("dist_cam", "fam", "ram", *GRADIENT_METHODS)


class FewShotExplanations(WarnOnceCallback):
    """Explanation maps of few-shot queries against their predicted class, scored and drawn.

    Args:
        methods: any of ``dist_cam``, ``fam``, ``ram``, ``gradcam``, ``gradcam++``, ``layercam``,
            ``fullgrad``.
        num_episodes: validation episodes scored per epoch (the first ones; the cost is one extra
            forward of their images, plus a backward per gradient method).
        num_probes: query rows of the pictures (spread over the classes of the first episode).
        every_n_epochs: run on every n-th validation epoch (the first one always runs).
        tau, taus, iou_threshold: the box protocol (``DESIGN.md`` "Box from a map").
        faithfulness: score AD / IC (one extra forward of the masked queries per method).
        alpha, colormap, draw_boxes: the overlays.
        save_png: also write PNGs when a TensorBoard logger is present.
        prefix: logged scalar names start with it.
        tag_prefix: TensorBoard image tag prefix (and PNG folder name).
        gradient_layers, truncation, truncation_per_channel: the gradient methods' options.
        cpu_threads: intra-op threads for the callback's own work on CPU; ``None`` keeps torch's.
    """

    def __init__(
        self,
        methods: Sequence[str] = ("dist_cam", "fam"),
        num_episodes: int = 20,
        num_probes: int = 5,
        every_n_epochs: int = 1,
        tau: float = 0.2,
        taus: Sequence[float] | None = None,
        iou_threshold: float = 0.5,
        faithfulness: bool = True,
        alpha: float = 0.5,
        colormap: str = "jet",
        draw_boxes: bool = True,
        save_png: bool = False,
        prefix: str = "val/loc",
        tag_prefix: str = "explanations",
        gradient_layers: list[str] | None = None,
        truncation: float | None = None,
        truncation_per_channel: bool = False,
        cpu_threads: int | None = 1,
    ) -> None:
        super().__init__()
        if num_episodes < 1 or every_n_epochs < 1 or num_probes < 0:
            raise ValueError("num_episodes and every_n_epochs must be >= 1, num_probes >= 0")
        self.methods = check_methods(methods)
        unsupported = [m for m in self.methods if m not in FEW_SHOT_METHODS]
        if unsupported:
            raise ValueError(f"few-shot explanations support {list(FEW_SHOT_METHODS)}, got {unsupported}")
        self.num_episodes = int(num_episodes)
        self.num_probes = int(num_probes)
        self.every_n_epochs = int(every_n_epochs)
        self.tau = float(tau)
        self.taus = tuple(taus) if taus is not None else DEFAULT_TAUS
        self.iou_threshold = float(iou_threshold)
        self.faithfulness = faithfulness
        self.alpha = float(alpha)
        self.colormap = colormap
        self.draw_boxes = draw_boxes
        self.save_png = save_png
        self.prefix = prefix.rstrip("/")
        self.tag_prefix = tag_prefix
        self.gradient_layers = gradient_layers
        self.truncation = truncation
        self.truncation_per_channel = truncation_per_channel
        self.cpu_threads = cpu_threads
        self.validation_epochs = 0
        self.last_results: dict[str, float] = {}
        self.last_written: list[str] = []
        self._active = False
        self._metrics: tuple[Any, dict[str, dict[str, Any]]] | None = None
        self._pictures: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------ state
    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix, tag_prefix=self.tag_prefix)

    def state_dict(self) -> dict[str, Any]:
        return {"validation_epochs": self.validation_epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validation_epochs = int(state_dict.get("validation_epochs", 0))

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pictures = None
        self._active = not trainer.sanity_checking and self.validation_epochs % self.every_n_epochs == 0
        if self._active and not callable(getattr(pl_module, "episode_references", None)):
            self._warn_once(
                "protocol",
                f"{type(pl_module).__name__} has no `episode_references(batch)` (a few-shot model, e.g. "
                "cama.models.ProtoNet); nothing is logged. For re-ID use ExplanationImages and "
                "LocalizationMetrics",
            )
            self._active = False
        if self._active and self._metrics is not None:
            for group in self._metrics[1].values():
                for metric in group.values():
                    metric.reset()

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or batch_idx >= math.ceil(self.num_episodes / max(1, trainer.world_size)):
            return
        if not isinstance(batch, dict) or "episode_labels" not in batch or "is_query" not in batch:
            self._warn_once("batch", "validation batches are not episodes (episode_labels, is_query); nothing is logged")
            self._active = False
            return
        with cpu_threads(self.cpu_threads, pl_module.device):
            self._score_episode(trainer, pl_module, batch, keep_pictures=batch_idx == 0 and trainer.is_global_zero)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        active, self._active = self._active, False
        self.validation_epochs += 1
        if not active:
            return
        sink = ImageSink.from_trainer(trainer, save_png=self.save_png, folder=self.tag_prefix)  # may broadcast
        results: dict[str, Tensor] = {}
        if self._metrics is not None:  # the same order on every rank: compute() syncs
            for name, group in self._metrics[1].items():
                for key, metric in group.items():
                    results.update(metric_names(self.prefix, name, key, metric.compute()))
                    metric.reset()
        self.last_results = {k: float(v) for k, v in results.items()}
        for name, value in results.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)
        pictures, self._pictures = self._pictures, None
        if trainer.is_global_zero and pictures is not None:
            self.last_written = self._render(trainer, sink, pictures)

    # ------------------------------------------------------------------ scoring
    def _new_metrics(self, image_size: tuple[int, int], has_box: bool, has_mask: bool, device: torch.device):
        metrics: dict[str, dict[str, Any]] = {}
        for method in self.methods:
            group: dict[str, Any] = {}
            if has_box:
                group["box"] = BoxLocalization(self.tau, self.taus, self.iou_threshold)
                group["energy"] = EnergyPointingGame()
                group["center"] = CenteredBoxBaseline(image_size, size_from="predicted", iou_threshold=self.iou_threshold)
            if has_mask:
                group["otsu"] = OtsuSegmentation()
            if self.faithfulness:
                group["faith"] = AverageDropIncrease()
            metrics[method] = group
        if has_box:
            metrics["center_baseline"] = {"center": CenteredBoxBaseline(image_size, "gt", self.iou_threshold)}
            metrics["uniform_baseline"] = {"energy": EnergyPointingGame()}
        for group in metrics.values():
            for metric in group.values():
                metric.to(device)
        return metrics

    def _maps(
        self, method: str, explainer: Explainer, refs: dict[str, Any], images: Tensor, size: tuple[int, int]
    ) -> Tensor:
        """Maps ``[Q, H, W]`` in ``[0, 1]`` of the queries against their predicted class."""
        query_maps, prototype = refs["query_maps"], refs["prototype"]  # the maps upcast to float32 inside
        if method in GRADIENT_METHODS:
            features = explainer.features_from_maps(images, [query_maps])
            return explainer.explain(method, features, prototype, size, branches=False)[:, 0]
        if method == "dist_cam":
            raw = dist_cam(query_maps, prototype)
        elif method == "fam":
            raw = fam(query_maps, refs["supports"], metric=refs["metric"])
        else:
            raw = ram(prototype, query_maps)
        return postprocess(raw[:, None], size)[:, 0]

    @torch.no_grad()
    def _score_episode(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict[str, Tensor], keep_pictures: bool
    ) -> None:
        device = pl_module.device
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        images = batch["image"]
        size = (int(images.shape[-2]), int(images.shape[-1]))
        has_box, has_mask = "box" in batch, "mask" in batch
        key = (size, has_box, has_mask, str(device))
        if self._metrics is None or self._metrics[0] != key:
            self._metrics = (key, self._new_metrics(size, has_box, has_mask, device))
        metrics = self._metrics[1]

        all_maps = pl_module.feature_maps(images)
        refs = pl_module.episode_references(batch, all_maps)
        queries = refs["query_index"]
        query_images = images[queries]
        correct = refs["prediction"] == refs["target"]
        rows = torch.arange(queries.numel(), device=device)
        boxes = batch["box"][queries].float() if has_box else None
        person = batch["mask"][queries].flatten(1, -3).any(dim=1) if has_mask else None
        if boxes is not None:
            metrics["center_baseline"]["center"].update(boxes)
            metrics["uniform_baseline"]["energy"].update(torch.ones(boxes.shape[0], *size, device=device), boxes)
        explainer = Explainer(pl_module, self.gradient_layers, self.truncation, self.truncation_per_channel)
        datamodule = getattr(trainer, "datamodule", None)
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        probes = self._probe_rows(refs) if keep_pictures and self.num_probes else None
        pictures: dict[str, Tensor] = {}
        if any("faith" in metrics[m] for m in self.methods):  # the score of fam Eq. 21-22
            prototypes = self._episode_prototypes(pl_module, all_maps, batch)
            predicted = refs["prediction"][:, None]
            query_embedding = pl_module.embed_maps([refs["query_maps"]])
            score = pl_module.logits(query_embedding, prototypes).softmax(1).gather(1, predicted)[:, 0]
        for method in self.methods:
            maps = self._maps(method, explainer, refs, query_images, size)
            group = metrics[method]
            LocalizationMetrics._update(group, maps, boxes, person, correct, rows)
            if "faith" in group:  # probability of the predicted class on the query times its map
                masked = pl_module.embed_maps(pl_module.feature_maps(mask_images(query_images, maps, mean, std)))
                masked_score = pl_module.logits(masked, prototypes).softmax(1).gather(1, predicted)[:, 0]
                group["faith"].update(score, masked_score)
            if probes is not None:  # the support explained against the query (its single reference)
                support = refs["support_index"][probes, 0]
                target = pl_module.embed_maps([refs["query_maps"][probes]])
                reverse = {
                    "query_maps": all_maps[0][support],
                    "prototype": target,
                    "supports": target[:, None],
                    "metric": refs["metric"],
                }
                pictures[method] = maps[probes]
                pictures[f"{method}/reference"] = self._maps(method, explainer, reverse, images[support], size)
        if probes is not None:
            support = refs["support_index"][probes, 0]
            pictures["probe_images"] = query_images[probes]
            pictures["reference_images"] = images[support]
            pictures["matches"] = correct[probes]
            if boxes is not None and self.draw_boxes:
                pictures["probe_boxes"] = boxes[probes]
                pictures["reference_boxes"] = batch["box"][support].float()
            self._pictures = {k: v.detach().cpu() for k, v in pictures.items()}

    @staticmethod
    def _episode_prototypes(pl_module: pl.LightningModule, all_maps: list[Tensor], batch: dict[str, Tensor]) -> Tensor:
        """``[N, D]`` prototypes of the episode (what the logits compare a query with)."""
        from cama.models.fewshot import class_prototypes

        embeddings = pl_module.embed_maps(all_maps)
        is_query = batch["is_query"].bool()
        return class_prototypes(embeddings[~is_query], batch["episode_labels"][~is_query])

    def _probe_rows(self, refs: dict[str, Any]) -> Tensor:
        """Query rows of the pictures: the first query of each class in turn, then the second, ..."""
        target = refs["target"]
        count = target.numel()
        sorted_target, order = torch.sort(target, stable=True)
        sizes = torch.bincount(sorted_target)
        starts = sizes.cumsum(0) - sizes
        rank_in_class = torch.empty_like(order)
        rank_in_class[order] = torch.arange(count, device=target.device) - starts[sorted_target]
        return torch.argsort(rank_in_class * count + target, stable=True)[: self.num_probes]

    # ------------------------------------------------------------------ rank-zero image work
    def _render(self, trainer: pl.Trainer, sink: ImageSink, pictures: dict[str, Tensor]) -> list[str]:
        datamodule = getattr(trainer, "datamodule", None)
        probes = to_uint8(pictures["probe_images"], datamodule)
        references = to_uint8(pictures["reference_images"], datamodule)
        step, epoch = logging_step(trainer), trainer.current_epoch
        written: list[str] = []
        for method in self.methods:
            picture = probe_grid(
                probes,
                references,
                pictures[method][:, None],
                pictures[f"{method}/reference"][:, None],
                pictures["matches"],
                self.alpha,
                self.colormap,
                pictures.get("probe_boxes"),
                pictures.get("reference_boxes"),
            )
            written += sink.write(method, picture, step, epoch, prefix=self.tag_prefix)
        return written
