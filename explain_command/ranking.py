"""Re-ID and retrieval in ``explain.py``: each query, its top-k ranked images and their maps.

A query is explained as the callbacks explain their probes (cama-ram Fig. 4 / Fig. 8): on the query,
RAM is its own ``R_q^q`` and every other method is against the top-1 image; on each ranked image
the map is against the query (RAM ``R_g^q``). Two sources of images:

* :class:`DatasetRanking` -- a data module's evaluation set, ranked by the task's reference provider
  (:mod:`cama.references`: the Market-1501 protocol for re-ID, every other image for retrieval);
* :class:`FileRanking` -- query and gallery files; Market-1501 file names (``0002_c1...``) give
  identities and cameras (the re-ID protocol, green/red frames), other names none (everything but
  the query's own file is ranked, no frames).

With ``curves`` (``--deletion_steps``) the queries' deletion / insertion curves are drawn too
(:mod:`explain_command.curves`): each data source says which gallery images are a query's true
matches and which it never ranks (``match_masks``). With ``sensitivity`` (``--max_sensitivity``) the
queries' max-sensitivity is written to ``sensitivity.json`` (:mod:`explain_command.sensitivity`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import default_collate
from tqdm import tqdm

from callbacks.sanity_checks import maps_against
from cama.map_scoring import CurveOptions
from cama.metrics.distances import pairwise_distance
from cama.metrics.ranking import EmbeddingSet, reid_excluded, top_k
from cama.metrics.rerank import re_ranked_distances
from cama.protocols import ShowsImages
from cama.viz import ModelExplainer, picture_title, to_uint8
from cama.viz.figures import Shown, ranking_picture
from explain_command.common import MARKET_NAME, FileImages, write_json, write_picture
from explain_command.curves import QueryCurves
from explain_command.sensitivity import QuerySensitivity, SensitivityOptions

__all__ = ["DatasetRanking", "FileRanking", "explain_rankings"]


class DatasetRanking:
    """A data module's evaluation set, ranked by the task's reference ``provider``."""

    def __init__(self, dataset: Any, provider: Any, shows: Any) -> None:
        self.dataset, self.provider, self.shows = dataset, provider, shows
        self.reid = hasattr(dataset, "num_query")
        size = len(dataset)
        self.gallery = list(range(int(dataset.num_query), size) if self.reid else range(size))
        self.labels = provider.labels

    def load(self, indices: Sequence[int], device: torch.device) -> Tensor:
        batch = default_collate([self.dataset[int(i)] for i in indices])
        return batch["image"].to(device)

    known = True  # the labels are the data set's

    def gallery_set(self, embeddings: Tensor) -> EmbeddingSet:
        """The gallery's ``embeddings`` with their labels and dataset indices."""
        return EmbeddingSet(embeddings, self.labels[self.gallery].to(embeddings.device),
                            torch.tensor(self.gallery, device=embeddings.device))

    def match_masks(self, index: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``[1, G]`` bool: the gallery images that are item ``index``'s true matches, and those it never
        ranks (the provider's rule)."""
        gallery = self.gallery_set(torch.zeros(len(self.gallery), 0, device=device))
        probe = torch.tensor([index], device=device)
        matches = self.labels.to(device)[probe][:, None] == gallery.labels[None, :]
        return matches, self.provider.excluded(probe, gallery)

    def rank(
        self, embeddings: Tensor, query: Tensor, index: int, k: int, distances: Tensor | None = None
    ) -> tuple[list[int], list[bool] | None]:
        """The dataset indices of the ``k`` images ``query`` (``[1, D]``, item ``index``) ranks first
        among the gallery ``embeddings`` (or by ``distances`` ``[1, G]``), and whether each is a true match."""
        gallery = self.gallery_set(embeddings)
        found, matches = self.provider.rank(gallery, query, torch.tensor([index], device=query.device), k, distances)
        keep = found[0] >= 0
        return found[0][keep].tolist(), matches[0][keep].tolist()

    def label_text(self, index: int) -> str:
        """The identity (re-ID) or class (retrieval) of item ``index``, as drawn under its image."""
        return f"{'id' if self.reid else 'class'} {int(self.labels[index])}"

    def name(self, index: int) -> str:
        label = int(self.labels[index])
        if not self.reid:
            return f"image{index:05d}_class{label}"
        kind = "query" if index < int(self.dataset.num_query) else "gallery"
        return f"{kind}{index:05d}_pid{label}_cam{int(self.provider.camids[index])}"


class FileRanking:
    """Query files then gallery files, as one indexed set."""

    def __init__(self, queries: list[Path], gallery: list[Path], image_size: Sequence[int]) -> None:
        self.shows = FileImages(queries + gallery, image_size)
        self.files = self.shows.files
        self.gallery = list(range(len(queries), len(self.files)))
        ids = [MARKET_NAME.match(p.name) for p in self.files]
        self.known = all(ids)
        self.labels = torch.tensor([int(m.group(1)) if m else -2 for m in ids])
        self.cameras = torch.tensor([int(m.group(2)) - 1 if m else -1 for m in ids])

    def load(self, indices: Sequence[int], device: torch.device) -> Tensor:
        return self.shows.images(indices, device)

    def gallery_set(self, embeddings: Tensor) -> EmbeddingSet:
        """The gallery's ``embeddings`` with their identities (``-2`` where the names give none)."""
        device = embeddings.device
        return EmbeddingSet(embeddings, self.labels[self.gallery].to(device),
                            torch.tensor(self.gallery, device=device), self.cameras[self.gallery].to(device))

    def match_masks(self, index: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """As :meth:`DatasetRanking.match_masks`: the Market-1501 protocol when the file names give
        identities, else every file but the query's own and junk ranked and no true match."""
        g_labels = self.labels[self.gallery].to(device)
        if self.known:  # the Market-1501 protocol
            exclude = reid_excluded(self.labels[index : index + 1].to(device), self.cameras[index : index + 1].to(device),
                                    g_labels, self.cameras[self.gallery].to(device))
        else:  # unknown identities: rank everything, junk files (pid -1) excepted
            exclude = (g_labels == -1)[None].clone()
        exclude |= torch.tensor([[self.files[index] == self.files[g] for g in self.gallery]], device=device)
        matches = (g_labels == self.labels[index])[None] & torch.tensor(self.known, device=device)
        return matches, exclude

    def rank(
        self, embeddings: Tensor, query: Tensor, index: int, k: int, distances: Tensor | None = None
    ) -> tuple[list[int], list[bool] | None]:
        """As :meth:`DatasetRanking.rank`; ``None`` flags when the file names give no identities."""
        device = embeddings.device
        g_labels = self.labels[self.gallery].to(device)
        _, exclude = self.match_masks(index, device)
        rows = top_k(query, embeddings, k, exclude=exclude, distances=distances)[0]
        rows = rows[rows >= 0]
        found = [self.gallery[r] for r in rows.tolist()]
        flags = (g_labels[rows] == self.labels[index]).tolist() if self.known else None
        return found, flags

    def label_text(self, index: int) -> str:
        """The identity of a Market-1501 file name; '' when the names give none."""
        return f"id {int(self.labels[index])}" if self.known else ""

    def name(self, index: int) -> str:
        return self.files[index].stem


@torch.no_grad()
def _embed(explainer: ModelExplainer, data: Any, indices: list[int], batch_size: int, device: torch.device,
           progress: bool) -> Tensor:
    chunks = []
    for start in tqdm(range(0, len(indices), batch_size), desc="gallery", disable=not progress, unit="batch"):
        chunks.append(explainer.features(data.load(indices[start : start + batch_size], device)).embedding.float())
    return torch.cat(chunks) if chunks else torch.zeros(0, 0, device=device)


def _reranked(explainer: ModelExplainer, data: Any, queries: list[int], gallery: Tensor, batch_size: int,
              device: torch.device, progress: bool) -> Tensor:
    """k-reciprocal re-ranked distances ``[Q, G]`` of the explained queries (their pool: each other)."""
    return re_ranked_distances(_embed(explainer, data, queries, batch_size, device, progress), gallery)


def explain_rankings(
    data: DatasetRanking | FileRanking, queries: list[int], explainer: ModelExplainer, methods: Sequence[str],
    output: Path, top: int, batch_size: int, device: torch.device, progress: bool, alpha: float, colormap: str,
    rerank: bool = False, contrastive: bool = True, curves: CurveOptions | None = None,
    sensitivity: SensitivityOptions | None = None,
) -> list[Path]:
    """Write ``<output>/<query>_<method>.png`` for every query and method, and ``rankings.json``,
    rewritten (atomically) after each query, so a failure later keeps the lists already explained;
    ``rerank`` ranks by k-reciprocal re-ranked distances (:func:`cama.metrics.rerank.re_ranking`);
    ``contrastive``: the row *why rank r beat the true match* where a false match comes first
    (:func:`cama.viz.figures.ranking_picture`; a list whose top k holds no true match gets its first
    true match appended, after a gap).
    ``curves`` (active): ``curves.png`` and ``curves.json`` of the queries (:mod:`explain_command.curves`);
    ``sensitivity`` (active): ``sensitivity.json``, each method's max-sensitivity on the queries against
    their top-ranked image (:mod:`explain_command.sensitivity`)."""
    embeddings = _embed(explainer, data, data.gallery, batch_size, device, progress)
    reranked = _reranked(explainer, data, queries, embeddings, batch_size, device, progress) if rerank else None
    written: list[Path] = []
    rankings: dict[str, Any] = {}
    collected = QueryCurves(methods, curves, data.known) if curves is not None and curves.active else None
    std = data.shows.std if isinstance(data.shows, ShowsImages) else None
    active = sensitivity is not None and sensitivity.active
    sensitive = QuerySensitivity(methods, sensitivity, std) if active else None
    for row, index in enumerate(tqdm(queries, desc="queries", disable=not progress, unit="query")):
        query = explainer.features(data.load([index], device))
        distances = reranked[row : row + 1] if reranked is not None else None
        found, flags = data.rank(embeddings, query.embedding, index, top, distances)
        if not found:
            tqdm.write(f"query {data.name(index)}: no rankable gallery image, skipped")
            continue
        ranks = list(range(1, len(found) + 1))
        if contrastive and flags is not None and not any(flags):  # the contrast row: the first true match
            everything, all_flags = data.rank(embeddings, query.embedding, index, len(data.gallery),
                                              distances)
            if any(all_flags):
                first = all_flags.index(True)
                found, flags, ranks = found + [everything[first]], flags + [True], ranks + [first + 1]
        listed_features = explainer.features(data.load(found, device))
        name = data.name(index)
        frames = torch.tensor(flags) if flags is not None else None
        if distances is not None:  # the re-ranked distances the list is ordered by
            listed_distances = distances[0, [data.gallery.index(g) for g in found]]
        else:
            listed_distances = pairwise_distance(query.embedding, listed_features.embedding)[0]
        shown_query = Shown(query, to_uint8(query.images, data.shows), [data.label_text(index)])
        listed = Shown(listed_features, to_uint8(listed_features.images, data.shows), [data.label_text(g) for g in found])
        for method in methods:
            picture = ranking_picture(
                explainer, method, shown_query, listed, frames, listed_distances,
                picture_title(method, subject=name), alpha, colormap, contrastive, ranks,
            )
            written.append(write_picture(picture, output, name, method))
        reference = embeddings[data.gallery.index(found[0])][None]  # as the pictures explain the query
        if collected is not None:
            matches, exclude = data.match_masks(index, device)
            collected.add(explainer, query, reference, data.gallery_set(embeddings), matches, exclude)
        if sensitive is not None:
            sensitive.add([name], query.images, reference)
        rankings[name] = [  # the top k (not the true match appended for the contrast row)
            {"gallery": data.name(g), "match": bool(flags[j]) if flags is not None else None}
            for j, g in enumerate(found[:top])
        ]
        write_json(rankings, output / "rankings.json")
    if not rankings:
        write_json(rankings, output / "rankings.json")
    if collected is not None:
        picture = collected.write(output, "deletion / insertion")
        written += [picture] if picture is not None else []
    if sensitive is not None:
        sensitive.write(lambda images, references: maps_against(
            explainer, explainer.features(images), references, methods), output)
    return written
