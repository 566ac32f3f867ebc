"""Few-shot explanations: a query against its predicted class, the support against the query.

Shared by :class:`callbacks.fewshot_explanations.FewShotExplanations` and ``explain.py``. The
references come from the model (:class:`cama.protocols.EpisodeTask`, built by
:func:`cama.references.episode_references`): ``prototype`` of the predicted class (dist-cam Eq. 7),
its ``supports``, the ``metric`` the logits compare with.

* ``dist_cam`` (dist-cam Eq. 4-7): channel weights from ``|p - q|``;
* ``fam`` (fam Eq. 11-13): contributions averaged over the class's supports, with the model's metric;
* ``ram`` (cama-ram Eq. 10, the prototype as the reference): ``<p, Q(x, y)> / ||q||`` with ``q = GAP(Q)``;
* ``dist_cam_smoothed``, ``fam_unfloored``: the variants beyond the papers (:mod:`cama.viz.methods`),
  with the explainer's ``map_options`` as every forward-only method;
* the layer CAMs (gradient and gradient-free, :data:`cama.viz.methods.LAYER_METHODS`): of the cosine
  similarity to the prototype (:class:`~cama.viz.ModelExplainer`; EigenCAM uses no target).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cama.explain import dist_cam, fam, postprocess, ram
from cama.viz.episode_contrast import EpisodeContrastRows
from cama.viz.methods import FORWARD_METHODS, LAYER_METHODS, forward_call
from cama.viz.model_explainer import ModelExplainer
from cama.viz.pictures import probe_grid

__all__ = ["FEW_SHOT_METHODS", "episode_maps", "support_maps", "probe_rows", "class_labels", "episode_grid"]

#: every method but CAM (a few-shot model has no classifier of its episodes' classes)
FEW_SHOT_METHODS: tuple[str, ...] = (
    *(m for m in FORWARD_METHODS if forward_call(m)[0] != "cam"), *LAYER_METHODS
)


def episode_maps(
    method: str, explainer: ModelExplainer, images: Tensor, query_maps: Tensor, prototype: Tensor,
    supports: Tensor, metric: str, size: tuple[int, int],
) -> Tensor:
    """Maps ``[Q, H, W]`` in ``[0, 1]`` of ``images`` (feature maps ``query_maps``) against
    ``prototype`` ``[Q, D]`` (FAM: against ``supports`` ``[Q, S, D]``, compared with ``metric``)."""
    if method in LAYER_METHODS:  # the maps are upcast to float32 inside
        features = explainer.features_from_maps(images, [query_maps])
        return explainer.explain(method, features, prototype, size, branches=False)[:, 0]
    function, options = explainer.forward_call(method)
    if function == "dist_cam":
        raw = dist_cam(query_maps, prototype, **options)
    elif function == "fam":
        raw = fam(query_maps, supports, metric=metric, **options)
    elif function == "ram":
        raw = ram(prototype, query_maps, **options)
    else:
        raise ValueError(f"few-shot explanations support {list(FEW_SHOT_METHODS)}, got {method!r}")
    return postprocess(raw[:, None], size)[:, 0]


def support_maps(
    method: str, explainer: ModelExplainer, model: nn.Module, images: Tensor, all_maps: list[Tensor],
    refs: Any, probes: Tensor, size: tuple[int, int],
) -> Tensor:
    """Maps ``[P, H, W]`` of the first support of each probe query's predicted class, explained
    against that query (its single reference)."""
    support = refs.support_index[probes, 0]
    target = model.embed_maps([refs.query_maps[probes]])
    return episode_maps(method, explainer, images[support], all_maps[0][support], target, target[:, None],
                        refs.metric, size)


def probe_rows(target: Tensor, count: int) -> Tensor:
    """``count`` query rows: the first query of each class in turn, then the second, ..."""
    total = target.numel()
    sorted_target, order = torch.sort(target, stable=True)
    sizes = torch.bincount(sorted_target)
    starts = sizes.cumsum(0) - sizes
    rank_in_class = torch.empty_like(order)
    rank_in_class[order] = torch.arange(total, device=target.device) - starts[sorted_target]
    return torch.argsort(rank_in_class * total + target, stable=True)[:count]


def class_labels(classes: Tensor | None, names: Sequence[str] | None = None) -> list[str] | None:
    """``class <c>`` (or ``names[c]``) for each entry, ``class ?`` for an unknown class (``-1``);
    None stays None."""
    if classes is None:
        return None
    return [("class ?" if c < 0 else names[c] if names is not None else f"class {c}") for c in classes.tolist()]


def episode_grid(
    pictures: dict[str, Tensor], method: str, alpha: float = 0.5, colormap: str = "jet", title: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Tensor:
    """The picture of one method: per probe, query | first support of the predicted class (green:
    right class, red: wrong) | the map on the query | the map on that support, with the query's
    true class and the support's (predicted) class under them (:func:`cama.viz.probe_grid`); under each
    misclassified query with a ``<method>/contrast`` map, a row *why class c- beat the true class*
    (:mod:`cama.viz.episode_contrast`).

    ``pictures`` holds ``probe_images`` / ``reference_images`` (``uint8``), ``matches``, the maps
    ``<method>`` and ``<method>/reference`` ``[P, H, W]``, and optionally ``probe_boxes`` /
    ``reference_boxes``, the episode classes ``probe_classes`` (truth, -1: unknown) /
    ``reference_classes`` (predicted), drawn as ``class_names`` when given, and the entries of
    :func:`cama.viz.episode_contrast.episode_contrasts` (``contrast_supports`` as ``uint8``).
    """
    truth = class_labels(pictures.get("probe_classes"), class_names)
    predicted = class_labels(pictures.get("reference_classes"), class_names)
    contrast = None
    if truth is not None and predicted is not None:
        contrast = EpisodeContrastRows.of(pictures, method, predicted, truth)
    return probe_grid(
        pictures["probe_images"], pictures["reference_images"], pictures[method][:, None],
        pictures[f"{method}/reference"][:, None], pictures.get("matches"), alpha, colormap,
        pictures.get("probe_boxes"), pictures.get("reference_boxes"), title=title, names=("query", "support"),
        probe_labels=truth, reference_labels=predicted, contrast=contrast,
    )
