"""``FewShotExplanations``: where a few-shot query matched its class, as pictures and scores.

The few-shot twin of :class:`~callbacks.explanation_images.ExplanationImages` + :class:`~callbacks.localization_metrics.LocalizationMetrics`
(``docs/explanations.md#the-reference-of-each-task``: few-shot explains a query against the
prototype of its predicted class and its support set). On the first ``num_episodes`` validation
episodes (the validation episodes are fixed, so these are the same queries every epoch) every
query is explained against the class the model
predicts for it, through the model's ``episode_references`` (:class:`cama.protocols.EpisodeTask`, built by
:func:`cama.references.episode_references`):

* ``dist_cam`` (dist-cam Eq. 4-7): channel weights from ``|p - q|``, ``p`` the predicted class's
  prototype (the mean support embedding, Eq. 7);
* ``fam`` (fam Eq. 11-13): channel contributions to the similarity averaged over the class's
  supports, with the model's own metric (cosine or squared Euclidean);
* ``ram`` (cama-ram Eq. 10 with the prototype as the reference): ``<p, Q(x, y)> / ||q||`` with ``q = GAP(Q)``;
* ``gradcam``, ``gradcam++``, ``layercam``, ``fullgrad``, ``hirescam``, ``xgradcam`` and the
  gradient-free ``scorecam``, ``ablationcam``, ``eigencam``: the layer CAMs of the cosine
  similarity to the prototype (:class:`cama.viz.ModelExplainer`; EigenCAM uses no target).

Scalars (``<prefix>/<method>/<name>``, the names of :class:`~callbacks.localization_metrics.LocalizationMetrics`):
``box_iou``, ``box_acc``, ``top1_loc_err`` (correct = the predicted class is the true one),
``max_box_acc``, ``max_box_acc_tau``, ``energy``, ``center_box_iou`` / ``center_box_acc`` (a
centred box of the mean size of the method's boxes), ``otsu_*`` against the object mask, and
``ad`` / ``ic`` (fam Eq. 21-22, the score being the softmax probability of the predicted class over
the episode's prototypes, on the query and on the query multiplied by its map; on the first
``num_faithfulness_samples`` queries, every method's masked queries of an episode in one forward, on
torch's thread count, not ``cpu_threads``), and on the first ``deletion_samples`` (8) queries the
deletion / insertion AUCs of RISE (:mod:`cama.metrics.deletion`) of every method and of two reference
maps, ``random`` and ``center_prior``, with the same class probability as the score, in
``deletion_steps`` (4) steps, removed pixels replaced by ``deletion_baseline`` (a blur by default):
``faith/<map>/deletion_auc``, ``faith/<map>/insertion_auc`` and their ``_ci95``
(``callbacks/localization_metrics.py`` says more). They cost
``deletion_samples * (1 + 2 (M + 2) (deletion_steps - 1))`` forwards of perturbed queries for ``M``
methods (200 with the defaults and two methods); ``deletion_steps=0`` turns them off. AD / IC and the
curves (500 forwards with the defaults) run on the epochs ``faithfulness_budget`` (5%) allows: the first
scored one and every n-th after, n the smallest that keeps them within that share of the validation's
images on average (:class:`~callbacks.faithfulness_budget.FaithfulnessBudget`; the validation's images:
its data set's, each embedded once per epoch); the other scores run every scored epoch. The baselines
``<prefix>/center_baseline/box_iou``, ``box_acc`` (centred box of the mean ground-truth size),
``<prefix>/uniform_baseline/energy`` and the thresholds ``max_box_acc_tau`` are constants: they go
to ``trainer.callback_metrics`` and, as text, to TensorBoard
(:class:`~callbacks.score_logging.ScoreLogger`), not as scalar curves.

Pictures (``<tag_prefix>/<method>``), one row per probe query of the first episode: query |
first support of the predicted class (green frame: right class, red: wrong) | the map on the query |
the map on that support against the query; a title ``epoch <e> · val · <method>``, headers, the
query's true and the support's (predicted) episode class under them, a colour bar
(:func:`cama.viz.episodes.episode_grid`). Under each query the model misclassifies (``contrastive``, on
by default; never for ``eigencam``) a row *why class c- beat the true class*: the first support of the true
class ``c+`` (green frame) and the map on the query of ``s(q, p_c-) - s(q, p_c+)``, ``p_c`` the class
prototypes, on a signed scale (0.5 is no effect, above favours the predicted class; for RAM exact, the
RAM of the difference; :mod:`cama.viz.episode_contrast`, ``docs/explanations.md#contrastive-few-shot-maps``);
per misclassified probe it costs the forward-only methods one or two maps of features already
computed, a layer method one more forward and backward pass. Once per run ``<tag_prefix>/README``
(TensorBoard text) says what the tags show. Pictures go to every TensorBoard logger or, without
one, to ``<log_dir>/<tag_prefix>/epoch_XXX/*.png``; image work runs on rank zero only. The metrics
are torchmetrics Metrics; under DDP each process scores the first ``ceil(num_episodes / world)``
episodes of its share. The sanity-check epoch is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence, Sized
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from callbacks.base import (
    EpochSchedule,
    MapsByIndex,
    OnceText,
    OnceWarnings,
    cpu_threads,
)
from callbacks.faithfulness_budget import FaithfulnessBudget
from callbacks.image_sink import ImageSink, logging_step
from callbacks.score_logging import ScoreLogger
from cama.map_scoring import CurveOptions, EpisodeScorer
from cama.protocols import EpisodeTask, ShowsImages
from cama.references import EpisodeReferences
from cama.explain import check_layer_norm
from cama.viz import (
    ModelExplainer,
    check_methods,
    picture_title,
    probe_grid_legend,
    to_uint8,
)
from cama.viz.episode_contrast import episode_contrasts
from cama.viz.episodes import (
    FEW_SHOT_METHODS,
    episode_grid,
    probe_rows,
    support_maps,
)

__all__ = ["FewShotExplanations"]


def validation_images(trainer: pl.Trainer) -> int:
    """The images of the validation's data sets (each embedded once per epoch by an episodic model's
    evaluation cache); 0 when a loader's data set has no length."""
    loaders = trainer.val_dataloaders
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    datasets = [getattr(loader, "dataset", None) for loader in loaders]
    sizes = [len(dataset) if isinstance(dataset, Sized) else 0 for dataset in datasets]
    return 0 if not sizes or 0 in sizes else sum(sizes)


