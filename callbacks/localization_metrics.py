"""``LocalizationMetrics``: do the maps point at the person? Scalars every validation epoch.

For a fixed, deterministic subset of queries (``num_samples``, chosen once among the queries with
a true match and kept in ``state_dict``; the :class:`~callbacks.explanation_images.ExplanationImages` probes are its
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

And, on the first ``deletion_samples`` (4) queries, RISE's deletion and insertion curves
(:mod:`cama.metrics.deletion`, Petsiuk et al. 2018; ``docs/map-scores.md#deletion-and-insertion``) of
every method's summed map **and** of two reference maps -- ``random`` (seeded uniform noise at the
feature-map resolution, the same per query every epoch) and ``center_prior`` (pixels removed from the
centre outwards in centred boxes, the map counterpart of ``center_baseline``) -- in ``deletion_steps``
(4) steps, the removed pixels replaced by ``deletion_baseline`` (:mod:`cama.metrics.imputation`:
``blur`` by default, RISE's insertion baseline, one blur per query; ``noisy_linear``, ROAD's noisy
linear imputation, keeps the removed region's shape out of the image but costs a conjugate-gradient
solve per perturbed image, about as much as the forward of a small network on a CPU). Three
scores are read on each perturbed query, only the query changing: the cosine similarity to its
reference, and over the whole gallery (the task's ranking, :func:`cama.metrics.ranking.ranked_matches`
= :func:`cama.metrics.evaluate_rank` of the perturbed query) its AP and the reciprocal rank ``1 / r``
of its first true match. Logged as ``faith/<map>/<curve>[_<score>]_auc`` (trapezoidal area on
``[0, 1]``) and ``..._auc_ci95`` (the 95% interval's half-width over the queries), ``<map>`` a method,
``random`` or ``center_prior``:

* ``faith/<map>/deletion_auc``, ``insertion_auc`` -- the similarity;
* ``faith/<map>/deletion_ap_auc``, ``insertion_ap_auc`` -- the AP;
* ``faith/<map>/deletion_rr_auc``, ``insertion_rr_auc`` -- the reciprocal rank.

A faithful map has a lower deletion and a higher insertion AUC than ``random`` and ``center_prior``.
With the default ``prefix`` the curves are ``faith/...``; with another, ``<prefix>/faith/...`` (two
instances do not collide). The cost, in forwards of perturbed queries: ``deletion_samples * (1 + 2 (M +
2) (deletion_steps - 1))`` for ``M`` methods (the intact query's scores are known), 124 with the
defaults and three methods, in batches of ``batch_size``. ``deletion_steps=0`` turns the curves off.
With a layer method (gradient or gradient-free CAM) the curves are on the first
``min(deletion_samples, num_gradient_samples)`` queries.

AD / IC and the curves are what costs (:meth:`cama.map_scoring.ProbeScorer.perturbed_forwards`: 316
forwards with 64 AD / IC queries and three methods, 43% of ``cama_cuhk03.yaml``'s held-out validation
of 743 images): ``faithfulness_budget`` (5%) runs them on the first scored epoch and then on every n-th,
n the smallest that keeps them within that share of the validation's forwards on average
(:class:`~callbacks.faithfulness_budget.FaithfulnessBudget`; the callback says n when it is above 1;
5 for Market-1501's 1,368 images; ``cama_cuhk03.yaml``, 32 queries at 3%: 10); the other scores
run every scored epoch.
``faithfulness_budget=None`` runs them every time (the synthetic configs do: their jobs are short).

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

The layer methods cost a forward and backward per branch (the gradient methods) or a forward per
channel of each layer (Score-CAM, Ablation-CAM): they are scored on the first
``num_gradient_samples`` only. The scoring is :class:`cama.map_scoring.ProbeScorer`'s; the callback
decides when (:class:`~callbacks.base.EpochSchedule`) and logs (:class:`~callbacks.score_logging.ScoreLogger`).
The metrics (:class:`cama.metrics.map_scores.MapScores`) are torchmetrics Metrics: every process
scores its share of the subset (:func:`cama.map_scoring.owned_positions`: the process that captured a
sample scores it, the others are dealt round-robin) and ``compute()`` reduces them, so the numbers do
not depend on the number of processes. The sanity-check epoch is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from callbacks.base import (
    EpochSchedule,
    OnceWarnings,
    RankingProbes,
    cpu_threads,
    joint_state,
    load_items,
    load_joint_state,
)
from callbacks.faithfulness_budget import FaithfulnessBudget
from callbacks.score_logging import ScoreLogger
from cama.map_scoring import CurveOptions, ProbeScorer, captured_flags, owned_positions
from cama.metrics.map_scores import CURVES_PREFIX
from cama.metrics.ranking import EmbeddingSet
from cama.protocols import HasOverlapPenalty, ShowsImages
from cama.explain import check_layer_norm
from cama.viz import ModelExplainer, check_methods

__all__ = ["LocalizationMetrics"]


class LocalizationMetrics(Callback):
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
        num_gradient_samples: queries scored with the layer methods (gradient and gradient-free).
        per_branch: also score each branch's map.
        branch_overlap: log the branch overlap of a multi-branch model.
        batch_size: queries per forward (and perturbed queries per forward of the curves).
        deletion_samples: queries with deletion / insertion curves (the first ones; 0: off).
        deletion_steps: the curves' steps (0: off).
        deletion_baseline: what replaces a removed pixel: ``blur``, ``mean``, ``noisy_linear`` (ROAD).
        faithfulness_budget: AD / IC and the curves run on the first scored epoch and then on every
            n-th, n the smallest that keeps their forwards at most this share of the validation's
            forwards on average (:class:`~callbacks.faithfulness_budget.FaithfulnessBudget`); None:
            every scored epoch.
        gradient_layers, truncation, truncation_per_channel, layer_norm: the gradient methods'
            options (:class:`cama.viz.ModelExplainer`).
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
        layer_norm: str = "minmax",
        prefix: str = "loc",
        reuse_features: bool = True,
        cpu_threads: int | None = 1,
        deletion_samples: int = 4,
        deletion_steps: int = 4,
        deletion_baseline: str = "blur",
        faithfulness_budget: float | None = 0.05,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.methods = check_methods(methods)
        self.prefix = prefix.rstrip("/")
        # the curves' names: faith/<map>/... beside the default prefix, <prefix>/faith/<map>/... else
        self.curves_prefix = CURVES_PREFIX if self.prefix == "loc" else f"{self.prefix}/{CURVES_PREFIX}"
        self.batch_size = int(batch_size)
        self.gradient_layers = gradient_layers
        self.truncation = truncation
        self.truncation_per_channel = truncation_per_channel
        self.layer_norm = check_layer_norm(layer_norm)
        self.reuse_features = reuse_features
        self.cpu_threads = cpu_threads
        self.schedule = EpochSchedule(every_n_epochs)
        self.probes = RankingProbes(num_samples, seed)
        self.scorer = ProbeScorer(
            self.methods, per_branch, branch_overlap, max(0, int(num_faithfulness_samples)),
            max(0, int(num_gradient_samples)), float(tau), taus, float(iou_threshold),
            CurveOptions(
                int(deletion_samples), int(deletion_steps), deletion_baseline, int(seed), self.batch_size
            ),
        )
        self.budget = FaithfulnessBudget(faithfulness_budget)
        self.score_logger = ScoreLogger(self.prefix)
        self.warnings = OnceWarnings(type(self).__name__)
        self.last_results: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    def state_dict(self) -> dict[str, Any]:
        return joint_state(self.schedule, self.probes, self.budget)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_joint_state(state_dict, self.schedule, self.probes, self.budget)

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wanted = self.schedule.due(trainer) and self.reuse_features
        self.probes.start_capture(trainer, pl_module, self.warnings.warn, wanted)

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        self.probes.add(outputs, batch)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        captured = self.probes.take_captured()
        if not self.schedule.end_epoch(trainer):
            return
        inputs = self.probes.epoch_inputs(trainer, pl_module, self.warnings.warn)  # collective: every rank
        if inputs is None:
            return
        forward_threads = torch.get_num_threads()  # the masked queries' forward is a large batch
        with cpu_threads(self.cpu_threads, pl_module.device):
            results = self._score(trainer, pl_module, *inputs, captured, forward_threads)
        self.last_results = {k: float(v) for k, v in results.items()}
        self.score_logger.log(trainer, pl_module, results)

    # ------------------------------------------------------------------ the epoch's scores
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
        """This epoch's scores (the same names, in the same order, on every rank: ``compute()`` syncs)."""
        device = pl_module.device
        probes = self.probes.choose(provider, self.warnings.warn)
        if not probes:
            self.warnings.warn("no query has a true match in the gallery; nothing is logged")
            return {}
        flags = captured_flags(probes, captured, device)  # which process scores which probe: a collective
        everyone = trainer.strategy.all_gather(flags).reshape(-1, len(probes)) if trainer.world_size > 1 else flags[None]
        positions = owned_positions(everyone, trainer.global_rank)
        datamodule = trainer.datamodule
        mean, std = (datamodule.mean, datamodule.std) if isinstance(datamodule, ShowsImages) else (None, None)
        # Score-CAM masks the [0, 1] picture, as AD / IC do, in forwards of at most batch_size images
        explainer = ModelExplainer(
            pl_module, self.gradient_layers, self.truncation, self.truncation_per_channel, self.layer_norm,
            forward_batch_size=self.batch_size, mean=mean, std=std,
        )
        dataset = self.probes.dataset
        topk = pl_module.overlap_topk() if isinstance(pl_module, HasOverlapPenalty) else 0.2  # the OAP's k (Eq. 5)

        def load(indices: list[int]) -> dict[str, Any]:
            return load_items(dataset, indices, device)

        def embed_masked(images: Tensor) -> Tensor:
            with cpu_threads(forward_threads, device):
                return explainer.features(images).embedding

        # the validation's forwards: one per image of the evaluation set (queries and gallery; every rank's)
        forwards = self.scorer.perturbed_forwards(len(probes))
        faithfulness = self.budget.due(forwards, len(dataset), self.warnings.warn)
        scores = self.scorer.score(
            explainer, provider, gallery, probes, positions, dataset[probes[0]], captured, load, topk,
            self.batch_size, embed_masked, device, mean, std, faithfulness,
        )
        skip = () if faithfulness else ("faith", "curves")
        results = scores.compute_named(self.prefix, skip, self.curves_prefix)
        scores.reset()
        return results
