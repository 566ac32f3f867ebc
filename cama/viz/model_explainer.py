"""Explanation maps of any :class:`cama.protocols.EmbeddingModel`, per branch and summed.

The protocol: ``feature_maps(images) -> [F^1, ..., F^N]`` (``[B, K_i, h, w]``, the
maps pooled into the embedding) and ``embed_maps(maps) -> [B, D]`` (the embedding that ranks).
:class:`ModelExplainer` turns it into maps with ``cama.explain``:

**Branches.** When the embedding is the concatenation of one vector per branch (``D = sum K_i``,
as CAMA's test feature ``f = [f^1/||f^1||; ...; f^N/||f^N||]``, cama-ram Sec. 3.3), branch ``i``
owns the slice ``e^i`` of the embedding, and every forward-only map of branch ``i`` is computed on
``M^i = F^i * ||e^i|| / ||GAP(F^i)||``, the branch's maps rescaled so that ``GAP(M^i) = e^i`` (exact
for an L2-normalised GAP): maps of the branches are on the scale of the embedding they build, and
against a reference they use the reference's slice of the same embedding.

**Methods** (``target`` is a ``[B, D]`` embedding: the reference's, or the sample's own):

* ``cam`` (dist-cam Eq. 3, cama-ram Eq. 4): ``sum_k w_{c,k} F^i_k`` with branch ``i``'s classifier
  (``model.classifier_weights()``, :class:`~cama.protocols.HasClassifier`) and the class it predicts (the top logit). Re-ID test
  identities are unseen in training, so this is the CAM of the most similar *training* identity;
  ``target`` is not used.
* ``dist_cam`` (Eq. 4-6): ``dist_cam(M^i, t^i)``, the channel weights from ``|t^i - e^i|``.
* ``ram`` (cama-ram Eq. 10): ``ram(t^i, M^i) = <t^i, M^i(x, y)> / ||e^i||``. With the sample's own
  embedding as ``target`` this is the query's own RAM ``R_q^q``; on a gallery image with the
  query's embedding as ``target`` it is ``R_g^q`` (Fig. 4, Fig. 8 per branch).
* ``fam`` (fam Eq. 11-13, cosine): ``fam(M^i, t^i)``, the target as the single support. For a
  model whose embedding is a projection ``e = W g`` of its pooled features (a retrieval model with
  an FC layer: ``model.embedding_projection()`` returns ``W``), the contributions of the embedding
  dimensions are mapped back to channels (fam Eq. 16-18) and ``target`` is in the embedding space.
* ``dist_cam_smoothed``, ``fam_unfloored``: variants beyond the papers, off unless named
  (:mod:`cama.viz.methods`); ``map_options`` passes keyword arguments to a forward-only method's
  map function (e.g. Dist-CAM's ``eps``).
* ``gradcam``, ``gradcam++``, ``layercam``, ``fullgrad`` (ltgrad-cam Eq. 2-11):
  :func:`cama.explain.gradient_cam` of the cosine similarity between the sample's embedding and
  ``target``; branch ``i`` uses the similarity of the slices ``e^i, t^i`` and, by default, the
  branch's layers (``model.explanation_layers()``, :class:`~cama.protocols.HasBranchLayers`; else the model's last convolution) as its layer;
  the summed map uses the full embedding and every branch's layer (layerization, Eq. 8).
  ``layers`` replaces the default layers of every map; ``truncation`` is Eq. 9-11's delta;
  ``layer_norm`` whether each layer's map is min-max normalised before the layerization sum
  (``"minmax"``, the default) or summed raw as Eq. 8 writes (``"none"``). ``hirescam`` and
  ``xgradcam`` (HiResCAM, XGrad-CAM) are gradient methods like them.
* ``scorecam``, ``ablationcam``, ``eigencam`` (:mod:`cama.explain.gradient_free`): the same layers,
  scores and layerization without a gradient. Score-CAM and Ablation-CAM run the model once per
  channel of each layer on every image (``forward_batch_size`` inputs per forward), on the same
  cosine similarity to ``target``; EigenCAM uses no target. The truncation applies only to the
  gradient methods and is left out for these; Score-CAM masks the network input as it is unless the
  images' ``mean`` / ``std`` are given (then the ``[0, 1]`` picture, as the faithfulness scores do).

**Contrast** (:class:`cama.viz.targets.Contrast`, ``s(x, g-) - s(x, g+)``): ``ram`` the RAM of the
difference, :func:`cama.explain.contrastive_ram` (exact: Eq. 10 is linear in its target), the
gradient methods the gradient of the difference (:func:`cama.explain.contrast_score`), ``dist_cam``
and ``fam`` the difference of the two maps; ``cam`` has none (it explains a class).

**Summed map.** For a multi-branch model :meth:`ModelExplainer.explain` returns the N branch maps and
their aggregate: the sum of the branches' raw maps (for RAM exactly the RAM of the concatenated
embedding, whose pixels sum to ``h w <f_q, f_g>``) or, for the gradient methods, the map of the
full-embedding similarity. Every map then goes through :func:`cama.explain.postprocess` (ReLU,
bilinear upsampling, per-map min-max to ``[0, 1]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from cama.backbones.builders import last_conv_layer
from cama.explain import (
    class_activation_map,
    contrast_score,
    contrastive_ram,
    dist_cam,
    fam,
    global_average_pool,
    gradient_cam,
    postprocess,
    ram,
    similarity_score,
)
from cama.explain.gradient import check_layer_norm
from cama.explain.precision import at_least_float32
from cama.viz.methods import (
    CLASS_METHODS,
    FORWARD_METHODS,
    GRADIENT_FREE_METHODS,
    GRADIENT_METHODS,
    LAYER_METHODS,
    METHODS,
    check_map_options,
    check_methods,
    forward_call,
)
from cama.viz.targets import Against, Contrast, Target, as_target
from cama.protocols import EmbeddingModel, HasBranchLayers, HasClassifier, HasProjection, HasTokenLayers

__all__ = [
    "FORWARD_METHODS", "GRADIENT_FREE_METHODS", "GRADIENT_METHODS", "LAYER_METHODS", "METHODS",
    "Features", "ModelExplainer", "check_methods", "default_gradient_layers",
]


def default_gradient_layers(model: nn.Module) -> list[list[str]]:
    """Default layers per branch: the model's ``explanation_layers()`` (:class:`HasBranchLayers`),
    else its last convolution."""
    if isinstance(model, HasBranchLayers):
        return model.explanation_layers()
    return [[last_conv_layer(model)]]


@dataclass
class Features:
    """A forward pass through the protocol: inputs, branch maps, embedding and its branch slices."""

    images: Tensor
    maps: list[Tensor]
    embedding: Tensor
    slices: list[tuple[int, int]] | None  # None: the embedding is not a concatenation of branches
    _scaled: list[Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def num_branches(self) -> int:
        return len(self.maps)

    def branch_embeddings(self) -> list[Tensor]:
        """The slices ``e^i`` ``[B, K_i]`` of the embedding."""
        if self.slices is None:
            raise ValueError(
                f"the embedding (D={self.embedding.shape[1]}) is not the concatenation of the branches' "
                f"pooled features (K = {[m.shape[1] for m in self.maps]}): cam, dist_cam and ram need it, "
                "fam needs it or the model's `embedding_projection()` (fam Eq. 16-18); use fam or the "
                "gradient methods for this model"
            )
        return [self.embedding[:, a:b] for a, b in self.slices]

    def scaled_maps(self) -> list[Tensor]:
        """``M^i = F^i * ||e^i|| / ||GAP(F^i)||``, so that ``GAP(M^i) = e^i`` for a normalised GAP."""
        if self._scaled is None:
            out = []
            for maps, vector in zip(self.maps, self.branch_embeddings()):
                pooled = torch.linalg.vector_norm(global_average_pool(maps), dim=1).clamp_min(1e-12)
                scale = torch.linalg.vector_norm(vector, dim=1) / pooled
                out.append(maps * scale.to(maps.dtype)[:, None, None, None])
            self._scaled = out
        return self._scaled

    def select(self, rows: Tensor | Sequence[int]) -> Features:
        """The features of ``rows`` (``self`` when they are all rows in order)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.embedding.device)
        if index.numel() == self.embedding.shape[0] and bool(
            (index == torch.arange(index.numel(), device=index.device)).all()
        ):
            return self
        return Features(
            images=self.images[index.to(self.images.device)],
            maps=[m[index.to(m.device)] for m in self.maps],
            embedding=self.embedding[index],
            slices=self.slices,
        )


