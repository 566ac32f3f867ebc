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
for the summed map with the query's own RAM ``R_q^q`` and each gallery image's ``R_g^q``. Every
picture explains itself (:mod:`cama.viz.pictures`): a title ``epoch <e> · val · <method>``, column
headers, the identity (re-ID) or class (retrieval) and the distance under the images, a colour bar;
once per run ``explanations/README`` (TensorBoard text) says what each tag shows.

What each map is against its reference (per branch and summed) is documented in
:mod:`cama.viz.model_explainer`: Dist-CAM of the probe against the reference's embedding, RAM
``R_q^q`` on the probe and ``R_g^q`` on the reference, FAM with the reference as the single
support, the gradient CAMs of the cosine similarity to the reference; on the reference the roles are
swapped (the probe is its reference). ``cam`` explains the training identity the classifier
predicts (re-ID test identities are unseen).

The probes' feature maps are kept from the ``outputs`` of the model's own validation step
(:class:`~callbacks.base.ProbeCapture`); only the gallery images shown are forwarded again (one
batch, on torch's thread count; the rest of the callback's work runs on ``cpu_threads``).
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

from callbacks.base import RankingCallback, RankingProbes, cpu_threads, load_items, stack_captured
from callbacks.image_sink import ImageSink, logging_step
from cama.metrics.distances import pairwise_distance
from cama.metrics.ranking import EmbeddingSet
from cama.references import ReIDReferences
from cama.viz import (
    ModelExplainer, ProbeAgainst, check_methods, picture_title, probe_grid, probe_grid_legend, ranking_figure, ranking_legend, to_uint8,
)

__all__ = ["ExplanationImages"]


