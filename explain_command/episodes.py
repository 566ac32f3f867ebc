"""Few-shot in ``explain.py``: queries explained against the prototype of their predicted class.

The same maps and pictures as :class:`callbacks.fewshot_explanations.FewShotExplanations`
(:mod:`cama.viz.episodes`): per probe query, the query | the first support of its predicted class
(green: right class, red: wrong; no frame when the query's class is unknown) | the map on the query
| the map on that support against the query, and under a misclassified query (of known class) a row
*why class c- beat the true class* (:mod:`cama.viz.episode_contrast`; ``contrastive=False``: none).
Two sources of episodes:

* the test episodes of a config's data module (:func:`datamodule_episodes`);
* a folder of supports, one sub-folder per class with the same number of images each, and query
  image files (:func:`folder_episode`); a query whose parent folder is named like a support class
  has that class as its truth.

The explainer is ``explain.py``'s (its layer CAMs' options and batch size). With ``sensitivity``
(``--max_sensitivity``) the probe queries' max-sensitivity is written to ``sensitivity.json``
(:mod:`explain_command.sensitivity`), of the query maps above against the query's fixed prototype.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from cama.protocols import ShowsImages
from cama.viz import ModelExplainer, picture_title, to_uint8
from cama.viz.episode_contrast import episode_contrasts
from cama.viz.episodes import FEW_SHOT_METHODS, episode_grid, episode_maps, probe_rows, support_maps
from explain_command.common import (
    ExplainError, FileImages, image_files, readable_images, write_json, write_picture,
)
from explain_command.sensitivity import QuerySensitivity, SensitivityOptions

__all__ = ["datamodule_episodes", "folder_episode", "explain_episodes"]


def datamodule_episodes(datamodule: Any, count: int) -> Iterable[tuple[str, dict[str, Tensor]]]:
    """The first ``count`` test episodes of a few-shot data module, named ``episode<e>``."""
    datamodule.setup("test")
    for e, batch in enumerate(itertools.islice(datamodule.test_dataloader(), count)):
        yield f"episode{e:03d}", batch


def folder_episode(
    support_root: str, queries: Sequence[str], image_size: Sequence[int], progress: bool = False
) -> tuple[dict[str, Tensor], FileImages, list[str]]:
    """One episode from files: ``support_root/<class>/*`` and the query files (see the module doc).

    Every file is checked first (:func:`~explain_command.common.readable_images`): an unreadable one is
    reported and left out, and the classes must still have the same number of supports.
    Returns the batch (``image``, ``episode_labels``, ``is_query``, ``target``: the queries' class or
    -1), the images (to show them) and the class names.
    """
    root = Path(support_root)
    classes = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if len(classes) < 2:
        raise ExplainError(f"--support {root} must hold one folder per class (at least 2), each with its support images")
    groups = {f"support class {c.name}": image_files([str(c)], f"support class {c.name}") for c in classes}
    groups = readable_images({**groups, "query": image_files(queries, "query")}, progress)
    query_files = groups.pop("query")
    supports = list(groups.values())
    shots = {len(s) for s in supports}
    if len(shots) != 1:
        raise ExplainError(
            f"every support class needs the same number of images, got "
            f"{ {c.name: len(s) for c, s in zip(classes, supports)} } in {root}"
        )
    names = [c.name for c in classes]
    files = [f for s in supports for f in s] + query_files
    images = FileImages(files, image_size)
    labels = [i for i, s in enumerate(supports) for _ in s]
    targets = [names.index(f.parent.name) if f.parent.name in names else -1 for f in query_files]
    batch = {
        "image": images.images(range(len(files)), torch.device("cpu")),
        "episode_labels": torch.tensor(labels + [max(t, 0) for t in targets]),
        "is_query": torch.tensor([False] * len(labels) + [True] * len(query_files)),
        "target": torch.tensor(targets),
    }
    return batch, images, names


@torch.no_grad()
def explain_episodes(
    model: Any, episodes: Iterable[tuple[str, dict[str, Tensor]]], shows: Any, methods: Sequence[str],
    output: Path, num_queries: int, device: torch.device, progress: bool, alpha: float, colormap: str,
    class_names: Sequence[str] | None = None, contrastive: bool = True, *, explainer: ModelExplainer,
    sensitivity: SensitivityOptions | None = None,
) -> list[Path]:
    """Write ``<output>/<episode>_<method>.png`` per episode and method, and ``predictions.json``,
    rewritten (atomically) after each episode, so a failure later keeps the episodes already explained;
    ``class_names`` (a folder episode's) are drawn under the images instead of ``class <c>``;
    ``contrastive``: the rows under the misclassified queries; ``explainer``: ``model``'s maps;
    ``sensitivity`` (active): ``sensitivity.json`` (module docstring)."""
    unsupported = [m for m in methods if m not in FEW_SHOT_METHODS]
    if unsupported:
        raise ExplainError(f"few-shot explanations support {list(FEW_SHOT_METHODS)}, got {unsupported}")
    std = shows.std if isinstance(shows, ShowsImages) else None
    active = sensitivity is not None and sensitivity.active
    sensitive = QuerySensitivity(methods, sensitivity, std) if active else None
    written: list[Path] = []
    predictions: dict[str, Any] = {}
    for name, batch in tqdm(list(episodes), desc="episodes", disable=not progress, unit="episode"):
        images = batch["image"].to(device)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        all_maps = model.feature_maps(images)
        refs = model.episode_references(batch, all_maps)
        target = batch["target"].to(device) if "target" in batch else refs.target
        known = target >= 0
        probes = probe_rows(refs.prediction if not bool(known.all()) else target, num_queries)
        pictures: dict[str, Tensor] = {
            "probe_images": to_uint8(images[refs.query_index[probes]], shows),
            "reference_images": to_uint8(images[refs.support_index[probes, 0]], shows),
        }
        if bool(known.all()):
            pictures["matches"] = (refs.prediction == target)[probes]
        pictures["probe_classes"] = target[probes]
        pictures["reference_classes"] = refs.prediction[probes]
        if sensitive is not None:
            sensitive.add([f"{name}/query{int(q)}" for q in refs.query_index[probes].tolist()],
                          images[refs.query_index[probes]], refs.prototype[probes], refs.supports[probes])
        if contrastive:  # the rows why class c- beat the true class, under the misclassified queries
            episode = {**batch, "image": images}
            contrasts = episode_contrasts(explainer, methods, episode, refs, probes, target, size)
            if contrasts:
                contrasts["contrast_supports"] = to_uint8(contrasts["contrast_supports"], shows)
            pictures.update(contrasts)
        for method in methods:
            query_images = images[refs.query_index[probes]]
            pictures[method] = episode_maps(method, explainer, query_images, refs.query_maps[probes],
                                            refs.prototype[probes], refs.supports[probes], refs.metric, size)
            pictures[f"{method}/reference"] = support_maps(method, explainer, model, images, all_maps, refs, probes, size)
            picture = episode_grid(pictures, method, alpha, colormap, picture_title(method, subject=name), class_names)
            written.append(write_picture(picture, output, name, method))
        predictions[name] = [
            {"query": int(q), "predicted": int(p), "truth": int(t) if t >= 0 else None}
            for q, p, t in zip(refs.query_index.tolist(), refs.prediction.tolist(), target.tolist())
        ]
        write_json(predictions, output / "predictions.json")
    if not predictions:
        write_json(predictions, output / "predictions.json")
    if sensitive is not None:
        def maps(queries: Tensor, prototype: Tensor, supports: Tensor) -> dict[str, Tensor]:
            query_maps = model.feature_maps(queries)[0]
            return {m: episode_maps(m, explainer, queries, query_maps, prototype, supports, refs.metric, size)
                    for m in methods}

        sensitive.write(maps, output)
    return written
