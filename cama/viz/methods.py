"""The explanation methods by name: which names exist, which map function each one calls, with which options.

Every caller that takes a method name (the callbacks, the sanity check, ``explain.py``, the benches)
goes through :data:`METHODS` and :func:`check_methods`; :class:`~cama.viz.ModelExplainer` and the
few-shot maps (:mod:`cama.viz.episodes`) dispatch a forward-only name with :func:`forward_call`.

* the papers' methods: ``cam``, ``dist_cam``, ``ram``, ``fam`` (forward-only), ``gradcam``,
  ``gradcam++``, ``layercam``, ``fullgrad``, ``hirescam``, ``xgradcam`` (gradient:
  :data:`GRADIENT_METHODS`) and ``scorecam``, ``ablationcam``, ``eigencam`` (gradient-free:
  :data:`GRADIENT_FREE_METHODS`); the last two groups are :data:`LAYER_METHODS`, the maps of
  :func:`cama.explain.gradient_cam` on hooked layers, which run the model on the images (Score-CAM and
  Ablation-CAM once per channel of each layer) and come at image size in ``[0, 1]``;
* **variants beyond the papers** (:data:`VARIANTS`; never a default, chosen by name only):

  - ``dist_cam_smoothed``: Dist-CAM with a smoothing term in Eq. 5's denominator,
    ``W_k ∝ 1 / (D_k + s)``, ``s = mean_j D_j`` per sample
    (:func:`cama.explain.dist_cam_weights` ``smoothing="mean"``);
  - ``fam_unfloored``: FAM without Eq. 12's min-max floor, ``alpha = ReLU(c) / max ReLU(c)``, so a
    channel that contributes nothing gets weight 0 (:func:`cama.explain.fam_importance`
    ``importance="relu"``).

``map_options`` (``{method: {keyword: value}}``, :class:`~cama.viz.ModelExplainer`) adds keyword
arguments to a forward-only method's map function -- e.g. ``{"dist_cam": {"eps": 1e-3}}`` sweeps
Eq. 5's guard, ``{"dist_cam_smoothed": {"smoothing": 0.1}}`` sets a constant ``s``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from cama.explain import CAM_METHODS, GRADIENT_FREE_METHODS
from cama.viz.targets import OWN_EMBEDDING_METHODS

__all__ = [
    "CLASS_METHODS",
    "FORWARD_METHODS",
    "GRADIENT_FREE_METHODS",
    "GRADIENT_METHODS",
    "LAYER_METHODS",
    "METHODS",
    "PAPER_FORWARD_METHODS",
    "REFERENCE_FREE_METHODS",
    "VARIANTS",
    "check_map_options",
    "check_methods",
    "forward_call",
]

#: the forward-only methods of the papers; each is its own map function
PAPER_FORWARD_METHODS: tuple[str, ...] = ("cam", "dist_cam", "ram", "fam")
#: the variants beyond the papers: name -> (the paper method's map function, its keyword arguments)
VARIANTS: Mapping[str, tuple[str, Mapping[str, Any]]] = MappingProxyType({
    "dist_cam_smoothed": ("dist_cam", MappingProxyType({"smoothing": "mean"})),
    "fam_unfloored": ("fam", MappingProxyType({"importance": "relu"})),
})
FORWARD_METHODS: tuple[str, ...] = PAPER_FORWARD_METHODS + tuple(VARIANTS)
#: every method of :func:`cama.explain.gradient_cam`: the model runs on the images, maps at image size
LAYER_METHODS: tuple[str, ...] = CAM_METHODS
#: the gradient CAMs (the truncation trick applies to them)
GRADIENT_METHODS: tuple[str, ...] = tuple(m for m in CAM_METHODS if m not in GRADIENT_FREE_METHODS)
METHODS: tuple[str, ...] = FORWARD_METHODS + LAYER_METHODS
#: the methods with no contrastive map: ``cam`` explains a predicted class, not a similarity to a
#: reference; ``eigencam`` explains no target at all (the first principal component of the activations)
CLASS_METHODS: tuple[str, ...] = ("cam", "eigencam")
#: the methods whose map of a probe does not depend on the probe's reference: RAM's ``R_q^q`` (against
#: the probe's own embedding, :class:`cama.viz.targets.ProbeAgainst`) and the class methods
REFERENCE_FREE_METHODS: tuple[str, ...] = (*OWN_EMBEDDING_METHODS, *CLASS_METHODS)

_ALIASES = {
    "distcam": "dist_cam",
    "grad_cam": "gradcam",
    "gradcampp": "gradcam++",
    "layer_cam": "layercam",
    "hires_cam": "hirescam",
    "xgrad_cam": "xgradcam",
    "score_cam": "scorecam",
    "ablation_cam": "ablationcam",
    "eigen_cam": "eigencam",
}


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """Validate method names (case-insensitive, ``-`` read as ``_``); keeps the order, drops repeats."""
    out: list[str] = []
    for name in methods:
        key = str(name).lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        if key not in METHODS:
            raise ValueError(f"unknown explanation method {name!r}; choose from {list(METHODS)}")
        if key not in out:
            out.append(key)
    return tuple(out)


def check_map_options(map_options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """``map_options`` as plain dicts, keyed by forward-only method names (a ValueError otherwise)."""
    out: dict[str, dict[str, Any]] = {}
    for method, options in (map_options or {}).items():
        if method not in FORWARD_METHODS:
            raise ValueError(f"map_options: {method!r} is not a forward-only method {list(FORWARD_METHODS)}")
        if not isinstance(options, Mapping):
            raise ValueError(f"map_options[{method!r}] must map keyword arguments to values, got {options!r}")
        out[method] = dict(options)
    return out


def forward_call(
    method: str, map_options: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[str, dict[str, Any]]:
    """The map function (``"cam"``, ``"dist_cam"``, ``"ram"`` or ``"fam"``) of a forward-only method and
    its keyword arguments: the variant's own (:data:`VARIANTS`), then ``map_options[method]``."""
    if method in VARIANTS:
        base, options = VARIANTS[method]
        kwargs = dict(options)
    elif method in PAPER_FORWARD_METHODS:
        base, kwargs = method, {}
    else:
        raise ValueError(f"{method!r} is not a forward-only method {FORWARD_METHODS}")
    kwargs.update((map_options or {}).get(method, {}))
    return base, kwargs
