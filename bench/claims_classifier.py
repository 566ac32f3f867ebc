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
import time
from collections.abc import Sequence
from typing import Any

import torch
from claims_classifier_rows import (  # noqa: E402
    DELTAS,
    PLOT,
    TAU,
    dist_cam_rows,
    encode,
    ltgrad_rows,
    plot_delta_curves,
)
from claims_common import (  # noqa: E402
    DEFAULT_SEEDS,
    REPO,
    train_and_measure,
    write_rows,
)
from claims_rules import with_seeds  # noqa: E402
from torch import Tensor

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
    otsu_segmentation,
    segmentation_counts,
    segmentation_scores,
)
from cama.references import class_prototypes  # noqa: E402

CONFIG = REPO / "configs" / "classifier_synthetic.yaml"
NAME = "classifier"



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
    out: dict[str, Any] = {"seed": seed, "synthetic": {"seed": seed}}
    if smoke:  # a few classes and images: the pipeline, not the numbers
        out["synthetic"].update(num_classes=6, images_per_class=15)
        out.update(train_images_per_class=10, batch_size=24, eval_batch_size=30)
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
    return train_and_measure(
        CONFIG, seed, data_overrides(seed, smoke), epochs, threads,
        lambda model, dm, metrics, device: measure(model, dm, metrics, seed, images, batch_size, device),
    )


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