class _Embedder(nn.Module):
    """``images -> embed_maps(feature_maps(images))``: the protocol as one module for ``gradient_cam``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model.embed_maps(self.model.feature_maps(images))


class ModelExplainer:
    """Maps of a protocol model (see the module docstring), in batches, on the model's device.

    Args:
        model: offers ``feature_maps`` and ``embed_maps`` (and ``classifier_weights`` for ``cam``).
        gradient_layers: layer names (``model.get_submodule``) for the gradient methods; ``None``
            uses :func:`default_gradient_layers`.
        truncation: delta of the truncation trick (percentile 0-100 of the positive gradients),
            ``None`` disables it.
        truncation_per_channel: take the percentile per channel.
        layer_norm: the layerization of the gradient methods (:func:`cama.explain.gradient_cam`):
            ``"minmax"`` (each layer's map normalised before the sum) or ``"none"`` (Eq. 8 as written).
        map_options: keyword arguments of the forward-only methods' map functions, by method
            (:mod:`cama.viz.methods`), e.g. ``{"dist_cam": {"eps": 1e-3}}``.
        forward_batch_size: Score-CAM, Ablation-CAM: the most masked / ablated images per forward.
        mean, std: Score-CAM: the images' normalisation, to mask the ``[0, 1]`` picture; None masks
            the network input.
    """

    def __init__(
        self,
        model: nn.Module,
        gradient_layers: Sequence[str] | None = None,
        truncation: float | None = None,
        truncation_per_channel: bool = False,
        layer_norm: str = "minmax",
        map_options: Mapping[str, Mapping[str, Any]] | None = None,
        forward_batch_size: int = 64,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if not isinstance(model, EmbeddingModel):
            raise TypeError(
                f"{type(model).__name__} does not offer `feature_maps` and `embed_maps` "
                "(cama.protocols.EmbeddingModel)"
            )
        self.model = model
        self.gradient_layers = list(gradient_layers) if gradient_layers else None
        self.truncation = truncation
        self.truncation_per_channel = truncation_per_channel
        self.layer_norm = check_layer_norm(layer_norm)
        self.map_options = check_map_options(map_options)
        if type(forward_batch_size) is not int or forward_batch_size < 1:
            raise ValueError(f"forward_batch_size must be a positive int, got {forward_batch_size!r}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.forward_batch_size = forward_batch_size
        self.mean = mean
        self.std = std

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def features(self, images: Tensor) -> Features:
        """One forward pass (no gradients) of ``images`` ``[B, 3, H, W]``."""
        return self.features_from_maps(images, list(self.model.feature_maps(images)))

    @torch.no_grad()
    def features_from_maps(self, images: Tensor, maps: Sequence[Tensor]) -> Features:
        """:class:`Features` of ``images`` whose ``feature_maps`` are already known (no forward).

        Maps captured from a mixed-precision validation step (float16 / bfloat16, computed under
        autocast) are upcast to float32 first: the explanations run outside autocast, where a
        half-precision input would meet the model's float32 weights (e.g. ``embed_maps``'s
        projection), and the maps are computed in float32 anyway (``cama.explain``).
        """
        maps = [at_least_float32(m) for m in maps]
        embedding = self.model.embed_maps(maps)
        sizes = [m.shape[1] for m in maps]
        slices = None
        if embedding.shape[1] == sum(sizes):
            bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
            slices = list(zip(bounds[:-1], bounds[1:]))
        return Features(images=images, maps=maps, embedding=embedding, slices=slices)

    # ------------------------------------------------------------------ forward-only maps
    def raw_maps(self, method: str, features: Features, target: Target | Tensor | Contrast) -> Tensor:
        """The raw per-branch maps ``[B, N, h, w]`` of a forward-only method (feature resolution)
        against ``target`` (:mod:`cama.viz.targets`; a ``[B, D]`` tensor: against that embedding)."""
        if isinstance(target, Contrast):
            return self._contrast_maps(method, features, target)
        target = as_target(target).embedding(method, features.embedding)
        function, options = self.forward_call(method)
        if function == "cam":
            if not isinstance(self.model, HasClassifier):
                raise ValueError(
                    f"cam needs `classifier_weights()` on {type(self.model).__name__} (cama.protocols.HasClassifier)"
                )
            out = []
            for maps, weight in zip(features.maps, self.model.classifier_weights()):
                weight = weight.detach()
                pooled = global_average_pool(maps)  # at least float32, whatever the maps' dtype
                predicted = (pooled @ weight.T.to(pooled.dtype)).argmax(dim=1)
                out.append(class_activation_map(maps, weight, predicted))
            return torch.stack(out, dim=1)
        projection = self._projection() if features.slices is None else None
        if function == "fam" and projection is not None:  # e = W g before the similarity: fam Eq. 16-18
            maps = features.maps[0]
            return fam(maps, target, metric="cosine", projection=projection, **options)[:, None]
        targets = [target[:, a:b] for a, b in features.slices or []]
        scaled = features.scaled_maps()
        if function == "dist_cam":
            return torch.stack([dist_cam(m, t, **options) for m, t in zip(scaled, targets)], dim=1)
        if function == "ram":
            return torch.stack([ram(t, m, **options) for m, t in zip(scaled, targets)], dim=1)
        return torch.stack([fam(m, t, metric="cosine", **options) for m, t in zip(scaled, targets)], dim=1)

    def _contrast_maps(self, method: str, features: Features, contrast: Contrast) -> Tensor:
        """Raw per-branch maps of ``s(x, negative) - s(x, positive)`` (module docstring, Contrast)."""
        function, options = self.forward_call(method)
        if function == "cam":
            raise ValueError(
                f"{method} explains the predicted class, not a similarity: it has no contrastive map"
            )
        negative, positive = contrast.sides(features.embedding)
        if function == "ram":  # the RAM of the difference, branch by branch (scaled_maps: needs the slices)
            def side(t: Tensor | None, a: int, b: int) -> Tensor | None:
                return None if t is None else t[:, a:b]

            return torch.stack([contrastive_ram(m, side(negative, a, b), side(positive, a, b), **options)
                                for m, (a, b) in zip(features.scaled_maps(), features.slices or [])], dim=1)
        terms = [sign * self.raw_maps(method, features, Against(t))
                 for t, sign in ((negative, 1.0), (positive, -1.0)) if t is not None]
        return terms[0] if len(terms) == 1 else terms[0] + terms[1]

    def forward_call(self, method: str) -> tuple[str, dict[str, Any]]:
        """The map function and keyword arguments of a forward-only method
        (:func:`cama.viz.methods.forward_call` with this explainer's ``map_options``)."""
        return forward_call(method, self.map_options)

    def _projection(self) -> Tensor | None:
        """The model's FC projection ``W`` ``[D, K]`` (``model.embedding_projection()``) of a
        single-branch model, or None."""
        weight = self.model.embedding_projection() if isinstance(self.model, HasProjection) else None
        return None if weight is None else weight.detach()

    # ------------------------------------------------------------------ gradient maps
    def _layers(self) -> tuple[list[list[nn.Module]], list[nn.Module]]:
        """Per-branch layer lists and the layers of the summed map."""
        if self.gradient_layers:
            layers = [self.model.get_submodule(name) for name in self.gradient_layers]
            return [layers], layers
        per_branch = [
            [self.model.get_submodule(n) for n in names] for names in default_gradient_layers(self.model)
        ]
        return per_branch, [m for layers in per_branch for m in layers]

    def gradient_maps(
        self, method: str, features: Features, target: Target | Tensor | Contrast, branches: bool = True
    ) -> Tensor:
        """Maps of a layer method (:data:`LAYER_METHODS`: gradient or gradient-free) ``[B, N + 1, H, W]``
        (branches, then summed; ``[B, 1, H, W]`` for one branch or with ``branches=False``) against
        ``target`` (as :meth:`raw_maps`)."""
        score = self._score(method, features, target)
        embedder = _Embedder(self.model)
        per_branch, all_layers = self._layers()
        # a transformer's layers output tokens: the model folds them into maps (HasTokenLayers)
        size = tuple(features.images.shape[-2:])
        reshape = self.model.token_grid(size) if isinstance(self.model, HasTokenLayers) else None
        kwargs: dict[str, Any] = dict(method=method, reshape=reshape, layer_norm=self.layer_norm)
        if method in GRADIENT_METHODS:
            kwargs.update(truncation=self.truncation, truncation_per_channel=self.truncation_per_channel)
        else:
            kwargs.update(forward_batch_size=self.forward_batch_size, mean=self.mean, std=self.std)
        summed = gradient_cam(embedder, features.images, score(None), all_layers, **kwargs)
        if not branches or features.num_branches == 1 or features.slices is None:
            return summed[:, None]
        maps = []
        for i, (a, b) in enumerate(features.slices):
            layers = per_branch[i] if len(per_branch) == features.num_branches else per_branch[0]
            maps.append(gradient_cam(embedder, features.images, score(slice(a, b)), layers, **kwargs))
        return torch.stack([*maps, summed], dim=1)

    def _score(self, method: str, features: Features, target: Target | Tensor | Contrast) -> Any:
        """``part -> score_fn``: the gradient methods' score of the whole embedding (``part=None``) or
        of a branch's slice: the cosine similarity to the target, or a Contrast's difference of two."""
        if isinstance(target, Contrast):
            if method in CLASS_METHODS:  # eigencam explains no target: a difference of two is itself
                raise ValueError(f"{method} has no contrastive map: it explains no similarity to a reference")
            negative, positive = target.sides(features.embedding)
        else:
            negative, positive = as_target(target).embedding(method, features.embedding), None

        def score(part: slice | None) -> Any:
            embed = None if part is None else (lambda e: e[:, part])
            cut = [t if t is None or part is None else t[:, part] for t in (negative, positive)]
            if not isinstance(target, Contrast):
                return similarity_score(cut[0], embed=embed)
            return contrast_score(cut[0], cut[1], embed=embed)

        return score

    # ------------------------------------------------------------------ everything
    def explain(
        self,
        method: str,
        features: Features,
        target: Target | Tensor,
        size: Sequence[int] | None = None,
        branches: bool = True,
    ) -> Tensor:
        """Maps in ``[0, 1]`` at image size: ``[B, N + 1, H, W]`` (branches then summed) or ``[B, 1, H, W]``.

        Args:
            method: one of :data:`METHODS`.
            features: :meth:`features` of the images to explain.
            target: what to explain against (:mod:`cama.viz.targets`): ``ProbeAgainst(reference)``
                for a probe and its reference (RAM then the probe's own), ``Against(embedding)`` or a
                ``[B, D]`` tensor for that embedding with every method, ``Own()``.
            size: output ``(H, W)``; default the images' size.
            branches: False returns the summed map only, ``[B, 1, H, W]`` (cheaper).
        """
        size = tuple(size) if size is not None else tuple(features.images.shape[-2:])
        if method in LAYER_METHODS:
            maps = self.gradient_maps(method, features, target, branches)
            if tuple(maps.shape[-2:]) != size:
                maps = postprocess(maps, size)
            return maps
        raw = self.raw_maps(method, features, target)
        if raw.shape[1] > 1:
            summed = raw.sum(dim=1, keepdim=True)
            raw = torch.cat([raw, summed], dim=1) if branches else summed
        return postprocess(raw, size)
