"""The rows of ``claims_fam.py``: fam Tables I, II, IV, Dist-CAM's localization on the ProtoNet and on the
retrieval model (dist-cam Table 1's measures), and the descriptive rows (``holds`` ``"n/a"``: no paper
claim to decide) of Dist-CAM's eps, FAM on signed maps and the variants beyond the papers, from the
per-seed measurements (``runs``); and the constants the files share."""

from __future__ import annotations

from typing import Any

from claims_common import row
from claims_rules import combine, differences, direction, pm

TAU = 0.2
MAPS = ("fam", "dist_cam", "gradcam")
BASELINES = ("dist_cam", "gradcam", "center_box", "constant")
LABELS = {"fam": "FAM", "dist_cam": "Dist-CAM", "gradcam": "Grad-CAM", "center_box": "centred box",
          "constant": "constant", "fam_signed": "FAM on signed maps",
          "fam_signed_weights": "signed maps with FAM's post-ReLU weights"}
SIGNED = ("fam_signed", "fam_signed_weights")
#: score -> (name in the rows, sign of "better": +1 higher, -1 lower)
SCORES = {"energy": ("energy (proportion)", 1), "iou": ("box IoU", 1), "ad": ("Average Drop", -1),
          "ic": ("Increase in Confidence", 1)}


# --------------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------------
PAPER = {
    ("protonet", "energy"): "Conv4Net 38.48 (5 backbones: 36.00-44.75), CUB 5-way 1-shot; "
                            "no baseline reported",
    ("protonet", "iou"): "Conv4Net 43.45 (5 backbones: 43.45-49.72); no baseline reported",
    ("protonet", "ad"): "Conv4Net 14.36 (5 backbones: 7.97-14.67); no baseline reported",
    ("protonet", "ic"): "Conv4Net 44.59 (5 backbones: 39.79-45.13); no baseline reported",
}
RETRIEVAL_PAPER = ("Table IV (MS and Margin models, CUB) -- its numbers are lost in the text we have; "
                   "the text: FAM 'locates the target birds'")
RETRIEVAL_FAITHFULNESS = "not reported for retrieval (Table II is the few-shot models'); no baseline reported"


def fam_rows(runs: list[dict[str, Any]], model: str, what: str, note: str) -> list[dict[str, str]]:
    rows = []
    for key, (name, sign) in SCORES.items():
        values = {m: [run["scores"][m][key] for run in runs] for m in ("fam", *BASELINES)}
        scale = 100.0 if key in ("energy", "iou") else 1.0  # AD and IC are percentages already
        parts, texts = [], []
        for baseline in BASELINES:
            diffs = differences(values["fam"], values[baseline])
            parts.append(direction(diffs, sign))
            texts.append(f"{LABELS[baseline]} {pm(values[baseline], scale, 1)} "
                         f"(FAM - it {pm(diffs, scale, 1)})")
        faithfulness = key in ("ad", "ic")
        if model == "protonet":
            table, paper = ("Table II" if faithfulness else "Table I"), PAPER[(model, key)]
        else:
            table = "Table II's metric" if faithfulness else "Table IV"
            paper = RETRIEVAL_FAITHFULNESS if faithfulness else RETRIEVAL_PAPER
        rows.append(row(
            "5", f"fam {table}: FAM's {name} on the {what} beats Dist-CAM, Grad-CAM, a centred box and a "
                 f"constant map ({'lower' if sign < 0 else 'higher'} is better)",
            paper,
            f"FAM {pm(values['fam'], scale, 1)}; " + "; ".join(texts),
            combine(parts), note, methods=MAPS))
    return rows


