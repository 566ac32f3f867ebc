"""``ExplanationImages``: where the model looks, as pictures, every validation epoch.

For re-ID, the probes are queries (chosen once, deterministically, among the queries that have a
true match; kept in the callback's ``state_dict`` so a resumed run shows the same ones) and the
reference of a probe is given by the task (:mod:`cama.references`: for re-ID its top-ranked gallery
image under the Market-1501 protocol, for retrieval its nearest other image), ranked with the
embeddings the model computed in its own validation loop (``evaluation_embeddings()``,
:class:`cama.protocols.RankingTask`). Per enabled method the callback logs one grid (``explanations/<method>``):
one row per probe -- probe | reference (green frame: true match, red: false) | the method's maps on
the probe (each branch, then summed) | its maps on the reference (the same). And for the first
``num_ranking_queries`` probes a ranking list (``explanations/ranking/query_<j>``, cama-ram Fig. 4 /
Fig. 8): the query and its ``top_k`` gallery images framed green/red, then a row per branch and one
for the summed map with the query's own RAM ``R_q^q`` and each gallery image's ``R_g^q``; when the
list's first false match comes before its first true match (``contrastive``, on by default), a last
row *why rank r beat the true match*: the map of ``s(q, g-) - s(q, g+)`` on the query, the false match
and the true match (:mod:`cama.explain.contrastive`; for RAM three maps of features already
computed, for a gradient method three more backward passes). Maps over training
(``over_training_epochs``, :mod:`callbacks.maps_over_training`): every method's summed map of each
probe, against the probe's fixed reference (its first), is compared with the previous drawn
epoch's, ``maps_drift/<method>/spearman`` (Spearman rank correlation, averaged over the probes),
and ``explanations/over_training`` shows the first probe's maps across the kept epochs (from the
second drawn epoch on). Every picture explains itself (:mod:`cama.viz.pictures`): a title
``epoch <e> · val · <method>``, column headers, the identity (re-ID) or class (retrieval) and the distance under the images, a colour bar;
once per run ``explanations/README`` (TensorBoard text) says what each tag shows.

What each map is against its reference (per branch and summed) is documented in
:mod:`cama.viz.model_explainer`: Dist-CAM of the probe against the reference's embedding, RAM
``R_q^q`` on the probe and ``R_g^q`` on the reference, FAM with the reference as the single
support, the gradient CAMs of the cosine similarity to the reference; on the reference the roles are
swapped (the probe is its reference). ``cam`` explains the training identity the classifier
predicts (re-ID test identities are unseen).

The probes' feature maps are kept from the ``outputs`` of the model's own validation step
(:class:`~callbacks.base.ProbeCapture`); only the gallery images shown are forwarded again (one
batch, on torch's thread count; the rest of the callback's work runs on ``cpu_threads``). The
pictures are :func:`cama.viz.figures.probe_grid_picture` and :func:`cama.viz.figures.ranking_picture`,
the ones ``explain.py`` draws; the callback decides when (:class:`~callbacks.base.EpochSchedule`),
which images (:class:`~callbacks.base.RankingProbes`) and where the pictures go.
Pictures go to every ``TensorBoardLogger``, in the run ``<log_dir>/explanations`` of their own
(:class:`~callbacks.image_sink.ImageSink`), or, without one, to
``<log_dir>/explanations/epoch_XXX/*.png``. All image work runs on rank zero; the only collective
(gathering the gallery embeddings) runs on every rank. The sanity-check epoch is skipped.
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
    OnceText,
    OnceWarnings,
    RankingProbes,
    cpu_threads,
    joint_state,
    load_items,
    load_joint_state,
)
from callbacks.image_sink import ImageSink, logging_step
from callbacks.maps_over_training import MapsOverTraining, against_fixed_references
from callbacks.score_logging import ScoreLogger
from cama.map_scoring import complete_features
from cama.metrics.distances import pairwise_distance
from cama.metrics.ranking import EmbeddingSet
from cama.references import ReIDReferences
from cama.protocols import ShowsImages
from cama.explain import check_layer_norm
from cama.viz import (
    ModelExplainer,
    check_methods,
    picture_title,
    probe_grid_legend,
    ranking_legend,
    to_uint8,
)
from cama.viz.epoch_strip import epoch_strip_legend
from cama.viz.methods import CLASS_METHODS
from cama.viz.figures import Shown, probe_grid_maps, probe_grid_picture, ranking_picture

__all__ = ["ExplanationImages"]


class ExplanationImages(Callback):
    """Log explanation maps of fixed probes (and ranking lists) every validation epoch.

    Args:
        methods: any of :data:`cama.viz.METHODS`: ``cam``, ``dist_cam``, ``ram``, ``fam``, ``gradcam``,
            ``gradcam++``, ``layercam``, ``fullgrad``, ``hirescam``, ``xgradcam``, ``scorecam``,
            ``ablationcam``, ``eigencam``.
        num_probes: probe queries (rows of each grid).
        seed: seed of the probe choice (a private generator; the global RNG is untouched).
        every_n_epochs: run on every n-th validation epoch (the first one always runs).
        num_ranking_queries: ranking lists logged (the first probes); 0 disables them.
        top_k: gallery images per ranking list.
        ranking_method: the method drawn on the ranking lists (cama-ram Fig. 4/8 use ``ram``).
        contrastive: the ranking lists' row *why rank r beat the true match* (module docstring).
        over_training_epochs: maps over training: the most epochs the strip keeps; 0: off (no
            ``maps_drift/*`` scalars, no strip).
        gradient_layers: layer names for the gradient methods (default: each branch's last block).
        truncation: delta of the truncation trick (ltgrad-cam Eq. 9-11), None: off.
        truncation_per_channel: take the truncation percentile per channel.
        layer_norm: the layerization of several layers (:func:`cama.explain.gradient_cam`): ``"minmax"``
            normalises each layer's map before the sum, ``"none"`` sums them raw (ltgrad-cam Eq. 8).
        alpha: heat-map opacity of the overlays.
        colormap: ``"jet"`` or ``"turbo"``.
        draw_boxes: draw the ground-truth person box on the overlays when the data has one.
        save_png: also write PNGs when a TensorBoard logger is present.
        tag_prefix: TensorBoard tag prefix (and PNG folder name).
        cpu_threads: intra-op threads for the callback's own work on CPU (small batches run
            fastest on one); ``None`` keeps torch's setting.
    """

    def __init__(
        self,
        methods: Sequence[str] = ("dist_cam", "ram", "fam"),
        num_probes: int = 4,
        seed: int = 0,
        every_n_epochs: int = 1,
        num_ranking_queries: int = 2,
        top_k: int = 10,
        ranking_method: str | None = "ram",
        contrastive: bool = True,
        over_training_epochs: int = 12,
        gradient_layers: list[str] | None = None,
        truncation: float | None = None,
        truncation_per_channel: bool = False,
        layer_norm: str = "minmax",
        alpha: float = 0.5,
        colormap: str = "jet",
        draw_boxes: bool = True,
        save_png: bool = False,
        tag_prefix: str = "explanations",
        cpu_threads: int | None = 1,
    ) -> None:
        if num_probes < 1:
            raise ValueError(f"num_probes must be >= 1, got {num_probes}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if num_ranking_queries < 0:
            raise ValueError(f"num_ranking_queries must be >= 0, got {num_ranking_queries}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if over_training_epochs == 1 or over_training_epochs < 0:
            raise ValueError(f"over_training_epochs must be 0 (off) or >= 2, got {over_training_epochs}")
        self.methods = check_methods(methods)
        self.ranking_method = check_methods([ranking_method])[0] if ranking_method else None
        self.num_ranking_queries = min(int(num_ranking_queries), int(num_probes)) if self.ranking_method else 0
        self.top_k = int(top_k)
        self.contrastive = bool(contrastive) and self.ranking_method not in CLASS_METHODS  # cam: no contrast
        self.over_training = MapsOverTraining(over_training_epochs) if over_training_epochs else None
        self.drift_logger = ScoreLogger("maps_drift")
        self.gradient_layers = gradient_layers
        self.truncation = truncation
        self.truncation_per_channel = truncation_per_channel
        self.layer_norm = check_layer_norm(layer_norm)
        self.alpha = float(alpha)
        self.colormap = colormap
        self.draw_boxes = draw_boxes
        self.save_png = save_png
        self.tag_prefix = tag_prefix
        self.cpu_threads = cpu_threads
        self.schedule = EpochSchedule(every_n_epochs)
        self.probes = RankingProbes(num_probes, seed)
        self.warnings = OnceWarnings(type(self).__name__)
        self.readme = OnceText()
        self.last_written: list[str] = []  # PNG paths of the last epoch (rank zero)

    # ------------------------------------------------------------------ state (resume: same probes)
    @property
    def state_key(self) -> str:
        return self._generate_state_key(tag_prefix=self.tag_prefix)

    def state_dict(self) -> dict[str, Any]:
        return joint_state(self.schedule, self.probes, *self._history())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_joint_state(state_dict, self.schedule, self.probes, *self._history())

    def _history(self) -> list[MapsOverTraining]:
        return [self.over_training] if self.over_training is not None else []

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wanted = self.schedule.due(trainer) and trainer.is_global_zero  # the probes' maps, from the model's own step
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
        provider, gallery = inputs
        sink = ImageSink.from_trainer(trainer, save_png=self.save_png, folder=self.tag_prefix)  # may broadcast
        probes = self.probes.choose(provider, self.warnings.warn)
        drift: dict[str, Tensor] = {}
        if trainer.is_global_zero and probes:
            forward_threads = torch.get_num_threads()  # the gallery images' forward is a batch of images
            with cpu_threads(self.cpu_threads, pl_module.device):
                self.last_written, drift = self._render(
                    trainer, pl_module, provider, gallery, sink, probes, captured, forward_threads
                )
        if self.over_training is not None:
            # The drift comes from rank zero's maps alone. Its scores go to every process, which logs them
            # as the other callbacks log theirs: the same value on every rank, sync_dist=False (nothing
            # to reduce), so every rank's callback_metrics hold them (a monitor sees them on every rank).
            drift = trainer.strategy.broadcast(drift, src=0)
            self.drift_logger.log(trainer, pl_module, {k: v.to(pl_module.device) for k, v in drift.items()})

    # ------------------------------------------------------------------ rank-zero image work
    @torch.no_grad()
    def _render(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        provider: Any,
        gallery: EmbeddingSet,
        sink: ImageSink,
        probes: list[int],
        captured: dict[int, Any],
        forward_threads: int | None = None,
    ) -> tuple[list[str], dict[str, Tensor]]:
        """Draw this epoch's pictures and hand them to ``sink``; the paths of the PNGs written and the
        maps' drift (:meth:`MapsOverTraining.update`, on the CPU; empty without maps over training)."""
        device = pl_module.device
        dataset = self.probes.dataset
        shows = trainer.datamodule
        mean, std = (shows.mean, shows.std) if isinstance(shows, ShowsImages) else (None, None)
        explainer = ModelExplainer(  # Score-CAM masks the [0, 1] picture, as the scoring callbacks do
            pl_module, self.gradient_layers, self.truncation, self.truncation_per_channel, self.layer_norm,
            mean=mean, std=std,
        )
        captions = Captions(provider, device)
        shown, references, matches, kept = self._ranked_probes(
            explainer, provider, gallery.to(device), probes, captured, captions, device, trainer.datamodule
        )
        if shown is None:
            return [], {}
        lists = self._ranking_lists(provider, gallery, shown, kept, references, matches)
        current = [int(r) for r in references[:, 0].tolist()]
        history = self.over_training
        fixed = history.fixed_references(kept, current) if history is not None else []
        # one forward for every gallery image shown or explained against: references, ranking lists and
        # the fixed references of maps over training
        needed = sorted(set(current) | {i for row, _, _ in lists for i in row} | set(fixed))
        batch = load_items(dataset, needed, device)
        with cpu_threads(forward_threads, device):
            features = explainer.features(batch["image"])
        boxes = batch["box"] if self.draw_boxes and "box" in batch else None
        shown_gallery = Shown(features, to_uint8(features.images, trainer.datamodule), captions(needed), boxes)
        position = {index: j for j, index in enumerate(needed)}
        step, epoch = logging_step(trainer), trainer.current_epoch
        self.readme.write(sink, "README", self.readme_text(provider), step, self.tag_prefix)
        shown_references = shown_gallery.select([position[r] for r in current])
        distances = pairwise_distance(
            shown.features.embedding, shown_references.features.embedding, gallery.distance
        ).diagonal()
        written: list[str] = []
        summed: dict[str, Tensor] = {}  # each method's summed map on the probes (maps over training)
        for method in self.methods:
            maps = probe_grid_maps(explainer, method, shown, shown_references)
            picture = probe_grid_picture(
                explainer, method, shown, shown_references, matches[:, 0], distances,
                picture_title(method, epoch), self.alpha, self.colormap, maps=maps,
            )
            written += sink.write(method, picture, step, epoch, prefix=self.tag_prefix)
            summed[method] = maps[0][:, -1]
        drift: dict[str, Tensor] = {}
        if history is not None:
            against = shown_gallery.features.select([position[r] for r in fixed]).embedding
            summed = against_fixed_references(explainer, summed, shown.features, current, fixed, against)
            drift = history.update(epoch, kept, summed)
            subject = shown.labels[0] if shown.labels else ""
            title = picture_title("maps over training", epoch, subject=subject)
            strip = history.picture(shown.pictures[0], self.alpha, self.colormap, title)
            if strip is not None:
                written += sink.write("over_training", strip, step, epoch, prefix=self.tag_prefix)
        for j, (indices, flags, ranks) in enumerate(lists):
            listed = shown_gallery.select([position[i] for i in indices])
            query = shown.select([j])
            distances = pairwise_distance(
                query.features.embedding, listed.features.embedding, gallery.distance)
            picture = ranking_picture(
                explainer, self.ranking_method, query, listed, flags, distances[0],
                picture_title(self.ranking_method, epoch, subject=f"query {j}"), self.alpha, self.colormap,
                self.contrastive, ranks,
            )
            written += sink.write(f"ranking/query_{j}", picture, step, epoch, prefix=self.tag_prefix)
        return written, drift

    def _ranking_lists(
        self, provider: Any, gallery: EmbeddingSet, shown: Shown, kept: list[int], references: Tensor,
        matches: Tensor,
    ) -> list[tuple[list[int], Tensor, list[int]]]:
        """Each ranking list's dataset indices, match flags and ranks (1-based): its top k and, for the
        contrast row, the first true match after them when none is among them."""
        count = min(self.num_ranking_queries, references.shape[0])
        valid = references[:count] >= 0
        # the lists without a true match: the whole gallery ranked for all of them at once
        missing = [j for j in range(count) if self.contrastive and not bool(matches[j][valid[j]].any())]
        appended: dict[int, tuple[int, int]] = {}
        if missing:
            rank, index = provider.first_true_match(
                gallery, shown.features.embedding[missing], torch.tensor([kept[j] for j in missing]))
            appended = {j: (int(r), int(i)) for j, r, i in zip(missing, rank.tolist(), index.tolist()) if r >= 0}
        out = []
        for j in range(count):
            indices, flags = [int(r) for r in references[j][valid[j]].tolist()], matches[j][valid[j]]
            ranks = list(range(1, len(indices) + 1))
            if j in appended:
                rank_j, index_j = appended[j]
                indices, ranks = indices + [index_j], ranks + [rank_j + 1]
                flags = torch.cat([flags, flags.new_ones(1)])
            out.append((indices, flags, ranks))
        return out

    def _ranked_probes(
        self,
        explainer: ModelExplainer,
        provider: Any,
        gallery: EmbeddingSet,
        probes: list[int],
        captured: dict[int, Any],
        captions: Captions,
        device: torch.device,
        shows: Any,
    ) -> tuple[Shown | None, Tensor, Tensor, list[int]]:
        """The probes that have a reference, as shown, with their ranked lists ``[P, k]`` (dataset
        indices, ``-1`` past the end; ``k`` = ``top_k`` with ranking lists, else 1), match flags and
        dataset indices. Their maps come from the validation step when it returned every probe's, else
        one forward."""
        every = captured if all(i in captured for i in probes) else {}
        features, batch, _ = complete_features(
            explainer, probes, every, lambda indices: load_items(self.probes.dataset, indices, device), device
        )
        list_length = self.top_k if self.num_ranking_queries else 1
        references, matches = provider.rank(gallery, features.embedding, torch.tensor(probes, device=device), list_length)
        keep = (references[:, 0] >= 0).nonzero().squeeze(1)
        if keep.numel() == 0:
            return None, references, matches, []
        features = features.select(keep)
        boxes = batch["box"][keep] if self.draw_boxes and "box" in batch else None
        kept = [probes[i] for i in keep.tolist()]
        shown = Shown(features, to_uint8(features.images, shows), captions(kept), boxes)
        return shown, references[keep], matches[keep], kept

    def readme_text(self, provider: Any) -> str:
        """The TensorBoard text of the run: what each image tag shows (Markdown)."""
        reid = isinstance(provider, ReIDReferences)
        reference = "its top-ranked gallery image" if reid else "its nearest other image"
        text = [
            f"**{self.tag_prefix}/<method>** ({', '.join(self.methods)}): "
            + probe_grid_legend(reference=reference),
        ]
        if self.num_ranking_queries:
            text.append(
                f"**{self.tag_prefix}/ranking/query_<j>** (the first {self.num_ranking_queries} probes, "
                f"maps: {self.ranking_method}): " + ranking_legend(self.contrastive)
            )
        if self.over_training is not None:
            text.append(
                f"**{self.tag_prefix}/over_training** (from the second epoch drawn): "
                + epoch_strip_legend(self.over_training.max_epochs)
                + " The scalars `maps_drift/<method>/spearman`: the Spearman rank correlation of each "
                "probe's summed map (against its first reference, kept) with the previous drawn epoch's, "
                "averaged over the probes."
            )
        text.append(
            "Each picture's title gives the epoch; its step is the step of the epoch's scalars (`val/*`)."
        )
        return "\n\n".join(text)


class Captions:
    """The caption under a dataset item's image: its identity (re-ID, ``id 3``) or class (``class 7``)."""

    def __init__(self, provider: Any, device: torch.device) -> None:
        self.kind = "id" if isinstance(provider, ReIDReferences) else "class"
        self.labels = provider.labels.to(device)
        self.device = device

    def __call__(self, indices: Any) -> list[str]:
        labels = self.labels[torch.as_tensor(indices, device=self.device)]
        return [f"{self.kind} {int(c)}" for c in labels.tolist()]
