"""The classifier bench's rows beyond the papers (``claims_classifier.py``): each says so in its claim, has
no paper figure (``paper`` says why) and ``holds`` by the same rules as the reference rows
(:mod:`claims_rules`: the direction of the per-seed differences):

* ``dist_cam_smoothed`` (:data:`cama.viz.methods.VARIANTS`: Dist-CAM with ``W_k ∝ 1 / (D_k + mean D)``)
  beside Dist-CAM: top-1 localization error, box accuracy at the tau chosen on the validation images,
  MaxBoxAcc and the box accuracy curve, as dist-cam Table 1's rows give them for CAM and Dist-CAM;
* the layerization sum both ways: each layer map min-max normalised before the sum (our default,
  ``gradient_cam(layer_norm="minmax")``) against the raw maps summed (ltgrad-cam Eq. 8 as written,
  ``layer_norm="none"``).
"""

from __future__ import annotations

from typing import Any

from claims_classifier_rows import LABELS, METHODS, TAU, fmt_difference, layer_key, mean_curve, pct, score
from claims_common import row
from claims_rules import combine, differences, direction, pm

__all__ = ["variant_rows", "layer_norm_rows"]

BEYOND = "- (beyond the paper: a variant of ours)"


def variant_rows(runs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """``dist_cam_smoothed`` against Dist-CAM (module docstring)."""
    get = lambda name: [run[name] for run in runs]  # noqa: E731
    chosen_on = "validation" if runs[0]["tau_split"] == "val" else "training"
    name = "dist_cam_smoothed"
    label = "Dist-CAM smoothed (dist_cam_smoothed, W_k ∝ 1 / (D_k + mean D))"
    rows = []
    for key, protocol in (("top1_loc_err", f"box at tau = {TAU}"),
                          ("top1_loc_err_select_tau", f"box at each map's best tau on the {chosen_on} "
                                                      "images")):
        smoothed, dcam = get(f"{name}_{key}"), get(f"dist_cam_{key}")
        rows.append(row(
            "3", f"beyond the paper: {label} has a top-1 localization error no higher than Dist-CAM's "
                 f"({protocol}; the nearest prototype's class)",
            BEYOND,
            f"Dist-CAM {pct(dcam)}, smoothed {pct(smoothed)}; smoothed - Dist-CAM "
            f"{fmt_difference(smoothed, dcam)}",
            direction(differences(smoothed, dcam), sign=-1),
            f"tau: Dist-CAM {pm(get('dist_cam_select_tau'), 1, 2)}, "
            f"smoothed {pm(get(f'{name}_select_tau'), 1, 2)}" if key.endswith("select_tau")
            else "the prototypes and the class of Dist-CAM's rows"))
    smoothed, dcam = get(f"{name}_box_acc_select_tau"), get("dist_cam_box_acc_select_tau")
    curves = "; ".join(f"{text} " + " ".join(f"{100 * v:.0f}" for v in mean_curve(get(f"{key}_box_curve")))
                       for key, text in (("dist_cam", "Dist-CAM"), (name, "smoothed")))
    rows.append(row(
        "3", f"beyond the paper: {label}'s boxes localize at least as well as Dist-CAM's (box accuracy at "
             f"the tau chosen on the {chosen_on} images, tau = 0.05 ... 0.95)",
        BEYOND,
        f"Dist-CAM {pct(dcam)}, smoothed {pct(smoothed)}; "
        f"smoothed - Dist-CAM {fmt_difference(smoothed, dcam)}; "
        f"MaxBoxAcc on the test images: Dist-CAM {pct(get('dist_cam_max_box_acc'))}, "
        f"smoothed {pct(get(f'{name}_max_box_acc'))}",
        direction(differences(smoothed, dcam)),
        f"test box accuracy (%) at tau = 0.05, 0.15, ..., 0.95: {curves}"))
    return rows


def layer_norm_rows(runs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The normalised layerization sum against the literal one, l = all stages (module docstring)."""
    rows = []
    for delta, when in ((None, "no truncation"), (20, "delta = 20")):
        parts, texts = [], []
        for method in METHODS:
            normalised = score(runs, layer_key(method, 4, delta, False))
            literal = score(runs, layer_key(method, 4, delta, True))
            parts.append(direction(differences(normalised, literal)))
            texts.append(f"{LABELS[method]} raw sum {pct(literal)}, normalised {pct(normalised)} "
                         f"({fmt_difference(normalised, literal)})")
        rows.append(row(
            "4", "beyond the paper: min-max normalising each layer map before the layerization sum (our "
                 f"default) segments at least as well as Eq. 8's sum of the raw maps (mIoU, l = all stages, "
                 f"{when})",
            "- (the paper sums the maps as Eq. 8 writes them)", "; ".join(texts), combine(parts),
            "both sums from the same layer maps of one backward pass; the raw maps' scales differ by layer, "
            "so the literal sum leans on the layer with the largest values"))
    return rows
