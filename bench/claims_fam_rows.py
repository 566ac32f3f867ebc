"""The rows of ``claims_fam.py``: fam Tables I, II, IV and Dist-CAM on the ProtoNet from the
per-seed measurements (``runs``), and the constants both files share."""

from __future__ import annotations

from typing import Any

from claims_common import row
from claims_rules import combine, differences, direction, pm

TAU = 0.2
MAPS = ("fam", "dist_cam", "gradcam")
BASELINES = ("dist_cam", "gradcam", "center_box", "constant")
LABELS = {"fam": "FAM", "dist_cam": "Dist-CAM", "gradcam": "Grad-CAM", "center_box": "centred box",
          "constant": "constant"}
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
