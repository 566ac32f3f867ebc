"""The rows and the plot of ``claims_classifier.py``: dist-cam Table 1 and ltgrad-cam Tables 1-2,
Fig. 4-5 from the per-seed measurements (``runs``), and the constants both files share."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from claims_common import REPO, RESULTS, mean_ci, row
from claims_rules import combine, differences, direction, no_change, pm, share

PLOT = RESULTS / "claims" / "ltgrad_delta.png"
TAU = 0.2
DELTAS: tuple[float | None, ...] = (None, *range(0, 100, 10))
METHODS = ("gradcam", "layercam", "fullgrad")
LABELS = {"gradcam": "Grad-CAM", "layercam": "Layer-CAM", "fullgrad": "FullGrad"}
SCORES = {"miou": "mIoU", "precision": "precision", "recall": "recall", "micro_f1": "micro-F1"}
#: what the plot draws, in ltgrad-cam Fig. 4's colours (blue, orange, green)
COLOURS = {"gradcam": (31, 119, 180), "fullgrad": (255, 127, 14), "layercam": (44, 160, 44)}
#: the grid's method suffix of the literal layerization sum (the raw layer maps summed, ``layer_norm="none"``)
LITERAL = "@none"
#: the labels of the two layerization sums, in the rows' claims
LAYER_NORM_LABELS = {False: "[layerization: each layer map min-max normalised, then summed (our default)] ",
                     True: "[layerization: the raw layer maps summed, Eq. 8 as written] "}


def layer_key(method: str, l: int, delta: float | None, literal: bool) -> tuple:
    """The grid key of ``method`` over the last ``l`` stages: the literal sum's where it differs from the
    normalised one (``l >= 2``, and FullGrad's every ``l``: its batch norms plus the input term)."""
    return (method + LITERAL, l, delta) if literal and (l > 1 or method == "fullgrad") else (method, l, delta)


def encode(key: tuple) -> str:
    """A grid key as a JSON object key: ``gradcam/S1``, ``fullgrad/l4/d20``, ``layercam/l1/none``."""
    if len(key) == 2:
        return f"{key[0]}/{key[1]}"
    method, l, delta = key
    return f"{method}/l{l}/{'none' if delta is None else f'd{int(delta)}'}"


# --------------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------------
def score(runs: list[dict[str, Any]], key: tuple, name: str = "miou", split: str = "test") -> list[float]:
    """The per-seed values of one grid score."""
    return [run["grid"][split][encode(key)][name] for run in runs]


def pct(values: Sequence[float]) -> str:
    """Percent, ``mean +- half-width``."""
    return pm(values, 100.0, 1)


def fmt_difference(a: Sequence[float], b: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """The per-seed differences ``a - b`` in percent points, ``mean +- half-width``."""
    return pm(differences(a, b), scale, digits)


def dist_cam_rows(runs: list[dict[str, Any]]) -> list[dict[str, str]]:
    get = lambda name: [run[name] for run in runs]  # noqa: E731
    size, deepest = runs[0]["image_size"], runs[0]["stage_sizes"][-1]
    chosen_on = "validation" if runs[0]["tau_split"] == "val" else "training"
    note = (f"classification accuracy: FC {pct(get('cam_cls_acc'))}, nearest prototype "
            f"{pct(get('dist_cam_cls_acc'))}; ResNet-10 (width 32, {deepest[0]}x{deepest[1]} maps at "
            f"{size[0]}x{size[1]}) on {runs[0]['test_images']} unseen test images of the training classes")
    rows = []
    for key, protocol, extra in (
        ("top1_loc_err", f"box at tau = {TAU} of the map's maximum (CAM's protocol)",
         f"; a {deepest[0]}x{deepest[1]} map upsampled to {size[0]}x{size[1]} may keep most of the image at "
         "tau = 0.2 (see the next row)"),
        ("top1_loc_err_select_tau", f"box at each map's best tau on the {chosen_on} images",
         f"; tau: CAM {pm(get('cam_select_tau'), 1, 2)}, Dist-CAM {pm(get('dist_cam_select_tau'), 1, 2)}"),
    ):
        cam, dcam = get(f"cam_{key}"), get(f"dist_cam_{key}")
        rows.append(row(
            "3", "dist-cam Table 1: Dist-CAM (class prototypes, Eq. 7) has a lower top-1 localization error "
                 f"than CAM on a softmax classifier ({protocol})",
            "ResNet-18: CAM 59.5, Dist-CAM 56.7; over 6 backbones Dist-CAM lower by 1.5-5.9 points "
            "(ILSVRC val)",
            f"CAM {pct(cam)}, Dist-CAM {pct(dcam)}; Dist-CAM - CAM {fmt_difference(dcam, cam, 100, 1)}",
            direction(differences(dcam, cam), sign=-1), note + extra))
    cam_acc, dcam_acc = get("cam_box_acc_select_tau"), get("dist_cam_box_acc_select_tau")
    curves = "; ".join(f"{label} " + " ".join(f"{100 * v:.0f}" for v in mean_curve(get(f"{name}_box_curve")))
                       for name, label in (("cam", "CAM"), ("dist_cam", "Dist-CAM")))
    rows.append(row(
        "3", f"Dist-CAM's boxes localize at least as well as CAM's (box accuracy at the tau chosen on the "
             f"{chosen_on} images, tau = 0.05 ... 0.95)",
        "not reported (Table 1 gives the top-1 error only)",
        f"CAM {pct(cam_acc)}, Dist-CAM {pct(dcam_acc)}; Dist-CAM - CAM {fmt_difference(dcam_acc, cam_acc)}; "
        f"MaxBoxAcc on the test images: CAM {pct(get('cam_max_box_acc'))}, "
        f"Dist-CAM {pct(get('dist_cam_max_box_acc'))}",
        direction(differences(dcam_acc, cam_acc)),
        f"test box accuracy (%) at tau = 0.05, 0.15, ..., 0.95: {curves}"))
    return rows


def mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    """The mean over seeds of per-seed curves."""
    return [sum(values) / len(values) for values in zip(*curves)]


def reference_rows(runs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Whether the setting can decide the claims: the perfect-mask ceiling per stage and the network-free
    colour baseline against the best Grad-CAM stage."""
    stages = [f"S{i + 1}" for i in range(len(runs[0]["stage_sizes"]))]
    ceiling = ", ".join(
        f"{s} ({runs[0]['ceiling'][s]['size'][0]}x{runs[0]['ceiling'][s]['size'][1]}) "
        f"{pct([run['ceiling'][s]['miou'] for run in runs])}" for s in stages)
    deepest = stages[-1]
    box = pct([max(run["ceiling"][deepest]["box_curve"]) for run in runs])
    colour = [run["colour_baseline"]["miou"] for run in runs]
    best = [max(run["grid"]["test"][encode(("gradcam", s))]["miou"] for s in stages) for run in runs]
    return [
        row("3-4", "reference: the perfect-mask ceiling (the object mask average-pooled to a stage's "
                   "resolution, upsampled back, Otsu mIoU)",
            "-", f"mIoU {ceiling}; MaxBoxAcc at {deepest}: {box}", "yes",
            "no map of that resolution scores above its ceiling"),
        row("3-4", "reference: every Grad-CAM stage beats nothing smarter than colour (the network-free "
                   "map |pixel - mean border colour|, Otsu mIoU)",
            "-", f"colour baseline {pct(colour)}, best Grad-CAM stage {pct(best)}; best stage - colour "
                 f"{fmt_difference(best, colour, 100, 1)}",
            direction(differences(best, colour)),
            "'no': the setting is separable by colour, so it cannot show what the deep layers add"),
    ]


def ltgrad_rows(runs: list[dict[str, Any]], plot: Path = PLOT, literal: bool = False) -> list[dict[str, str]]:
    """ltgrad-cam's rows with the layerization sum normalised (``literal=False``) or as Eq. 8 writes it
    (``literal=True``: only the rows that layerize, each claim labelled with its sum)."""
    k = lambda m, l, d: layer_key(m, l, d, literal)  # noqa: E731
    rows = []
    stage = {i: score(runs, ("gradcam", f"S{i}")) for i in range(1, 5)}
    fused = {l: score(runs, k("gradcam", l, None)) for l in (2, 3, 4)}
    shallow = [max(v) for v in zip(stage[1], stage[2], stage[3])]
    stages_text = ", ".join(f"S{i} {pct(stage[i])}" for i in range(1, 5))
    rows.append(row("4", "ltgrad-cam Table 1: Grad-CAM of the deepest stage segments best (mIoU)",
                    "VGG16 on VOC: S1-S4 10.13-14.03, S5 25.31",
                    f"{stages_text}; S4 - best of S1-S3 {fmt_difference(stage[4], shallow, 100, 1)}",
                    direction(differences(stage[4], shallow)), "Otsu mIoU against the object masks"))
    rows.append(row("4", "ltgrad-cam Table 1: fusing every stage (layerization) is worse than the deepest "
                         "stage alone",
                    "S1+...+S5 21.57 < S5 25.31 (S3+S4+S5 22.84)",
                    f"S1+...+S4 {pct(fused[4])}, S2+S3+S4 {pct(fused[3])}, S3+S4 {pct(fused[2])}, "
                    f"S4 {pct(stage[4])}; "
                    f"S4 - (S1+...+S4) {fmt_difference(stage[4], fused[4], 100, 1)}",
                    direction(differences(stage[4], fused[4]))))
    rows.append(row("4", "ltgrad-cam Table 1: fusing every stage beats the shallow stages alone",
                    "S1+...+S5 21.57 > S1-S4 10.13-14.03",
                    f"(S1+...+S4) - best of S1-S3 {fmt_difference(fused[4], shallow, 100, 1)}",
                    direction(differences(fused[4], shallow))))

    def pair(a: tuple, b: tuple, name: str) -> tuple[list[float], list[float]]:
        return score(runs, a, name), score(runs, b, name)

    parts, texts = [], []
    for name in ("miou", "micro_f1"):
        truncated, plain = pair(k("gradcam", 1, 0), k("gradcam", 1, None), name)
        parts.append(direction(differences(truncated, plain)))
        texts.append(f"{SCORES[name]}: {pct(plain)} -> {pct(truncated)} ({fmt_difference(truncated, plain)})")
    rows.append(row("4", "ltgrad-cam Table 2: truncation (delta = 0) improves Grad-CAM of the last stage "
                         "(LTGrad-CAM l = 1)",
                    "mIoU 25.31 -> 26.23, micro-F1 39.5 -> 40.59",
                    "; ".join(texts), combine(parts)))
    truncated, plain = pair(k("fullgrad", 4, 0), k("fullgrad", 4, None), "miou")
    rows.append(row("4", "ltgrad-cam Table 2: truncation (delta = 0) leaves FullGrad about the same "
                         "(|change| < 1 mIoU point)",
                    "mIoU 28.2 -> 28.11",
                    f"mIoU {pct(plain)} -> {pct(truncated)} ({fmt_difference(truncated, plain, 100, 1)})",
                    no_change(differences(truncated, plain), 0.01),
                    "FullGrad over every batch norm and the input"))
    parts, texts = [], []
    for name in ("miou", "micro_f1"):
        lt, plain = pair(k("gradcam", 4, 20), k("gradcam", 1, None), name)
        parts.append(direction(differences(lt, plain)))
        texts.append(f"{SCORES[name]}: Grad-CAM {pct(plain)}, LTGrad-CAM(l=4, delta=20) {pct(lt)} "
                     f"({fmt_difference(lt, plain, 100, 1)})")
    rows.append(row("4", "ltgrad-cam Tables 3-4: LTGrad-CAM (l = all stages, delta = 20) beats Grad-CAM in "
                         "mIoU and micro-F1",
                    "VOC: mIoU 25.31 -> 28.34, F1 39.5 -> 43.06; "
                    "KSDD2: mIoU 25.73 -> 35.37, F1 40.93 -> 52.26",
                    "; ".join(texts), combine(parts)))
    lt, full = pair(k("gradcam", 4, 20), k("fullgrad", 4, None), "miou")
    rows.append(row("4", "ltgrad-cam Tables 3-4: LTGrad-CAM (l = all, delta = 20) reaches FullGrad (mIoU)",
                    "VOC: 28.34 vs 28.2; KSDD2: 35.37 vs 22.14",
                    f"LTGrad-CAM {pct(lt)}, FullGrad {pct(full)} ({fmt_difference(lt, full, 100, 1)})",
                    direction(differences(lt, full))))
    fused_lc, last_lc = pair(k("layercam", 4, 0), k("layercam", 1, 0), "miou")
    rows.append(row("4", "ltgrad-cam Tables 3-4: Layer-CAM over all stages beats Layer-CAM of the last stage "
                         "(mIoU)",
                    "VOC: l=5 30.83 vs l=1 26.14; KSDD2: 28.92 vs 20.50",
                    f"l=1 {pct(last_lc)}, l=4 {pct(fused_lc)} ({fmt_difference(fused_lc, last_lc, 100, 1)})",
                    direction(differences(fused_lc, last_lc)),
                    "Layer-CAM's ReLU of the gradients is delta = 0"))

    # Fig. 4: the delta curves (l = 4) on the test images
    low = [d for d in DELTAS if d is not None and d <= 40]
    parts, texts, peaks = [], [], []
    for method in METHODS:
        plain = score(runs, k(method, 4, None))
        curve = [score(runs, k(method, 4, d)) for d in low]
        mean_low = [sum(values) / len(values) for values in zip(*curve)]
        parts.append(direction(differences(mean_low, plain)))
        texts.append(f"{LABELS[method]} {fmt_difference(mean_low, plain, 100, 1)}")
    rows.append(row("4", "ltgrad-cam Fig. 4: truncation with delta in 0-40 improves the mIoU over no "
                         "truncation (l = all)",
                    "KSDD2: 'generally improved when the quantile lies between 0 and 40' "
                    "(Grad-CAM, Layer-CAM, FullGrad)",
                    "mean mIoU over delta 0-40 minus untruncated: " + "; ".join(texts), combine(parts),
                    f"curves in {plot.relative_to(REPO)}"))
    deltas = [d for d in DELTAS if d is not None]
    flags = []
    for method in METHODS:
        best = []
        for i in range(len(runs)):
            curve = [runs[i]["grid"]["test"][encode(k(method, 4, d))]["miou"] for d in deltas]
            best.append(deltas[max(range(len(curve)), key=curve.__getitem__)])
        flags += [deltas[0] < b < deltas[-1] for b in best]
        peaks.append(f"{LABELS[method]} {best}")
    rows.append(row("4", "ltgrad-cam Fig. 4: the mIoU first rises, then falls with delta (its peak lies "
                         "inside 10-80)",
                    "all three curves rise, then fall (KSDD2 test set)",
                    "best delta per seed: " + "; ".join(peaks), share(flags),
                    "'yes' when every method's curve of every seed peaks strictly inside (0, 90)"))
    # Fig. 5: delta chosen on the training images
    parts, texts = [], []
    for method in METHODS:
        chosen, plain, oracle = [], score(runs, k(method, 4, None)), []
        for run in runs:
            train_curve = {d: run["grid"]["train"][encode(k(method, 4, d))]["miou"] for d in deltas}
            test_curve = {d: run["grid"]["test"][encode(k(method, 4, d))]["miou"] for d in deltas}
            best = max(deltas, key=train_curve.__getitem__)
            chosen.append(test_curve[best])
            oracle.append(max(test_curve.values()))
        parts.append(direction(differences(chosen, plain)))
        texts.append(f"{LABELS[method]} {fmt_difference(chosen, plain, 100, 1)} (oracle gap "
                     f"{fmt_difference(oracle, chosen, 100, 1)})")
    rows.append(row("4", "ltgrad-cam Fig. 5: delta chosen on the training images improves the test mIoU over "
                         "no truncation",
                    "the training curves follow the test curves: 'a suitable delta can be found on the "
                    "training set'",
                    "test mIoU at the training-best delta minus untruncated: " + "; ".join(texts),
                    combine(parts)))
    # every row but the per-stage ones (Table 1 S4, Table 2 l = 1) layerizes: label it with its sum
    single = (0, 3)
    return [r if i in single else {**r, "claim": LAYER_NORM_LABELS[literal] + r["claim"]}
            for i, r in enumerate(rows) if not (literal and i in single)]


# --------------------------------------------------------------------------------------------------
# the plot (Pillow: matplotlib is not a dependency)
# --------------------------------------------------------------------------------------------------
def plot_delta_curves(runs: list[dict[str, Any]], path: Path, literal: bool = False) -> Path:
    """ltgrad-cam Fig. 4 / 5: mean mIoU (95% interval bars) against delta, l = all stages, test and training
    images side by side; dashed: the same method without truncation. ``literal``: the raw layer maps
    summed (Eq. 8 as written) instead of the normalised ones."""
    from PIL import Image, ImageDraw

    from cama.viz.labels import load_font

    deltas = [d for d in DELTAS if d is not None]
    panels = []
    for split in ("test", "train"):
        series = {}
        for method in METHODS:
            curve = [score(runs, layer_key(method, 4, d, literal), split=split) for d in deltas]
            plain = score(runs, layer_key(method, 4, None, literal), split=split)
            series[method] = ([mean_ci([100 * v for v in c]) for c in curve],
                              mean_ci([100 * v for v in plain]))
        panels.append((f"{split} images", series))
    values = [m + s * h for _, series in panels for points, base in series.values()
              for m, h in [*points, base] for s in (-1, 1)]
    low, high = min(values), max(values)
    pad = max(0.5, 0.08 * (high - low))
    low, high = low - pad, high + pad
    font, small = load_font(16), load_font(13)
    width, height, left, right, top, bottom = 560, 400, 64, 16, 40, 56
    canvas = Image.new("RGB", (2 * width, height + 40), "white")
    draw = ImageDraw.Draw(canvas)
    caption = ("ltgrad-cam Fig. 4 / 5 on the synthetic classifier: Otsu mIoU (%) vs truncation delta, "
               f"layerization over all 4 stages ({'raw maps' if literal else 'maps normalised'}, summed); "
               f"mean and 95% interval over {len(runs)} seed(s); "
               "dashed: no truncation")
    draw.text((10, height + 10), caption, fill="black", font=small)
    for p, (title, series) in enumerate(panels):
        x0, x1 = p * width + left, (p + 1) * width - right
        y0, y1 = top, height - bottom
        sx = lambda d: x0 + (x1 - x0) * d / 90.0  # noqa: E731
        sy = lambda v: y1 - (y1 - y0) * (v - low) / (high - low)  # noqa: E731
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, 10), title, fill="black", font=font)
        for d in deltas:
            draw.line([sx(d), y1, sx(d), y1 + 5], fill="black")
            draw.text((sx(d) - 8, y1 + 8), str(int(d)), fill="black", font=small)
        draw.text(((x0 + x1) // 2 - 30, y1 + 28), "delta (percentile)", fill="black", font=small)
        draw.text((p * width + 4, y0 - 18), "mIoU (%)", fill="black", font=small)
        for i in range(6):
            v = low + (high - low) * i / 5
            draw.line([x0 - 5, sy(v), x0, sy(v)], fill="black")
            draw.text((p * width + 4, sy(v) - 8), f"{v:.1f}", fill="black", font=small)
        for k, method in enumerate(METHODS):
            points, (base, _) = series[method]
            colour = COLOURS[method]
            for x in range(int(x0), int(x1), 12):  # dashed baseline
                draw.line([x, sy(base), min(x + 6, x1), sy(base)], fill=colour, width=1)
            xy = [(sx(d), sy(m)) for d, (m, _) in zip(deltas, points)]
            draw.line(xy, fill=colour, width=2)
            for (x, y), (m, h) in zip(xy, points):
                draw.line([x, sy(m - h), x, sy(m + h)], fill=colour, width=1)
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
            lx = x0 + 150 + 110 * k  # the legend, in a row above the frame
            draw.line([lx, 20, lx + 20, 20], fill=colour, width=3)
            draw.text((lx + 24, 12), LABELS[method], fill="black", font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