class FewShotExplanations(Callback):
    """Explanation maps of few-shot queries against their predicted class, scored and drawn.

    Args:
        methods: any of :data:`cama.viz.episodes.FEW_SHOT_METHODS` (every method but ``cam``).
        num_episodes: validation episodes scored per epoch (the first ones). Their feature maps are
            the validation step's (:class:`cama.protocols.EvaluationOutputs`; with the model's
            evaluation cache, an image's maps come from the first episode that held it); images whose
            maps a step did not return are forwarded again. Each gradient method adds a backward;
            Score-CAM and Ablation-CAM a forward per channel of each layer.
        num_probes: query rows of the pictures (spread over the classes of the first episode).
        every_n_epochs: run on every n-th validation epoch (the first one always runs).
        tau, taus, iou_threshold: the box protocol (``docs/map-scores.md#box-from-a-map``).
        num_faithfulness_samples: queries scored with AD / IC, the first ones of the scored episodes
            (per process under DDP; 0: off; the default 150 is two 5-way 15-query episodes). Each
            costs one forward of the masked query per method. AD is a mean over these queries and IC
            a proportion: their 95% intervals shrink as 1 / sqrt(n).
        alpha, colormap, draw_boxes: the overlays.
        save_png: also write PNGs when a TensorBoard logger is present.
        prefix: logged scalar names start with it.
        tag_prefix: TensorBoard image tag prefix (and PNG folder name).
        gradient_layers, truncation, truncation_per_channel, layer_norm: the gradient methods'
            options (:class:`cama.viz.ModelExplainer`).
        cpu_threads: intra-op threads for the callback's own work on CPU; ``None`` keeps torch's.
        deletion_samples: queries with deletion / insertion curves, the first ones of the scored
            episodes (per process under DDP; 0: off).
        deletion_steps: the curves' steps (0: off).
        deletion_baseline: what replaces a removed pixel: ``blur``, ``mean``, ``noisy_linear`` (ROAD).
        faithfulness_budget: the largest average share of the validation's images that AD / IC and the
            curves may cost in forwards (module docstring); None: every scored epoch.
        seed: of the curves' random maps and of the imputation's noise.
        contrastive: the row *why class c- beat the true class* under each misclassified query of the
            pictures (module docstring).
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
        num_faithfulness_samples: int = 150,
        alpha: float = 0.5,
        colormap: str = "jet",
        draw_boxes: bool = True,
        save_png: bool = False,
        prefix: str = "loc",
        tag_prefix: str = "explanations",
        gradient_layers: list[str] | None = None,
        truncation: float | None = None,
        truncation_per_channel: bool = False,
        layer_norm: str = "minmax",
        cpu_threads: int | None = 1,
        deletion_samples: int = 8,
        deletion_steps: int = 4,
        deletion_baseline: str = "blur",
        faithfulness_budget: float | None = 0.05,
        seed: int = 0,
        contrastive: bool = True,
    ) -> None:
        if num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
        if num_probes < 0:
            raise ValueError(f"num_probes must be >= 0, got {num_probes}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.methods = check_methods(methods)
        unsupported = [m for m in self.methods if m not in FEW_SHOT_METHODS]
        if unsupported:
            raise ValueError(f"few-shot explanations support {list(FEW_SHOT_METHODS)}, got {unsupported}")
        self.num_episodes = int(num_episodes)
        self.num_probes = int(num_probes)
        curves = CurveOptions(int(deletion_samples), int(deletion_steps), deletion_baseline, int(seed))
        self.scorer = EpisodeScorer(self.methods, num_faithfulness_samples, tau, taus, iou_threshold, curves)
        self.alpha = float(alpha)
        self.colormap = colormap
        self.draw_boxes = draw_boxes
        self.save_png = save_png
        self.prefix = prefix.rstrip("/")
        self.tag_prefix = tag_prefix
        self.gradient_layers = gradient_layers
        self.truncation = truncation
        self.truncation_per_channel = truncation_per_channel
        self.layer_norm = check_layer_norm(layer_norm)
        self.cpu_threads = cpu_threads
        self.contrastive = bool(contrastive)
        self.schedule = EpochSchedule(every_n_epochs)
        self.budget = FaithfulnessBudget(faithfulness_budget)
        self.score_logger = ScoreLogger(self.prefix)
        self.warnings = OnceWarnings(type(self).__name__)
        self.readme = OnceText()
        self.last_results: dict[str, float] = {}
        self.last_written: list[str] = []
        self._active = False
        self._pictures: dict[str, Tensor] | None = None
        self._maps = MapsByIndex()

    # ------------------------------------------------------------------ state
    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix, tag_prefix=self.tag_prefix)

    def state_dict(self) -> dict[str, Any]:
        return {**self.schedule.state_dict(), **self.budget.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state_dict)
        self.budget.load_state_dict(state_dict)

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pictures = None
        self._active = self.schedule.due(trainer)
        if self._active and not isinstance(pl_module, EpisodeTask):
            self.warnings.warn(
                f"{type(pl_module).__name__} has no `episode_references(batch, maps)` (cama.protocols.EpisodeTask, "
                "e.g. cama.models.ProtoNet); nothing is logged. For re-ID use ExplanationImages and "
                "LocalizationMetrics"
            )
            self._active = False
        faithfulness = True
        images = validation_images(trainer)
        if self._active and images:  # every rank counts the same epochs and sizes
            faithfulness = self.budget.due(self.scorer.perturbed_forwards(), images, self.warnings.warn)
        self.scorer.start_epoch(faithfulness)

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
            self.warnings.warn("validation batches are not episodes (episode_labels, is_query); nothing is logged")
            self._active = False
            return
        self._maps.add(outputs, batch)
        forward_threads = torch.get_num_threads()  # the forwards below are batches of images
        with cpu_threads(self.cpu_threads, pl_module.device):
            self._score_episode(
                trainer, pl_module, batch, batch_idx == 0 and trainer.is_global_zero, forward_threads
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        active, self._active = self._active, False
        self._maps.clear()
        if not self.schedule.end_epoch(trainer) or not active:
            return
        sink = ImageSink.from_trainer(trainer, save_png=self.save_png, folder=self.tag_prefix)  # may broadcast
        results = self.scorer.compute(self.prefix)  # the same order on every rank: compute() syncs
        self.last_results = {k: float(v) for k, v in results.items()}
        self.score_logger.log(trainer, pl_module, results)
        pictures, self._pictures = self._pictures, None
        if trainer.is_global_zero and pictures is not None:
            self.last_written = self._render(trainer, sink, pictures)

    # ------------------------------------------------------------------ scoring
    def _score_episode(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: dict[str, Tensor],
        keep_pictures: bool,
        forward_threads: int | None = None,
    ) -> None:
        device = pl_module.device

        def forward(images: Tensor) -> list[Tensor]:
            with cpu_threads(forward_threads, device):
                return pl_module.feature_maps(images)

        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        with torch.no_grad():
            all_maps = self._maps.batch_maps(batch, forward)  # the validation step's, where it returned them
            refs: EpisodeReferences = pl_module.episode_references(batch, all_maps)
        datamodule = trainer.datamodule
        mean, std = (datamodule.mean, datamodule.std) if isinstance(datamodule, ShowsImages) else (None, None)
        explainer = ModelExplainer(  # Score-CAM masks the [0, 1] picture, as AD / IC do
            pl_module, self.gradient_layers, self.truncation, self.truncation_per_channel, self.layer_norm,
            mean=mean, std=std,
        )
        maps = self.scorer.score(
            pl_module, explainer, batch, refs, lambda x: pl_module.embed_maps(forward(x)), mean, std
        )
        if keep_pictures and self.num_probes:
            self._pictures = self._picture_inputs(pl_module, explainer, batch, all_maps, refs, maps)

    @torch.no_grad()
    def _picture_inputs(
        self,
        pl_module: pl.LightningModule,
        explainer: ModelExplainer,
        batch: dict[str, Tensor],
        all_maps: list[Tensor],
        refs: EpisodeReferences,
        maps: dict[str, Tensor],
    ) -> dict[str, Tensor]:
        """The first queries' maps and images (spread over the classes), and their supports' maps
        against them, for the pictures (on the CPU)."""
        images = batch["image"]
        size = (int(images.shape[-2]), int(images.shape[-1]))
        probes = probe_rows(refs.target, self.num_probes)
        pictures: dict[str, Tensor] = {}
        for method in self.methods:  # the support explained against the query (its single reference)
            pictures[method] = maps[method][probes]
            pictures[f"{method}/reference"] = support_maps(
                method, explainer, pl_module, images, all_maps, refs, probes, size
            )
        support = refs.support_index[probes, 0]
        pictures["probe_images"] = images[refs.query_index][probes]
        pictures["reference_images"] = images[support]
        pictures["matches"] = (refs.prediction == refs.target)[probes]
        pictures["probe_classes"] = refs.target[probes]
        pictures["reference_classes"] = refs.prediction[probes]
        if self.contrastive:  # the rows under the misclassified queries
            pictures.update(episode_contrasts(explainer, self.methods, batch, refs, probes, refs.target,
                                              size))
        if "box" in batch and self.draw_boxes:
            pictures["probe_boxes"] = batch["box"][refs.query_index].float()[probes]
            pictures["reference_boxes"] = batch["box"][support].float()
        return {k: v.detach().cpu() for k, v in pictures.items()}

    # ------------------------------------------------------------------ rank-zero image work
    def _render(self, trainer: pl.Trainer, sink: ImageSink, pictures: dict[str, Tensor]) -> list[str]:
        datamodule = trainer.datamodule
        probes = to_uint8(pictures["probe_images"], datamodule)
        references = to_uint8(pictures["reference_images"], datamodule)
        step, epoch = logging_step(trainer), trainer.current_epoch
        self.readme.write(sink, "README", self.readme_text(), step, self.tag_prefix)
        pictures = {**pictures, "probe_images": probes, "reference_images": references}
        if "contrast_supports" in pictures:
            pictures["contrast_supports"] = to_uint8(pictures["contrast_supports"], datamodule)
        written: list[str] = []
        for method in self.methods:
            picture = episode_grid(pictures, method, self.alpha, self.colormap, picture_title(method, epoch))
            written += sink.write(method, picture, step, epoch, prefix=self.tag_prefix)
        return written

    def readme_text(self) -> str:
        """The TensorBoard text of the run: what each image tag shows (Markdown)."""
        return (
            f"**{self.tag_prefix}/<method>** ({', '.join(self.methods)}), the queries of the first validation "
            "episode: " + probe_grid_legend(
                ("query", "support"), "the first support of the predicted class", branches=False
            )
            + " Classes are the episode's (0 .. N-1); the map on the query is against the predicted class's "
            "prototype, the map on the support against the query."
            + (" Under a misclassified query, a row *why class c- beat the true class*: the first support "
               "of the true class `c+` and the map on the query of `s(q, p-) - s(q, p+)`, `p` the prototypes "
               "of the predicted and the true class (`s` the cosine similarities, under the map), on a "
               "signed scale: 0.5 is no effect, above favours the predicted class, below the true one."
               if self.contrastive else "")
            + " Each picture's title gives the epoch; its step is the step of the epoch's scalars."
        )
