"""Few-shot contrast rows: why the predicted class beat the true class of a misclassified query.

The few-shot counterpart of a ranking list's contrast row (:func:`cama.viz.figures.contrast_row`). A
prototypical network puts a query ``q`` in the class of its nearest prototype (``p_c`` the mean support
embedding of class ``c``, dist-cam Eq. 7). A query it puts in class ``c-`` instead of its true class
``c+`` gets, under its row of the few-shot picture, a row *why class c- beat the true class*: the map
on the query of ``s(q, p_c-) - s(q, p_c+)``, through the ranking contrast's targets and differences
(a :class:`cama.viz.targets.Contrast` of the two prototypes, :func:`cama.viz.figures.summed_contrast_map`,
``docs/explanations.md#contrastive-ranking-maps``):

* RAM: exactly the difference of the query's RAMs against the two prototypes (cama-ram Eq. 10 is
  linear in its target, :func:`cama.explain.contrastive_ram`); its pixels sum to
  ``h w (<p_c-, q> - <p_c+, q>) / ||q||``;
* Dist-CAM and FAM: the difference of their maps against the two prototypes (FAM with each prototype
  as its one support, cosine, as in the ranking contrast);
* the layer CAMs: their map of the difference of the two cosine similarities
  (:func:`cama.explain.contrast_score`); ``cam`` and ``eigencam`` have none
  (:data:`cama.viz.methods.CLASS_METHODS`).

Each query's map is on its own signed scale (:func:`cama.explain.signed_display`, ``0.5`` is 0, above
favours the predicted class). Next to it: the first support of the true class (green frame). A query
classified right, or of unknown class, gets no row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cama.explain import signed_display
from cama.viz.figures import summed_contrast_map
from cama.viz.layout import Scale, upscale
from cama.viz.methods import CLASS_METHODS, LAYER_METHODS
from cama.viz.model_explainer import ModelExplainer
from cama.viz.pictures import GREEN, frame, heat_overlays
from cama.viz.targets import Contrast

__all__ = [
    "EPISODE_CONTRAST_LEGEND", "EPISODE_CONTRAST_LEGEND_LAYER", "EpisodeContrastRows", "episode_contrasts",
    "first_supports",
]

#: what the few-shot contrast rows' colours mean (appended to the picture's one-line legend): the
#: forward-only maps (signed) and the layer CAMs' (their [0, 1] maps of the difference); each on its own scale
EPISODE_CONTRAST_LEGEND = "why rows: s(q,p-) - s(q,p+), 0.5 = 0"
EPISODE_CONTRAST_LEGEND_LAYER = "why rows: map of s(q,p-) - s(q,p+), each on its own scale"


def first_supports(episode_labels: Tensor, is_query: Tensor, classes: Tensor) -> Tensor:
    """``[W]`` batch positions of the first support (in batch order) of each episode class in ``classes``."""
    labels, supports = episode_labels.to(classes.device), ~is_query.to(classes.device).bool()
    found = (labels[None] == classes[:, None]) & supports[None]  # [W, B]
    if not bool(found.any(dim=1).all()):
        raise ValueError(f"classes {classes.tolist()} must each have a support, the episode's are "
                         f"{sorted(set(labels[supports].tolist()))}")
    return found.to(torch.uint8).argmax(dim=1)  # the first True


@torch.no_grad()
def episode_contrasts(
    explainer: ModelExplainer, methods: Sequence[str], batch: Mapping[str, Tensor], refs: Any,
    probes: Tensor, target: Tensor, size: tuple[int, int],
) -> dict[str, Tensor]:
    """The contrast entries of a few-shot picture (:func:`cama.viz.episodes.episode_grid`) for the probe
    queries ``probes`` (``[P]`` query positions) that ``refs`` (:class:`cama.references.EpisodeReferences`)
    misclassifies against ``target`` (``[Q]`` true classes, ``-1`` unknown); empty when none is.

    Returns ``contrast_rows`` ``[W]`` (their positions in ``probes``), ``contrast_supports`` ``[W, 3, H, W]``
    (the first support of each true class, as ``batch["image"]``), ``contrast_similarities`` ``[W, 2]``
    (the cosine similarities ``s(q, p_c-)``, ``s(q, p_c+)``) and ``<method>/contrast`` ``[W, H, W]`` in
    ``[0, 1]`` for each method with a contrast (module docstring).
    """
    drawn = [m for m in methods if m not in CLASS_METHODS]
    target = target.to(refs.prediction.device)
    rows = ((refs.prediction != target) & (target >= 0))[probes].nonzero().squeeze(1)
    if rows.numel() == 0 or not drawn:
        return {}
    queries, images = probes[rows], batch["image"].to(refs.query_maps.device)
    features = explainer.features_from_maps(images[refs.query_index[queries]], [refs.query_maps[queries]])
    contrast = Contrast(refs.prototypes[refs.prediction[queries]], refs.prototypes[target[queries]])
    sides = (contrast.negative, contrast.positive)
    out = {
        "contrast_rows": rows,
        "contrast_supports": images[first_supports(batch["episode_labels"], batch["is_query"],
                                                   target[queries])],
        "contrast_similarities": torch.stack(
            [F.cosine_similarity(features.embedding.float(), side.float(), dim=1) for side in sides], dim=1),
    }
    for method in drawn:
        raw = summed_contrast_map(explainer, method, features, contrast)
        out[f"{method}/contrast"] = signed_display(raw, size, shared=False)
    return out


@dataclass(frozen=True)
class EpisodeContrastRows:
    """The rows of a few-shot picture under its misclassified queries (module docstring).

    Attributes:
        rows: ``[W]`` the probe rows (0-based, increasing) that get a row under them.
        maps: ``[W, H, W]`` in ``[0, 1]``, the contrast maps on those queries (:func:`episode_contrasts`).
        supports: ``uint8`` ``[W, 3, H, W]``, the first support of each true class.
        predicted, truth: ``[W]`` the predicted and the true class's texts (``class 3``).
        similarities: ``[W, 2]`` ``(s(q, p_c-), s(q, p_c+))``, drawn under the map, or None.
    """

    rows: Tensor
    maps: Tensor
    supports: Tensor
    predicted: Sequence[str]
    truth: Sequence[str]
    similarities: Tensor | None = None
    legend: str = EPISODE_CONTRAST_LEGEND

    @classmethod
    def of(cls, pictures: Mapping[str, Tensor], method: str, predicted: Sequence[str],
           truth: Sequence[str]) -> EpisodeContrastRows | None:
        """The rows of ``method`` from a few-shot picture's entries (:func:`episode_contrasts`, the supports
        as ``uint8``), or None when it has none; ``predicted``, ``truth``: every probe row's class texts."""
        if f"{method}/contrast" not in pictures:
            return None
        rows = pictures["contrast_rows"]
        legend = EPISODE_CONTRAST_LEGEND_LAYER if method in LAYER_METHODS else EPISODE_CONTRAST_LEGEND
        return cls(rows, pictures[f"{method}/contrast"], pictures["contrast_supports"],
                   [predicted[r] for r in rows.tolist()], [truth[r] for r in rows.tolist()],
                   pictures.get("contrast_similarities"), legend)

    def insert(
        self, tiles: Tensor, captions: list[list[str]], probes: Tensor, alpha: float, colormap: str,
        scale: Scale,
    ) -> tuple[Tensor, list[list[str]], list[str]]:
        """A probe grid's ``tiles`` ``[P, 2 + 2M, 3, h, w]`` and ``captions`` with a row under each of
        ``rows``: the true class's support (green) in the reference column, the map in the column of the
        probe's (summed) map, background elsewhere; and the row labels (``""`` for the probe rows)."""
        count, columns = tiles.shape[:2]
        rows = self.rows.to(torch.long).cpu()
        extra = torch.full((rows.numel(), *tiles.shape[1:]), 255, dtype=torch.uint8)
        map_column = 1 + (columns - 2) // 2
        extra[:, 1] = frame(upscale(self.supports, scale.factor), [GREEN] * rows.numel(), scale.frame).cpu()
        shown, maps = probes[rows.to(probes.device)], self.maps.to(probes.device)
        extra[:, map_column] = heat_overlays(shown, maps, alpha, colormap, scale=scale).cpu()
        texts = [[""] * columns for _ in range(rows.numel())]
        for j, text in enumerate(texts):
            text[1] = f"{self.truth[j]} (true)"
            if self.similarities is not None:
                text[map_column] = "s {:.3f} - {:.3f}".format(*self.similarities[j].tolist())
        order = torch.argsort(torch.cat([2 * torch.arange(count), 2 * rows + 1])).tolist()  # under its probe
        labels = [""] * count + [f"why {p} beat\nthe true class" for p in self.predicted]
        return (torch.cat([tiles, extra])[order], [(captions + texts)[i] for i in order],
                [labels[i] for i in order])
