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

  Every layerized row comes twice, labelled with its sum (``bench/claims_classifier_grid.py``): each
  layer map min-max normalised before the sum (``gradient_cam``'s default ``layer_norm="minmax"``) and
  the raw maps summed (``layer_norm="none"``, Eq. 8 as written; its plot ``*_literal.png``), both from
  the same layer maps of the same backward pass.

Beyond the papers (``bench/claims_classifier_beyond.py``, each row saying so): ``dist_cam_smoothed``
(``W_k ∝ 1 / (D_k + mean D)``) gets Dist-CAM's rows, and the two layerization sums are compared.

Every figure is a mean over seeds with its 95% t-interval (``mean ± half-width (n=seeds)``); ``holds``
follows the rules of ``bench/claims_rules.py``. Writes ``results/claims/classifier.json`` (the rows, every
per-seed number, the whole grid) and ``results/claims/ltgrad_delta.png``.

Beside the maps it scores what decides whether the setting can tell them apart
(``bench/claims_classifier_maps.py``): the perfect-mask ceiling at each stage's resolution, the
network-free colour baseline ``|pixel - mean border colour|``, and the box accuracy at every tau for CAM
and Dist-CAM, tau chosen on the validation images (``val_images_per_class``; the training images where
the config has none) and read on the test images.

``--config cluttered`` runs ``configs/classifier_cluttered.yaml`` (128 px, 8x8 maps, classes defined by an
arrangement of shapes among same-palette distractors; 5 seeds) and writes
``results/claims/classifier_cluttered.json`` and ``results/claims/ltgrad_delta_cluttered.png``. Each seed's
results are written to ``results/claims/classifier/<config>/seed<N>.json`` as soon as it finishes and read
back by the next run with the same settings (``--fresh``: run them again), so the bench can run over
several sittings; its wall time over every sitting is printed and stored (``seconds``).

    python bench/claims_classifier.py                    # 3 seeds, the config's 20 epochs
    python bench/claims_classifier.py --config cluttered # 5 seeds on the cluttered scene
    python bench/claims_classifier.py --smoke            # 1 seed, 1 epoch, 60 images: a quick check
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from claims_classifier_maps import (  # noqa: E402
    box_curve,
    colour_baseline,
    mask_ceilings,
    stage_sizes,
    tau_choice,
)
from claims_classifier_beyond import layer_norm_rows, variant_rows  # noqa: E402
from claims_classifier_grid import ltgrad_grid  # noqa: E402
from claims_classifier_rows import (  # noqa: E402
    PLOT,
    TAU,
    dist_cam_rows,
    encode,
    ltgrad_rows,
    plot_delta_curves,
    reference_rows,
)
from claims_common import (  # noqa: E402
    DEFAULT_SEEDS,
    REPO,
    RESULTS,
    train_and_measure,
    write_rows,
)
from claims_seed_cache import cached_seed  # noqa: E402
from claims_rules import with_seeds  # noqa: E402
from torch import Tensor

from cama.explain import (  # noqa: E402
    class_activation_map,
    dist_cam,
    postprocess,
)
from cama.metrics.boxes import max_box_accuracy, top1_localization_error  # noqa: E402
from cama.loading import read_config  # noqa: E402
from cama.references import class_prototypes  # noqa: E402
from cama.viz.methods import VARIANTS  # noqa: E402

#: --config -> (the YAML, the rows' JSON name in results/claims/, the delta plot, the default seeds)
CONFIGS: dict[str, tuple[Path, str, Path, tuple[int, ...]]] = {
    "synthetic": (REPO / "configs" / "classifier_synthetic.yaml", "classifier", PLOT, tuple(DEFAULT_SEEDS)),
    "cluttered": (REPO / "configs" / "classifier_cluttered.yaml", "classifier_cluttered",
                  RESULTS / "claims" / "ltgrad_delta_cluttered.png", (0, 1, 2, 3, 4)),
}
#: each seed's results, as soon as it finishes: <config>/seed<N>.json (reused unless --fresh)
SEED_CACHE = RESULTS / "claims" / "classifier"
#: what a cached seed holds beyond the config: 2 -- the layerization both ways and dist_cam_smoothed
GRID_VERSION = 2



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


def data_overrides(config: Path, seed: int, smoke: bool) -> dict[str, Any]:
    """The seed also draws the synthetic data and the training batches (a replicate of everything)."""
    out: dict[str, Any] = {"seed": seed, "synthetic": {"seed": seed}}
    if smoke:  # a few classes and images: the pipeline, not the numbers
        out["synthetic"].update(num_classes=6, images_per_class=15)
        out.update(train_images_per_class=10, batch_size=24, eval_batch_size=30)
        if read_config(config)["data"].get("init_args", {}).get("val_images_per_class"):
            out["val_images_per_class"] = 2
    return out


# --------------------------------------------------------------------------------------------------
# item 3: dist-cam Table 1
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def class_maps(model: Any, data: dict[str, Tensor], prototypes: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """``name -> (maps [N, H, W] in [0, 1], predicted class [N])`` of CAM (the FC's top-1 class), of
    Dist-CAM (the nearest prototype's class, against that prototype) and of ``dist_cam_smoothed``
    (:data:`cama.viz.methods.VARIANTS`, beyond the paper: Dist-CAM with ``W_k ∝ 1 / (D_k + mean D)``)."""
    size = tuple(data["image"].shape[-2:])
    embedding = model.embed_maps([data["maps"]])
    predicted_fc = model.logits_from_embedding(embedding).argmax(1)
    # Eq. 4: D^c = |GAP(P^c) - GAP(Q)|; the nearest class has the smallest sum of D^c
    predicted_proto = (embedding[:, None, :] - prototypes[None]).abs().sum(-1).argmin(1)
    cam = class_activation_map(data["maps"], model.fc.weight, predicted_fc)
    dcam = dist_cam(data["maps"], prototypes[predicted_proto])
    # the variant beyond the paper, W_k ∝ 1 / (D_k + mean D), with its registered options
    smoothed = dist_cam(data["maps"], prototypes[predicted_proto], **VARIANTS["dist_cam_smoothed"][1])
    return {
        "cam": (postprocess(cam[:, None], size)[:, 0], predicted_fc),
        "dist_cam": (postprocess(dcam[:, None], size)[:, 0], predicted_proto),
        "dist_cam_smoothed": (postprocess(smoothed[:, None], size)[:, 0], predicted_proto),
    }


@torch.no_grad()
def dist_cam_table(model: Any, train: dict[str, Tensor], test: dict[str, Tensor],
                   select: dict[str, Tensor]) -> dict[str, Any]:
    """CAM vs Dist-CAM against the class prototypes on the test images (module docstring): the top-1
    localization error at ``tau = 0.2`` and at the tau that is best on the ``select`` images (the
    validation images, or the training images where the config has none), MaxBoxAcc, and the box
    accuracy at every tau on the test and the ``select`` images."""
    num_classes = model.fc.weight.shape[0]
    prototypes = class_prototypes(model.embed_maps([train["maps"]]), train["label"], num_classes)  # Eq. 7
    on_select, on_test = class_maps(model, select, prototypes), class_maps(model, test, prototypes)
    out: dict[str, Any] = {}
    for name, (maps, predicted) in on_test.items():
        correct = predicted == test["label"]
        accuracy, best_tau = max_box_accuracy(maps, test["box"])
        test_curve, select_curve = box_curve(maps, test["box"]), box_curve(on_select[name][0], select["box"])
        tau, at_tau = tau_choice(select_curve, test_curve)
        out[f"{name}_top1_loc_err"] = float(top1_localization_error(maps, test["box"], correct, tau=TAU))
        out[f"{name}_top1_loc_err_select_tau"] = float(
            top1_localization_error(maps, test["box"], correct, tau=tau))
        out[f"{name}_select_tau"] = tau
        out[f"{name}_box_acc_select_tau"] = at_tau
        out[f"{name}_box_curve"] = test_curve
        out[f"{name}_box_curve_select"] = select_curve
        out[f"{name}_max_box_acc"] = float(accuracy)
        out[f"{name}_max_box_acc_tau"] = float(best_tau)
        out[f"{name}_cls_acc"] = float(correct.float().mean())
    return out


# --------------------------------------------------------------------------------------------------
# one seed
# --------------------------------------------------------------------------------------------------
def run_seed(config: Path, seed: int, epochs: int | None, smoke: bool, images: int | None, batch_size: int,
             threads: int | None) -> dict[str, Any]:
    return train_and_measure(
        config, seed, data_overrides(config, seed, smoke), epochs, threads,
        lambda model, dm, metrics, device: measure(model, dm, metrics, seed, images, batch_size, device),
    )


def measure(model: Any, datamodule: Any, metrics: dict[str, float], seed: int, images: int | None,
            batch_size: int, device: torch.device) -> dict[str, Any]:
    """Items 3 and 4 on a trained classifier, with the references they need (module docstring)."""
    train = collect(model, datamodule.eval_dataloader("train"), device)
    test = collect(model, datamodule.eval_dataloader("test"), device, images)
    has_val = bool(getattr(datamodule, "val_images_per_class", 0))
    select = collect(model, datamodule.eval_dataloader("val"), device) if has_val else train
    sizes = stage_sizes(model, test["image"][:1])
    out: dict[str, Any] = {
        "seed": seed, "test_acc": metrics.get("test/acc"), "test_images": int(test["label"].numel()),
        "tau_split": "val" if has_val else "train", "select_images": int(select["label"].numel()),
        "image_size": list(test["image"].shape[-2:]), "stage_sizes": [list(s) for s in sizes],
        "object_area": float(test["mask"].float().mean()),
    }
    out.update(dist_cam_table(model, train, test, select))
    out["ceiling"] = mask_ceilings(test["mask"], test["box"], sizes)
    out["colour_baseline"] = colour_baseline(test["image"], test["mask"], test["box"])
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


def summary(run: dict[str, Any]) -> str:
    """One seed's headline numbers, for the log."""
    stages = len(run["stage_sizes"])
    grid = run["grid"]["test"]
    lines = [f"seed {run['seed']}: test accuracy {run['test_acc']:.3f}, {run['image_size'][0]} px, stages "
             + ", ".join(f"{h}x{w}" for h, w in run["stage_sizes"])
             + f", object {100 * run['object_area']:.1f}% of the image"]
    for name, label in (("cam", "CAM"), ("dist_cam", "Dist-CAM")):
        lines.append(f"  {label}: MaxBoxAcc {run[f'{name}_max_box_acc']:.3f} "
                     f"(tau {run[f'{name}_max_box_acc_tau']:.2f}); "
                     f"tau {run[f'{name}_select_tau']:.2f} chosen on {run['tau_split']}: box acc "
                     f"{run[f'{name}_box_acc_select_tau']:.3f}, top-1 loc. error "
                     f"{run[f'{name}_top1_loc_err_select_tau']:.3f}; at tau {TAU}: "
                     f"{run[f'{name}_top1_loc_err']:.3f}")
    lines.append("  Grad-CAM mIoU " + ", ".join(
        f"S{i} {grid[f'gradcam/S{i}']['miou']:.3f}" for i in range(1, stages + 1))
        + f"; layerized S1+...+S{stages} {grid[f'gradcam/l{stages}/none']['miou']:.3f}")
    lines.append("  perfect-mask ceiling mIoU " + ", ".join(
        f"{k} ({v['size'][0]}x{v['size'][1]}) {v['miou']:.3f}" for k, v in run["ceiling"].items()))
    colour = run["colour_baseline"]
    lines.append(f"  colour baseline |pixel - border|: mIoU {colour['miou']:.3f}, "
                 f"MaxBoxAcc {max(colour['box_curve']):.3f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="synthetic",
                        help="synthetic: configs/classifier_synthetic.yaml (64 px, classes by colour); "
                             "cluttered: configs/classifier_cluttered.yaml (128 px, classes by arrangement, "
                             "distractors)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="default: 0 1 2 (synthetic), 0 ... 4 (cluttered)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's)")
    parser.add_argument("--images", type=int, default=None, help="test images scored (default: all)")
    parser.add_argument("--batch-size", type=int, default=100, help="images per gradient pass")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of the measurements (training keeps torch's): small tensors run "
                             "faster on one, and on a busy 2-core machine several threads wait on each other "
                             "(0: torch's)")
    parser.add_argument("--smoke", action="store_true", help="1 seed, 1 epoch, 6 classes: a quick check")
    parser.add_argument("--fresh", action="store_true",
                        help="run every seed again, even those stored in results/claims/classifier/<config>/")
    args = parser.parse_args(argv)
    config, name, plot_path, default_seeds = CONFIGS[args.config]
    seeds = args.seeds or list(default_seeds)
    if args.smoke:
        seeds, args.epochs = seeds[:1], args.epochs or 1
    cache = SEED_CACHE / (args.config + ("_smoke" if args.smoke else ""))
    # the scene's options and the grid's version: a cached seed of another scene or grid runs again
    settings = {"config": config.name, "epochs": args.epochs, "images": args.images, "smoke": args.smoke,
                "batch_size": args.batch_size, "grid": GRID_VERSION,
                "synthetic": read_config(config)["data"]["init_args"].get("synthetic", {})}
    start = time.perf_counter()
    runs, reused = [], []
    for seed in seeds:
        print(f"classifier claims ({args.config}): seed {seed} ...", flush=True)
        run, hit = cached_seed(cache / f"seed{seed}.json", {**settings, "seed": seed}, args.fresh,
                               lambda seed=seed: run_seed(config, seed, args.epochs, args.smoke, args.images,
                                                          args.batch_size, args.threads or None))
        if hit:
            reused.append(seed)
            print(f"  seed {seed}: read from {(cache / f'seed{seed}.json').relative_to(REPO)} "
                  f"({run['seconds']:.0f} s when it ran)", flush=True)
        print(summary(run), flush=True)
        runs.append(run)
    literal_path = plot_path.with_name(plot_path.stem + "_literal.png")
    rows = with_seeds(dist_cam_rows(runs) + variant_rows(runs) + reference_rows(runs)
                      + ltgrad_rows(runs, plot_path) + ltgrad_rows(runs, literal_path, literal=True)
                      + layer_norm_rows(runs), len(runs))
    if args.config != "synthetic":  # the table (bench/claims.py) holds both configs' rows
        rows = [{**r, "claim": f"[{args.config} scene] {r['claim']}"} for r in rows]
    plot = plot_delta_curves(runs, plot_path)
    plot_delta_curves(runs, literal_path, literal=True)
    sitting = time.perf_counter() - start
    # the bench's wall time over every sitting: each seed's own time, plus this sitting's rows and plot
    total = sum(run["seconds"] for run in runs) + sitting - sum(
        run["seconds"] for run in runs if run["seed"] not in reused)
    extra = {"runs": runs, "seeds": seeds, "epochs": args.epochs, "smoke": args.smoke, "config": args.config,
             "plot": str(plot.relative_to(REPO)), "seconds": total, "sitting_seconds": sitting,
             "reused_seeds": reused}
    path = write_rows(name, rows, extra)
    for r in rows:
        print(f"[{r['holds']:>6}] {r['claim']}\n         paper: {r['paper']}\n         ours:  {r['ours']}")
    print(f"wrote {path.relative_to(REPO)} and {plot.relative_to(REPO)}; wall time {total:.0f} s in all "
          f"({total / 60:.1f} min; this sitting {sitting:.0f} s, seeds read back: {reused or 'none'})")


if __name__ == "__main__":
    main()