def protonet_dist_cam_rows(runs: list[dict[str, Any]]) -> list[dict[str, str]]:
    get = lambda name: [run[name] for run in runs]  # noqa: E731
    err, centre_err = get("dist_cam_top1_loc_err"), get("center_top1_loc_err")
    acc, centre_acc = get("dist_cam_max_box_acc"), get("center_box_acc")
    parts = [direction(differences(err, centre_err), -1), direction(differences(acc, centre_acc))]
    return [row(
        "3", "dist-cam Sec. 4.1: Dist-CAM localizes the object a ProtoNet matches (few-shot queries "
             "against their predicted class's prototype): lower top-1 loc. error and higher MaxBoxAcc "
             "than a centred box",
        "qualitative only (Fig. 4a: miniImageNet, ResNet-12); no localization number",
        f"top-1 loc. error Dist-CAM {pm(err, 100, 1)}, centred box {pm(centre_err, 100, 1)}; "
        f"MaxBoxAcc Dist-CAM {pm(acc, 100, 1)}, centred box {pm(centre_acc, 100, 1)} (box accuracy)",
        combine(parts),
        f"all queries of the first test episodes ({runs[0]['queries']} per seed); few-shot accuracy "
        f"{pm(get('test_acc'), 100, 1)}; Dist-CAM's box at tau = {TAU}, MaxBoxAcc's best tau "
        f"{pm(get('dist_cam_max_box_acc_tau'), 1, 2)}; centred box of the mean ground-truth size",
        methods=("dist_cam",))]


def pct_diff(a: list[float], b: list[float], scale: float) -> str:
    """``mean ± half-width`` of the per-seed differences ``a - b`` (times ``scale``), n said once."""
    return pm(differences(a, b), scale, 1)


