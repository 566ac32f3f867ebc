"""Claims of dist-cam Table 1 and ltgrad-cam Tables 1-2, Fig. 4-5 on a softmax classifier, in miniature.

For every seed, ``configs/classifier_synthetic.yaml`` (ResNet-10 -> GAP -> bias-free FC, cross-entropy)
is trained on the synthetic classes (:class:`datamodules.ClassificationDataModule`: the first 40
images of each class train, the other 20 are the test images, never seen in training; the seed
sets the weights, the batches and the synthetic data), and its maps are scored on the test images:

* **dist-cam Table 1** (item 3): top-1 localization error (box at ``tau = 0.2`` of the map's maximum,
  IoU >= 0.5 with the object's box, *and* the right class; ``cama.metrics.top1_localization_error``)
  and MaxBoxAcc (best box accuracy over tau = 0.05 ... 0.95) of CAM (dist-cam Eq. 3, the FC weight
  row of the FC's top-1 class) and of Dist-CAM (Eq. 4-6) against the class prototypes (Eq. 7: the
  mean GAP feature of the class's training images, all of them, without augmentation), the class
  being the nearest prototype by the summed channel distances ``sum_k D_k`` (Eq. 4: "the smallest
  summation of D^c determines the output class"). Dist-CAM on the ProtoNet is in
  ``bench/claims_fam.py`` (it trains the ProtoNet).
* **ltgrad-cam** (item 4): the gradient CAMs of the logit of the image's true class (ltgrad-cam Eq.
  1-11, ``cama.explain.record_gradients`` / ``gradient_layer_maps``: one forward and backward pass per
  batch serves every method, layer set and truncation), Otsu-binarised and scored against the object
  masks (pixel counts pooled over images: mIoU = mean of foreground and background IoU, precision,
  recall, micro-F1; ``cama.metrics.segmentation``):

  - Table 1: Grad-CAM of each stage S1 ... S4 (``layer1`` ... ``layer4``) and of the layerized last
    ``l`` stages (S3+S4, S2+S3+S4, S1+...+S4);
  - Table 2 and the grid: Grad-CAM, Layer-CAM and FullGrad with the layerization trick over the last
    ``l = 1 .. 4`` stages (FullGrad: the bias terms of every batch norm of those stages, and of the
    stem for ``l = 4`` -- the whole network, the original FullGrad -- plus the input term) and the
    truncation trick with ``delta = 0, 10, ..., 90`` (and none);
  - Fig. 4 / 5: the mIoU of the three methods (``l = 4``) against ``delta`` on the test images and on
    as many training images (``results/claims/ltgrad_delta.png``), and ``delta`` chosen on the
    training images, scored on the test images.

Every figure is a mean over seeds with its 95% t-interval (``mean ± half-width (n=seeds)``); ``holds``
follows the rules of ``bench/claims_rules.py``. Writes ``results/claims/classifier.json`` (the rows, every
per-seed number, the whole grid) and ``results/claims/ltgrad_delta.png``.

    python bench/claims_classifier.py                    # 3 seeds, the config's 20 epochs
    python bench/claims_classifier.py --smoke            # 1 seed, 1 epoch, 60 images: a quick check
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from claims_common import (  # noqa: E402
    DEFAULT_SEEDS, REPO, RESULTS, mean_ci, pick_device, row, train_config, write_rows,
)
from claims_rules import combine, differences, direction, no_change, pm, share, with_seeds  # noqa: E402

from callbacks.base import cpu_threads  # noqa: E402
from cama.explain import (  # noqa: E402
    class_activation_map,
    dist_cam,
    gradient_layer_maps,
    logit_score,
    minmax_normalize,
    postprocess,
    record_gradients,
)
from cama.metrics.boxes import max_box_accuracy, top1_localization_error  # noqa: E402
from cama.metrics.segmentation import (  # noqa: E402
    otsu_segmentation, segmentation_counts, segmentation_scores,
)
from cama.references import class_prototypes  # noqa: E402

CONFIG = REPO / "configs" / "classifier_synthetic.yaml"
NAME = "classifier"
PLOT = RESULTS / "claims" / "ltgrad_delta.png"
TAU = 0.2
DELTAS: tuple[float | None, ...] = (None, *range(0, 100, 10))
METHODS = ("gradcam", "layercam", "fullgrad")
LABELS = {"gradcam": "Grad-CAM", "layercam": "Layer-CAM", "fullgrad": "FullGrad"}
SCORES = {"miou": "mIoU", "precision": "precision", "recall": "recall", "micro_f1": "micro-F1"}
#: what the plot draws, in ltgrad-cam Fig. 4's colours (blue, orange, green)
COLOURS = {"gradcam": (31, 119, 180), "fullgrad": (255, 127, 14), "layercam": (44, 160, 44)}


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def collect(model: Any, loader: Any, device: torch.device, limit: int | None = None) -> dict[str, Tensor]:
    """Every batch of ``loader`` (up to ``limit`` images): images, labels, boxes, masks ``[N, H, W]``
    and the feature maps ``[N, K, h, w]`` (one forward per batch)."""
    parts: dict[str, list[Tensor]] = {k: [] for k in ("image", "label", "box", "mask", "maps")}
    count = 0
    for batch in loader:
        take = len(batch["label"]) if limit is None else min(len(batch["label"]), limit - count)
        if take <= 0:
            break
        images = batch["image"][:take].to(device)
        parts["image"].append(images)
        parts["label"].append(batch["label"][:take].to(device))
        parts["box"].append(batch["box"][:take].float().to(device))
        parts["mask"].append(batch["mask"][:take].any(dim=1).to(device))
        parts["maps"].append(model.feature_maps(images)[0].float())
        count += take
    return {k: torch.cat(v) for k, v in parts.items()}


def data_overrides(seed: int, smoke: bool) -> dict[str, Any]:
    """The seed also draws the synthetic data and the training batches (a replicate of everything)."""
    out: dict[str, Any] = {"seed": seed, "synthetic_seed": seed}
    if smoke:  # a few classes and images: the pipeline, not the numbers
        out.update(synthetic_num_classes=6, synthetic_images_per_class=15, train_images_per_class=10,
                   batch_size=24, eval_batch_size=30)
    return out


# --------------------------------------------------------------------------------------------------
# item 3: dist-cam Table 1
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def class_maps(model: Any, data: dict[str, Tensor], prototypes: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """``name -> (maps [N, H, W] in [0, 1], predicted class [N])`` of CAM (the FC's top-1 class) and of
    Dist-CAM (the nearest prototype's class, against that prototype)."""
    size = tuple(data["image"].shape[-2:])
    embedding = model.embed_maps([data["maps"]])
    predicted_fc = model.logits_from_embedding(embedding).argmax(1)
    # Eq. 4: D^c = |GAP(P^c) - GAP(Q)|; the nearest class has the smallest sum of D^c
    predicted_proto = (embedding[:, None, :] - prototypes[None]).abs().sum(-1).argmin(1)
    cam = class_activation_map(data["maps"], model.fc.weight, predicted_fc)
    dcam = dist_cam(data["maps"], prototypes[predicted_proto])
    return {
        "cam": (postprocess(cam[:, None], size)[:, 0], predicted_fc),
        "dist_cam": (postprocess(dcam[:, None], size)[:, 0], predicted_proto),
    }


@torch.no_grad()
def dist_cam_table(model: Any, train: dict[str, Tensor], test: dict[str, Tensor]) -> dict[str, float]:
    """CAM vs Dist-CAM against the class prototypes on the test images (module docstring): the top-1
    localization error at ``tau = 0.2`` and at the tau that is best on the training images, MaxBoxAcc."""
    num_classes = model.fc.weight.shape[0]
    prototypes = class_prototypes(model.embed_maps([train["maps"]]), train["label"], num_classes)  # Eq. 7
    on_train, on_test = class_maps(model, train, prototypes), class_maps(model, test, prototypes)
    out: dict[str, float] = {}
    for name, (maps, predicted) in on_test.items():
        correct = predicted == test["label"]
        accuracy, best_tau = max_box_accuracy(maps, test["box"])
        _, train_tau = max_box_accuracy(on_train[name][0], train["box"])
        out[f"{name}_top1_loc_err"] = float(top1_localization_error(maps, test["box"], correct, tau=TAU))
        out[f"{name}_top1_loc_err_train_tau"] = float(
            top1_localization_error(maps, test["box"], correct, tau=float(train_tau)))
        out[f"{name}_train_tau"] = float(train_tau)
        out[f"{name}_max_box_acc"] = float(accuracy)
        out[f"{name}_max_box_acc_tau"] = float(best_tau)
        out[f"{name}_cls_acc"] = float(correct.float().mean())
    return out


# --------------------------------------------------------------------------------------------------
# item 4: ltgrad-cam
# --------------------------------------------------------------------------------------------------
def gradient_layers(model: Any) -> tuple[list[str], dict[int, list[str]]]:
    """The stages ``S1 .. S4`` and, for FullGrad, the batch norms of the last ``l`` stages (the stem's
    with ``l = 4``: every batch norm of the network)."""
    stages = model.stage_names()
    norms: list[tuple[int, str]] = []  # (stage 1..4, 0: the stem; name)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            stage = next((i + 1 for i, s in enumerate(stages) if name.startswith(s + ".")), 0)
            norms.append((stage, name))
    depth = len(stages)
    per_l = {
        l: [n for s, n in norms if s > depth - l or (l == depth and s == 0)] for l in range(1, depth + 1)
    }
    return stages, per_l


def add_counts(table: dict[tuple, Tensor], key: tuple, maps: Tensor, masks: Tensor) -> None:
    """Pool the Otsu pixel counts (TP, FP, FN, TN) of ``maps`` against ``masks`` under ``key``."""
    counts = segmentation_counts(otsu_segmentation(maps), masks).double().sum(0).cpu()
    table[key] = table[key] + counts if key in table else counts


def layerized(maps: Sequence[Tensor]) -> Tensor:
    """Eq. 8: the per-layer maps (already upsampled and normalised) summed, min-max normalised."""
    total = maps[0]
    for m in maps[1:]:
        total = total + m
    return minmax_normalize(total)


def ltgrad_grid(model: Any, data: dict[str, Tensor], batch_size: int) -> dict[tuple, dict[str, float]]:
    """Otsu scores of every (method, l, delta) and of Grad-CAM per stage, on ``data`` (module docstring).

    Keys: ``("gradcam", "S1")`` ... ``("gradcam", "S4")`` and ``(method, l, delta)`` with ``delta``
    None (no truncation) or 0 ... 90.
    """
    stages, norms_per_l = gradient_layers(model)
    depth = len(stages)
    norms = norms_per_l[depth]
    position = {name: i for i, name in enumerate(norms)}
    table: dict[tuple, Tensor] = {}
    for start in range(0, data["image"].shape[0], batch_size):
        images = data["image"][start:start + batch_size]
        masks = data["mask"][start:start + batch_size]
        labels = data["label"][start:start + batch_size]
        # one forward and backward pass: the stages (Grad-CAM, Layer-CAM), every batch norm and the
        # input (FullGrad)
        record = record_gradients(model, images, logit_score(labels), stages + norms, inputs=True)
        stage_record = record.select(range(depth))
        norm_record = record.select(range(depth, depth + len(norms)))
        for delta in DELTAS:
            for method in ("gradcam", "layercam"):
                maps = gradient_layer_maps(stage_record, method, truncation=delta)  # S1 .. S4
                for l in range(1, depth + 1):
                    add_counts(table, (method, l, delta), layerized(maps[depth - l:]), masks)
                if method == "gradcam" and delta is None:
                    for i in range(depth):
                        add_counts(table, ("gradcam", f"S{i + 1}"), maps[i], masks)
            # the batch norms, then the input term
            maps = gradient_layer_maps(norm_record, "fullgrad", truncation=delta)
            for l in range(1, depth + 1):
                chosen = [maps[position[n]] for n in norms_per_l[l]] + [maps[-1]]
                add_counts(table, ("fullgrad", l, delta), layerized(chosen), masks)
    return {key: {k: float(v) for k, v in segmentation_scores(c).items()} for key, c in table.items()}


# --------------------------------------------------------------------------------------------------
# one seed
# --------------------------------------------------------------------------------------------------
def run_seed(seed: int, epochs: int | None, smoke: bool, images: int | None, batch_size: int,
             threads: int | None) -> dict[str, Any]:
    start = time.perf_counter()
    model, datamodule, metrics = train_config(CONFIG, seed, data_overrides=data_overrides(seed, smoke),
                                              max_epochs=epochs)
    device = pick_device()
    model.to(device).eval()
    trained = time.perf_counter()
    with cpu_threads(threads, device):
        out = measure(model, datamodule, metrics, seed, images, batch_size, device)
    out["train_seconds"] = trained - start
    out["seconds"] = time.perf_counter() - start
    return out


def measure(model: Any, datamodule: Any, metrics: dict[str, float], seed: int, images: int | None,
            batch_size: int, device: torch.device) -> dict[str, Any]:
    """Items 3 and 4 on a trained classifier (module docstring)."""
    train = collect(model, datamodule.eval_dataloader("train"), device)
    test = collect(model, datamodule.eval_dataloader("test"), device, images)
    out: dict[str, Any] = {"seed": seed, "test_acc": metrics.get("test/acc"),
                           "test_images": int(test["label"].numel())}
    out.update(dist_cam_table(model, train, test))
    print(f"  seed {seed}: trained in {metrics['train_seconds']:.0f} s, test accuracy {out['test_acc']:.3f}; "
          f"top-1 loc. error CAM {out['cam_top1_loc_err']:.3f}, Dist-CAM {out['dist_cam_top1_loc_err']:.3f}",
          flush=True)
    # as many training images as test images, spread over the classes (the eval loader's order)
    subset = {k: v[: test["label"].numel()] for k, v in train.items()}
    grids = {}
    for split, data in (("test", test), ("train", subset)):
        t = time.perf_counter()
        grids[split] = ltgrad_grid(model, data, batch_size)
        print(f"  seed {seed}: ltgrad grid on {data['label'].numel()} {split} images in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
    out["grid"] = {split: {encode(k): v for k, v in g.items()} for split, g in grids.items()}
    return out


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
    note = (f"classification accuracy: FC {pct(get('cam_cls_acc'))}, nearest prototype "
            f"{pct(get('dist_cam_cls_acc'))}; ResNet-10 (width 32, 4x4 maps) on {runs[0]['test_images']} "
            "unseen test images of the training classes")
    rows = []
    for key, protocol, extra in (
        ("top1_loc_err", f"box at tau = {TAU} of the map's maximum (CAM's protocol)",
         "; a 4x4 map upsampled to 64x64 keeps most of the image at tau = 0.2 (see the next row)"),
        ("top1_loc_err_train_tau", "box at each map's best tau on the training images",
         f"; tau: CAM {pm(get('cam_train_tau'), 1, 2)}, Dist-CAM {pm(get('dist_cam_train_tau'), 1, 2)}"),
    ):
        cam, dcam = get(f"cam_{key}"), get(f"dist_cam_{key}")
        rows.append(row(
            "3", "dist-cam Table 1: Dist-CAM (class prototypes, Eq. 7) has a lower top-1 localization error "
                 f"than CAM on a softmax classifier ({protocol})",
            "ResNet-18: CAM 59.5, Dist-CAM 56.7; over 6 backbones Dist-CAM lower by 1.5-5.9 points "
            "(ILSVRC val)",
            f"CAM {pct(cam)}, Dist-CAM {pct(dcam)}; Dist-CAM - CAM {fmt_difference(dcam, cam, 100, 1)}",
            direction(differences(dcam, cam), sign=-1), note + extra))
    cam_acc, dcam_acc = get("cam_max_box_acc"), get("dist_cam_max_box_acc")
    rows.append(row(
        "3", "Dist-CAM's boxes localize at least as well as CAM's (MaxBoxAcc over tau = 0.05 ... 0.95)",
        "not reported (Table 1 gives the top-1 error only)",
        f"CAM {pct(cam_acc)}, Dist-CAM {pct(dcam_acc)}; Dist-CAM - CAM {fmt_difference(dcam_acc, cam_acc)}",
        direction(differences(dcam_acc, cam_acc)),
        f"best tau on the test images: CAM {pm(get('cam_max_box_acc_tau'), 1, 2)}, "
        f"Dist-CAM {pm(get('dist_cam_max_box_acc_tau'), 1, 2)}"))
    return rows


def ltgrad_rows(runs: list[dict[str, Any]]) -> list[dict[str, str]]:
    rows = []
    stage = {i: score(runs, ("gradcam", f"S{i}")) for i in range(1, 5)}
    fused = {l: score(runs, ("gradcam", l, None)) for l in (2, 3, 4)}
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
        truncated, plain = pair(("gradcam", 1, 0), ("gradcam", 1, None), name)
        parts.append(direction(differences(truncated, plain)))
        texts.append(f"{SCORES[name]}: {pct(plain)} -> {pct(truncated)} ({fmt_difference(truncated, plain)})")
    rows.append(row("4", "ltgrad-cam Table 2: truncation (delta = 0) improves Grad-CAM of the last stage "
                         "(LTGrad-CAM l = 1)",
                    "mIoU 25.31 -> 26.23, micro-F1 39.5 -> 40.59",
                    "; ".join(texts), combine(parts)))
    truncated, plain = pair(("fullgrad", 4, 0), ("fullgrad", 4, None), "miou")
    rows.append(row("4", "ltgrad-cam Table 2: truncation (delta = 0) leaves FullGrad about the same "
                         "(|change| < 1 mIoU point)",
                    "mIoU 28.2 -> 28.11",
                    f"mIoU {pct(plain)} -> {pct(truncated)} ({fmt_difference(truncated, plain, 100, 1)})",
                    no_change(differences(truncated, plain), 0.01),
                    "FullGrad over every batch norm and the input"))
    parts, texts = [], []
    for name in ("miou", "micro_f1"):
        lt, plain = pair(("gradcam", 4, 20), ("gradcam", 1, None), name)
        parts.append(direction(differences(lt, plain)))
        texts.append(f"{SCORES[name]}: Grad-CAM {pct(plain)}, LTGrad-CAM(l=4, delta=20) {pct(lt)} "
                     f"({fmt_difference(lt, plain, 100, 1)})")
    rows.append(row("4", "ltgrad-cam Tables 3-4: LTGrad-CAM (l = all stages, delta = 20) beats Grad-CAM in "
                         "mIoU and micro-F1",
                    "VOC: mIoU 25.31 -> 28.34, F1 39.5 -> 43.06; "
                    "KSDD2: mIoU 25.73 -> 35.37, F1 40.93 -> 52.26",
                    "; ".join(texts), combine(parts)))
    lt, full = pair(("gradcam", 4, 20), ("fullgrad", 4, None), "miou")
    rows.append(row("4", "ltgrad-cam Tables 3-4: LTGrad-CAM (l = all, delta = 20) reaches FullGrad (mIoU)",
                    "VOC: 28.34 vs 28.2; KSDD2: 35.37 vs 22.14",
                    f"LTGrad-CAM {pct(lt)}, FullGrad {pct(full)} ({fmt_difference(lt, full, 100, 1)})",
                    direction(differences(lt, full))))
    fused_lc, last_lc = pair(("layercam", 4, 0), ("layercam", 1, 0), "miou")
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
        plain = score(runs, (method, 4, None))
        curve = [score(runs, (method, 4, d)) for d in low]
        mean_low = [sum(values) / len(values) for values in zip(*curve)]
        parts.append(direction(differences(mean_low, plain)))
        texts.append(f"{LABELS[method]} {fmt_difference(mean_low, plain, 100, 1)}")
    rows.append(row("4", "ltgrad-cam Fig. 4: truncation with delta in 0-40 improves the mIoU over no "
                         "truncation (l = all)",
                    "KSDD2: 'generally improved when the quantile lies between 0 and 40' "
                    "(Grad-CAM, Layer-CAM, FullGrad)",
                    "mean mIoU over delta 0-40 minus untruncated: " + "; ".join(texts), combine(parts),
                    f"curves in {PLOT.relative_to(REPO)}"))
    deltas = [d for d in DELTAS if d is not None]
    flags = []
    for method in METHODS:
        best = []
        for i in range(len(runs)):
            curve = [runs[i]["grid"]["test"][encode((method, 4, d))]["miou"] for d in deltas]
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
        chosen, plain, oracle = [], score(runs, (method, 4, None)), []
        for run in runs:
            train_curve = {d: run["grid"]["train"][encode((method, 4, d))]["miou"] for d in deltas}
            test_curve = {d: run["grid"]["test"][encode((method, 4, d))]["miou"] for d in deltas}
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
    return rows


# --------------------------------------------------------------------------------------------------
# the plot (Pillow: matplotlib is not a dependency)
# --------------------------------------------------------------------------------------------------
def plot_delta_curves(runs: list[dict[str, Any]], path: Path) -> Path:
    """ltgrad-cam Fig. 4 / 5: mean mIoU (95% interval bars) against delta, l = all stages, test and training
    images side by side; dashed: the same method without truncation."""
    from PIL import Image, ImageDraw

    from cama.viz.labels import load_font

    deltas = [d for d in DELTAS if d is not None]
    panels = []
    for split in ("test", "train"):
        series = {}
        for method in METHODS:
            points = [mean_ci([100 * v for v in score(runs, (method, 4, d), split=split)]) for d in deltas]
            series[method] = (points, mean_ci([100 * v for v in score(runs, (method, 4, None), split=split)]))
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
               f"layerization over all 4 stages; mean and 95% interval over {len(runs)} seed(s); "
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


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's)")
    parser.add_argument("--images", type=int, default=None, help="test images scored (default: all)")
    parser.add_argument("--batch-size", type=int, default=100, help="images per gradient pass")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of the measurements (training keeps torch's): small tensors run "
                             "faster on one, and on a busy 2-core machine several threads wait on each other "
                             "(0: torch's)")
    parser.add_argument("--smoke", action="store_true", help="1 seed, 1 epoch, 6 classes: a quick check")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.epochs = args.seeds[:1], args.epochs or 1
    start = time.perf_counter()
    runs = []
    for seed in args.seeds:
        print(f"classifier claims: seed {seed} ...", flush=True)
        runs.append(run_seed(seed, args.epochs, args.smoke, args.images, args.batch_size,
                             args.threads or None))
    rows = with_seeds(dist_cam_rows(runs) + ltgrad_rows(runs), len(runs))
    plot = plot_delta_curves(runs, PLOT)
    extra = {"runs": runs, "seeds": args.seeds, "epochs": args.epochs, "smoke": args.smoke,
             "plot": str(plot.relative_to(REPO)), "seconds": time.perf_counter() - start}
    path = write_rows(NAME, rows, extra)
    for r in rows:
        print(f"[{r['holds']:>6}] {r['claim']}\n         paper: {r['paper']}\n         ours:  {r['ours']}")
    seconds = time.perf_counter() - start
    print(f"wrote {path.relative_to(REPO)} and {plot.relative_to(REPO)} in {seconds:.0f} s")


if __name__ == "__main__":
    main()
