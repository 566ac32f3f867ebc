"""Deletion and insertion curves of the queries ``explain.py`` explains (re-ID, retrieval): RISE's curves
(:mod:`cama.metrics.deletion`) of each method's summed map on the query -- against its top-ranked
image, as the pictures show it -- next to a random map's and a centred prior's, the callbacks'
(:class:`cama.map_scoring.CurveOptions`). The scores: the cosine similarity to that reference and,
when the images' identities or classes are known, the AP and the reciprocal rank of the first true
match over the whole gallery (:func:`cama.map_scoring.ranking_scores`), only the query perturbed.

:class:`QueryCurves` collects them query by query; :meth:`QueryCurves.write` draws ``curves.png`` (one
row per score, deletion | insertion, one line per map: the mean over the queries; :mod:`cama.viz.curves`)
and writes ``curves.json`` (the mean curves, and each map's AUCs with their 95% intervals,
:class:`cama.metrics.deletion.DeletionInsertion`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.io import write_png

from cama.map_scoring import RANKING_SCORES, CurveOptions, ranking_scores
from cama.metrics.deletion import CURVES, DeletionInsertion
from cama.metrics.ranking import EmbeddingSet
from cama.viz import Features, ModelExplainer, ProbeAgainst
from cama.viz.curves import curve_panels
from explain_command.common import write_json

__all__ = ["QueryCurves"]

SCORE_LABELS = {
    "": "cosine similarity to the reference",
    "ap": "AP over the gallery",
    "rr": "1 / rank of the first true match",
}


class QueryCurves:
    """The curves of the explained queries, one query at a time (module docstring).

    Args:
        methods: the methods explained.
        options: steps, baseline, seed and batch size (``samples``: the most queries it will see).
        ranked: whether the identities / classes are known (the AP and rank scores).
    """

    def __init__(self, methods: Sequence[str], options: CurveOptions, ranked: bool) -> None:
        self.methods = tuple(methods)
        self.options = options
        self.scores = RANKING_SCORES if ranked else RANKING_SCORES[:1]
        self.names: list[str] = []
        self.deletion: list[Tensor] = []
        self.insertion: list[Tensor] = []

    @torch.no_grad()
    def add(
        self, explainer: ModelExplainer, query: Features, reference: Tensor, gallery: EmbeddingSet,
        matches: Tensor, exclude: Tensor,
    ) -> None:
        """The curves of one ``query`` (its features, ``[1, ...]``) against its ``reference`` embedding
        ``[1, D]``, ranked among ``gallery`` with its true ``matches`` and ``exclude``-d images ``[1, G]``."""
        place = len(self.deletion)
        if place >= self.options.samples:
            raise ValueError(f"QueryCurves was made for {self.options.samples} queries")
        maps = {m: explainer.explain(m, query, ProbeAgainst(reference))[:, -1] for m in self.methods}
        of_embeddings = ranking_scores(reference, gallery, matches, exclude)
        width = len(self.scores)
        first = torch.zeros(1, dtype=torch.long, device=reference.device)
        intact = of_embeddings(query.embedding, first)[:, :width]
        self.names, deletion, insertion = self.options.curves(
            query.images, maps, torch.tensor([place]), query.maps[0].shape[-2:],
            lambda images, rows: of_embeddings(explainer.features(images).embedding, rows)[:, :width], intact,
        )
        self.deletion.append(deletion.cpu())
        self.insertion.append(insertion.cpu())

    def write(self, output: Path, title: str) -> Path | None:
        """``<output>/curves.png`` and ``curves.json`` of the queries added; None when there is none."""
        if not self.deletion:
            return None
        deletion, insertion = torch.cat(self.deletion), torch.cat(self.insertion)  # [Q, maps, steps + 1, S]
        summary: dict[str, Any] = {
            "steps": self.options.steps, "baseline": self.options.baseline, "queries": int(deletion.shape[0]),
            "scores": {name or "similarity": SCORE_LABELS[name] for name in self.scores}, "maps": {},
        }
        for j, name in enumerate(self.names):
            metric = DeletionInsertion(self.scores)
            metric.update(deletion[:, j], insertion[:, j])
            summary["maps"][name] = {
                **{k: float(v) for k, v in metric.compute().items()},
                **{f"{curve}_curve": values[:, j].mean(0).T.tolist()
                   for curve, values in zip(CURVES, (deletion, insertion))},
            }
        rows = []
        for s, score in enumerate(self.scores):
            label = SCORE_LABELS[score]
            rows.append([
                (f"{curve} · {label}",
                 {name: values[:, j, :, s].mean(0) for j, name in enumerate(self.names)},
                 f"fraction of pixels {'removed' if curve == 'deletion' else 'inserted'}")
                for curve, values in zip(CURVES, (deletion, insertion))
            ])
        options = self.options
        queries = deletion.shape[0]
        subtitle = f"{title} · mean of {queries} queries · {options.steps} steps · {options.baseline}"
        path = output / "curves.png"
        write_png(curve_panels(rows, subtitle), str(path))
        write_json(summary, output / "curves.json")
        return path