def retrieval_dist_cam_rows(runs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """dist-cam Table 1's measures of Dist-CAM on the retrieval model (``run["table1"]``)."""
    get = lambda method, key: [run["table1"][method][key] for run in runs]  # noqa: E731
    err, acc = get("dist_cam", "top1_loc_err"), get("dist_cam", "box_acc")
    centre_err, centre_acc = get("center", "top1_loc_err"), get("center", "box_acc")
    parts = [direction(differences(err, centre_err), -1), direction(differences(acc, centre_acc))]
    curves = [sum(v) / len(v) for v in zip(*get("dist_cam", "box_curve"))]
    first = runs[0]["table1"]
    return [row(
        "3", "dist-cam Table 1's measures on a separately trained metric-learning model: Dist-CAM localizes "
             "the object a retrieval model matches (each test image against its nearest other test image): "
             "lower top-1 loc. error and higher box accuracy than a centred box",
        "Table 1 is a softmax classifier's (ILSVRC); for the metric-learning models no localization "
        "number in the text we have",
        f"at the tau chosen on the validation images: top-1 loc. error Dist-CAM {pm(err, 100, 1)}, centred "
        f"box {pm(centre_err, 100, 1)}; box accuracy Dist-CAM {pm(acc, 100, 1)}, centred box "
        f"{pm(centre_acc, 100, 1)}; MaxBoxAcc (the test images' best tau) Dist-CAM "
        f"{pm(get('dist_cam', 'max_box_acc'), 100, 1)}; top-1 loc. error at tau = {TAU} "
        f"{pm(get('dist_cam', 'top1_loc_err_tau02'), 100, 1)}",
        combine(parts),
        f"ResNet-10 MS-loss model: the first {first['queries']} test images "
        f"({pm([run['table1']['correct'] for run in runs], 1, 0)} with a nearest image of their class), "
        "Dist-CAM against that image's pooled feature (the last "
        f"convolution's channels, Eq. 4-6); tau = {pm(get('dist_cam', 'val_tau'), 1, 2)} chosen per seed on "
        f"{first['val_queries']} validation images (the training classes held out) against their nearest "
        "other validation image; test box accuracy (%) at tau = 0.05, 0.15, ..., 0.95: "
        + " ".join(f"{100 * v:.0f}" for v in curves) + "; centred box of the validation boxes' mean size",
        methods=("dist_cam",))]


def eps_rows(runs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One descriptive row per Dist-CAM ``eps`` on the retrieval model (``run["eps"]``)."""
    rows = []
    for key in [k for k in runs[0]["eps"] if k != "smoothed"]:
        get = lambda name, key=key: [run["eps"][key][name] for run in runs]  # noqa: E731
        default = float(key) == 1e-6
        rows.append(row(
            "3", f"Dist-CAM with Eq. 5's guard eps = {float(key):g}{' (the default)' if default else ''}: "
                 "localization and stability of the map (descriptive)",
            "no claim: eps only keeps 1 / D_k finite; the paper gives no value",
            f"energy {pm(get('energy'), 100, 1)}, box IoU {pm(get('iou'), 100, 1)}; mean |change| of the "
            f"[0, 1] map from eps = 1e-6's {pm(get('change'), 1, 3)}, under a bfloat16-rounded reference "
            f"{pm(get('bf16_change'), 1, 3)}; channels in use (1 / sum W_k^2) {pm(get('channels'), 1, 1)}",
            "n/a",
            "retrieval model's correctly matched test images against their nearest image's pooled feature; "
            f"box at tau = {TAU}; bfloat16: the reference rounded, the same eps "
            "(bench/dist_cam_eps.py's measures)",
            methods=("dist_cam",)))
    return rows


def signed_rows(runs: list[dict[str, Any]], note: str) -> list[dict[str, str]]:
    """FAM on the retrieval model's post-ReLU maps against FAM on the signed maps (descriptive)."""
    rows = []
    for key, (name, sign) in SCORES.items():
        values = {m: [run["scores"][m][key] for run in runs] for m in ("fam", *SIGNED)}
        scale = 100.0 if key in ("energy", "iou") else 1.0
        texts = [f"{LABELS[m]} {pm(values[m], scale, 1)} "
                 f"(it - FAM {pct_diff(values[m], values['fam'], scale)})" for m in SIGNED]
        rows.append(row(
            "5", "FAM on the signed (pre-ReLU) maps of the retrieval model's last block instead of its "
                 f"post-ReLU maps: {name} ({'lower' if sign < 0 else 'higher'} is better; descriptive)",
            "fam applies FAM to the backbone's (post-ReLU) maps; no signed-map figure",
            f"FAM (post-ReLU) {pm(values['fam'], scale, 1)}; " + "; ".join(texts),
            "n/a",
            note + "; signed maps: the input of the block's final ReLU (a forward hook); FAM on "
                   "signed maps: Eq. 11-18 on them, their pooled feature included; with post-ReLU "
                   "weights: the alpha of the model's own pooled feature times the signed maps",
            methods=("fam", *SIGNED)))
    return rows


def table1(runs: list[dict[str, Any]], method: str, key: str) -> list[float]:
    """``top1_loc_err`` / ``max_box_acc`` of a Dist-CAM method: a ProtoNet run's or a retrieval run's."""
    return [run["table1"][method][key] if "table1" in run else run[f"{method}_{key}"] for run in runs]


def variant_rows(runs: list[dict[str, Any]], what: str, note: str) -> list[dict[str, str]]:
    """``fam_unfloored`` against FAM and ``dist_cam_smoothed`` against Dist-CAM on one model: the
    localization / faithfulness scores (and dist-cam Table 1's measures, and the change under a
    bfloat16 reference where measured) of each, descriptive."""
    rows = []
    for variant, paper, label, definition in (
        ("fam_unfloored", "fam", "FAM", "alpha = ReLU(c) / max ReLU(c) instead of Eq. 12's min-max"),
        ("dist_cam_smoothed", "dist_cam", "Dist-CAM",
         "W_k ∝ 1 / (D_k + mean_j D_j) instead of Eq. 5's 1 / D_k"),
    ):
        parts = []
        for key, (name, _) in SCORES.items():
            scale = 100.0 if key in ("energy", "iou") else 1.0
            a, b = ([run["scores"][m][key] for run in runs] for m in (variant, paper))
            parts.append(f"{name} {pm(a, scale, 1)} (it - {label} {pct_diff(a, b, scale)})")
        if variant == "dist_cam_smoothed":
            for key, name in (("top1_loc_err", "top-1 loc. error"), ("max_box_acc", "MaxBoxAcc")):
                a, b = table1(runs, variant, key), table1(runs, paper, key)
                parts.append(f"{name} {pm(a, 100, 1)} (it - {label} {pct_diff(a, b, 100)})")
            if "eps" in runs[0]:
                a = [run["eps"]["smoothed"]["bf16_change"] for run in runs]
                b = [run["eps"]["1e-06"]["bf16_change"] for run in runs]
                parts.append(f"mean |change| under a bfloat16 reference {pm(a, 1, 3)} "
                             f"(it - {label} {pm(differences(a, b), 1, 3)})")
        rows.append(row(
            "5" if paper == "fam" else "3",
            f"{variant} (beyond the papers: {definition}) on the {what}, against {label} (descriptive)",
            "not in the papers (cama.viz.methods.VARIANTS)", "; ".join(parts), "n/a", note,
            methods=(variant, paper)))
    return rows