class ExplanationImages(RankingCallback):
    """Log explanation maps of fixed probes (and ranking lists) every validation epoch.

    Args:
        methods: any of ``cam``, ``dist_cam``, ``ram``, ``fam``, ``gradcam``, ``gradcam++``,
            ``layercam``, ``fullgrad``.
        num_probes: probe queries (rows of each grid).
        seed: seed of the probe choice (a private generator; the global RNG is untouched).
        every_n_epochs: run on every n-th validation epoch (the first one always runs).
        num_ranking_queries: ranking lists logged (the first probes); 0 disables them.
        top_k: gallery images per ranking list.
        ranking_method: the method drawn on the ranking lists (cama-ram Fig. 4/8 use ``ram``).
        gradient_layers: layer names for the gradient methods (default: each branch's last block).
        truncation: delta of the truncation trick (ltgrad-cam Eq. 9-11), None: off.
        truncation_per_channel: take the truncation percentile per channel.
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
        gradient_layers: list[str] | None = None,
        truncation: float | None = None,
        truncation_per_channel: bool = False,
        alpha: float = 0.5,
        colormap: str = "jet",
        draw_boxes: bool = True,
        save_png: bool = False,
        tag_prefix: str = "explanations",
        cpu_threads: int | None = 1,
    ) -> None:
        super().__init__(every_n_epochs, cpu_threads)
        if num_probes < 1 or top_k < 1 or num_ranking_queries < 0:
            raise ValueError("num_probes and top_k must be >= 1, num_ranking_queries >= 0")
        self.methods = check_methods(methods)
        self.ranking_method = check_methods([ranking_method])[0] if ranking_method else None
        self.num_probes = int(num_probes)
        self.seed = int(seed)
        self.num_ranking_queries = (
            min(int(num_ranking_queries), self.num_probes) if self.ranking_method else 0
        )
        self.top_k = int(top_k)
        self.gradient_layers = gradient_layers
        self.truncation = truncation
        self.truncation_per_channel = truncation_per_channel
        self.alpha = float(alpha)
        self.colormap = colormap
        self.draw_boxes = draw_boxes
        self.save_png = save_png
        self.tag_prefix = tag_prefix
        self.probes = RankingProbes(self.num_probes, self.seed)
        self.last_written: list[str] = []  # PNG paths of the last epoch (rank zero)

    # ------------------------------------------------------------------ state (resume: same probes)
    @property
    def state_key(self) -> str:
        return self._generate_state_key(tag_prefix=self.tag_prefix)

    @property
    def probe_indices(self) -> list[int]:
        return self.probes.indices

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "probe_indices": list(self.probes.indices)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.probes.indices = [int(i) for i in state_dict.get("probe_indices", [])]

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._capture = None
        if self.due(trainer) and trainer.is_global_zero:  # the probes' maps, from the model's own step
            self.start_capture(trainer, pl_module, self.probes)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        captured = self.stop_capture()
        if not self.end_epoch(trainer):
            return
        inputs = self.epoch_inputs(trainer, pl_module, self.probes)  # collective: every rank
        if inputs is None:
            return
        provider, gallery = inputs
        sink = ImageSink.from_trainer(trainer, save_png=self.save_png, folder=self.tag_prefix)  # may broadcast
        probes = self.probes.choose(provider, self.warn_once)
        if trainer.is_global_zero and probes:
            forward_threads = torch.get_num_threads()  # the gallery images' forward is a batch of images
            with self.threads(pl_module):
                self.last_written = self._render(
                    trainer, pl_module, provider, gallery, sink, probes, captured, forward_threads
                )

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
    ) -> list[str]:
        device = pl_module.device
        dataset = self.probes.dataset
        explainer = ModelExplainer(pl_module, self.gradient_layers, self.truncation, self.truncation_per_channel)
        datamodule = trainer.datamodule
        if all(i in captured for i in probes):  # maps kept from the model's own validation step
            batch, maps = stack_captured(captured, probes, device)
            probe_features = explainer.features_from_maps(batch["image"], maps)
        else:
            batch = load_items(dataset, probes, device)
            probe_features = explainer.features(batch["image"])
        list_length = self.top_k if self.num_ranking_queries else 1
        references, matches = provider.rank(
            gallery.to(device), probe_features.embedding, torch.tensor(probes, device=device), list_length
        )
        keep = (references[:, 0] >= 0).nonzero().squeeze(1)
        if keep.numel() == 0:
            return []
        references, matches = references[keep], matches[keep]
        probe_features = probe_features.select(keep)
        probe_boxes = batch["box"][keep] if self.draw_boxes and "box" in batch else None

        # one forward for every gallery image shown: references and ranking lists
        needed = sorted(
            {int(r) for r in references[:, 0].tolist()}
            | {int(r) for r in references[: self.num_ranking_queries].flatten().tolist() if r >= 0}
        )
        gallery_batch = load_items(dataset, needed, device)
        with cpu_threads(forward_threads, device):
            gallery_features = explainer.features(gallery_batch["image"])
        position = {index: j for j, index in enumerate(needed)}
        reference_positions = [position[int(r)] for r in references[:, 0].tolist()]
        reference_features = gallery_features.select(reference_positions)
        reference_boxes = (
            gallery_batch["box"][reference_positions] if self.draw_boxes and "box" in gallery_batch else None
        )

        probe_pictures = to_uint8(probe_features.images, datamodule)
        gallery_pictures = to_uint8(gallery_features.images, datamodule)
        reference_pictures = gallery_pictures[reference_positions]
        step, epoch = logging_step(trainer), trainer.current_epoch
        self.log_readme(sink, self.readme(provider), step, self.tag_prefix)
        kind = "id" if isinstance(provider, ReIDReferences) else "class"
        labels = provider.labels.to(device)

        def label_texts(indices: Any) -> list[str]:
            return [f"{kind} {int(c)}" for c in labels[torch.as_tensor(indices, device=device)].tolist()]

        probe_labels = label_texts([probes[i] for i in keep.tolist()])
        reference_labels = label_texts(references[:, 0])
        distances = pairwise_distance(
            probe_features.embedding, reference_features.embedding, gallery.distance
        ).diagonal()
        written: list[str] = []
        for method in self.methods:
            probe_maps = explainer.explain(method, probe_features, ProbeAgainst(reference_features.embedding))
            reference_maps = explainer.explain(method, reference_features, probe_features.embedding)
            picture = probe_grid(
                probe_pictures,
                reference_pictures,
                probe_maps,
                reference_maps,
                matches[:, 0],
                self.alpha,
                self.colormap,
                probe_boxes,
                reference_boxes,
                title=picture_title(method, epoch),
                probe_labels=probe_labels,
                reference_labels=reference_labels,
                distances=distances,
            )
            written += sink.write(method, picture, step, epoch, prefix=self.tag_prefix)

        method = self.ranking_method
        for j in range(min(self.num_ranking_queries, references.shape[0])):
            valid = references[j] >= 0
            listed = [position[int(r)] for r in references[j][valid].tolist()]
            listed_features = gallery_features.select(listed)
            query_features = probe_features.select([j])
            query_target = ProbeAgainst(reference_features.embedding[j : j + 1])
            query_maps = explainer.explain(method, query_features, query_target)[0]
            listed_maps = explainer.explain(
                method, listed_features, query_features.embedding.expand(len(listed), -1)
            )
            picture = ranking_figure(
                probe_pictures[j],
                gallery_pictures[listed],
                matches[j][valid],
                query_maps,
                listed_maps,
                self.alpha,
                self.colormap,
                title=picture_title(method, epoch, subject=f"query {j}"),
                query_label=probe_labels[j],
                gallery_labels=label_texts(references[j][valid]),
                distances=pairwise_distance(query_features.embedding, listed_features.embedding, gallery.distance)[0],
            )
            written += sink.write(f"ranking/query_{j}", picture, step, epoch, prefix=self.tag_prefix)
        return written

    def readme(self, provider: Any) -> str:
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
                f"maps: {self.ranking_method}): " + ranking_legend()
            )
        text.append(
            "Each picture's title gives the epoch; its step is the step of the epoch's scalars (`val/*`)."
        )
        return "\n\n".join(text)
