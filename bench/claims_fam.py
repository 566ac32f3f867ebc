"""Claims of fam Tables I, II, IV (and dist-cam's Dist-CAM on a ProtoNet and a metric model), in miniature.

For every seed (which also draws the synthetic data, the training batches and the test episodes)
two similarity models are trained on the embedded synthetic classes and explained on test data of
classes they never saw:

* the **ProtoNet** of ``configs/protonet_synthetic.yaml`` (Conv4, cosine similarity to the class
  prototypes): the queries of the first ``--episodes`` 5-way 1-shot test episodes, each explained
  against the class it predicts (:mod:`cama.viz.episodes`: FAM against that class's supports,
  fam Eq. 11-15; Dist-CAM against its prototype, dist-cam Eq. 4-7; Grad-CAM of the cosine
  similarity to the prototype);
* the **retrieval model** of ``configs/retrieval_synthetic.yaml`` (ResNet-10, MS loss, FC projection):
  the first ``--queries`` test images (classes interleaved), each explained against its nearest other
  test image (:class:`cama.references.RetrievalReferences`; FAM through the projection, fam Eq.
  16-18, and Grad-CAM of the cosine similarity, :class:`cama.viz.ModelExplainer`; Dist-CAM against the
  reference's pooled feature, dist-cam Eq. 4-6, in the channel space of the last convolution).

As in the FAM paper, the maps are scored on the **correctly classified** queries (the predicted class
is the true one; retrieval: the nearest image is of the query's class), pooled over queries:

* localization (fam Table I / IV): the energy pointing game (Eq. 19, the map's energy inside the
  object's box) and the IoU of the box of the map at ``tau = 0.2`` with the object's box (Eq. 20);
* faithfulness (fam Table II): Average Drop and Increase in Confidence (Eq. 21-22) of the cosine
  similarity to the reference (prototype / nearest image) when the query is multiplied by the map
  (:func:`cama.metrics.faithfulness.mask_images`);

next to two maps that know nothing of the image: a **centred box** (1 inside a box of the mean
ground-truth size centred in the image, 0 outside) and a **constant map** (localization: any
constant, whose box is the whole image and whose energy is the box's share of the image;
faithfulness: each image's FAM map's mean value everywhere, so that the same share of the image's
intensity is kept as by FAM).

It also scores Dist-CAM on every ProtoNet query (item 3, dist-cam Sec. 4.1): its top-1 localization
error (box at ``tau = 0.2``, IoU >= 0.5 and the right class) and MaxBoxAcc, against the centred box.

On the retrieval model (:mod:`claims_fam_variants`):

* **dist-cam Table 1 on a metric model** (item 3): Dist-CAM of the first ``--queries`` test images
  against their nearest image (all of them, the nearest image's class decides "correct"): top-1
  localization error and box accuracy at the tau chosen on the validation split (the last
  ``val_classes`` training classes, held out of training; each validation image against its nearest
  other one), MaxBoxAcc on the test images, against a centred box;
* **Dist-CAM's eps** (item 3, Eq. 5's guard): per eps in 1e-8, 1e-6 (the default), 1e-4, 1e-2 the energy
  and box IoU, the map's change from eps = 1e-6's and under a bfloat16-rounded reference
  (:mod:`dist_cam_eps`'s measures), descriptive rows (``holds`` ``n/a``);
* **FAM on signed maps** (item 5): FAM on the last block's maps before its final ReLU (a forward hook),
  localization, AD / IC and the sanity check, descriptive;
* the sanity check (item 6) of FAM, Grad-CAM, Dist-CAM and every variant below.

Both models also draw the **variants beyond the papers** (``cama.viz.methods.VARIANTS``,
``fam_unfloored`` and ``dist_cam_smoothed``) and score them as their paper versions (descriptive rows).

Every figure is a mean over seeds with its 95% t-interval; ``holds`` follows ``bench/claims_rules.py``.
Each seed's results are cached in ``results/claims/fam/seed<N>.json`` (with the settings that decide
them: the configs' digests, data overrides, epochs, episodes, queries, eps, :data:`MEASURES`) as soon as
the seed finishes; a later sitting reuses them (``--fresh`` runs them again). Writes
``results/claims/fam.json`` with the bench's wall time over every sitting and the host's 2048² matmul
GFLOP/s.

    python bench/claims_fam.py                 # 5 seeds (0-4), the configs' epochs; resumable
    python bench/claims_fam.py --smoke         # 1 seed, 1 epoch, small data, under results/claims/tmp/smoke
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from claims_cama_cache import run_settings
from claims_common import REPO, RESULTS, train_and_measure, write_rows
from claims_fam_rows import (
    MAPS,
    TAU,
    eps_rows,
    fam_rows,
    protonet_dist_cam_rows,
    retrieval_dist_cam_rows,
    signed_rows,
    variant_rows,
)
from claims_fam_variants import (
    DIST_CAMS,
    EPSILONS,
    VARIANT_MAPS,
    centred_box_scores,
    dist_cam_raw,
    dist_cam_table1,
    eps_sweep,
    nearest_items,
    render,
    sanity_explain,
    score_maps,
    signed_raw_maps,
)
from claims_rules import pm, with_seeds
from claims_sanity import as_lists, sanity_plot, sanity_rows
from claims_seed_cache import cached_seed
from real_scale import matmul_gflops
from torch import Tensor

from callbacks.base import load_items
from cama.explain import sanity_check
from cama.metrics.boxes import max_box_accuracy, top1_localization_error
from cama.viz import ModelExplainer
from cama.viz.episodes import episode_maps

PROTONET = REPO / "configs" / "protonet_synthetic.yaml"
RETRIEVAL = REPO / "configs" / "retrieval_synthetic.yaml"
NAME = "fam"
SEEDS = (0, 1, 2, 3, 4)
#: bump when what a seed measures changes: the seeds cached before are then run again
MEASURES = 2



# --------------------------------------------------------------------------------------------------
# the ProtoNet
# --------------------------------------------------------------------------------------------------
def protonet_overrides(seed: int, smoke: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"seed": seed, "synthetic": {"seed": seed}, "eval_seed": seed}
    if smoke:
        out["synthetic"].update(num_classes=30, images_per_class=20)
        out.update(train_episodes=5, val_episodes=2, test_episodes=4)
    return out


@torch.no_grad()
def protonet_queries(model: Any, datamodule: Any, episodes: int, device: torch.device) -> dict[str, Tensor]:
    """The queries of the first ``episodes`` test episodes with what explains them (one forward an
    episode)."""
    parts: dict[str, list[Tensor]] = {}
    for e, batch in enumerate(datamodule.test_dataloader()):
        if e >= episodes:
            break
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        maps = model.feature_maps(batch["image"])
        refs = model.episode_references(batch, maps)
        q = refs.query_index
        item = {"image": batch["image"][q], "box": batch["box"][q].float(), "maps": refs.query_maps.float(),
                "prototype": refs.prototype, "supports": refs.supports,
                "correct": refs.prediction == refs.target, "embedding": model.embed_maps([refs.query_maps])}
        for k, v in item.items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


def run_protonet(seed: int, epochs: int | None, smoke: bool, episodes: int, chunk: int,
                 threads: int | None) -> dict[str, Any]:
    out = train_and_measure(
        PROTONET, seed, protonet_overrides(seed, smoke), epochs, threads,
        lambda model, dm, metrics, device: measure_protonet(model, dm, metrics, seed, episodes, chunk,
                                                            device),
    )
    print(f"  seed {seed}: ProtoNet trained in {out['train_seconds']:.0f} s, "
          f"test accuracy {out['test_acc']:.3f}; "
          f"{out['correct']} of {out['queries']} queries correct; "
          f"FAM energy {out['scores']['fam']['energy']:.3f}, "
          f"Dist-CAM MaxBoxAcc {out['dist_cam_max_box_acc']:.3f} ({out['seconds']:.0f} s)", flush=True)
    return out


def measure_protonet(model: Any, dm: Any, metrics: dict[str, float], seed: int, episodes: int, chunk: int,
                     device: torch.device) -> dict[str, Any]:
    """Item 5 (and item 3's Dist-CAM) on a trained ProtoNet (module docstring)."""
    q = protonet_queries(model, dm, episodes, device)
    size = tuple(q["image"].shape[-2:])
    metric = model.hparams.metric
    out: dict[str, Any] = {"seed": seed, "test_acc": metrics.get("test/acc"),
                           "queries": int(q["correct"].numel()), "correct": int(q["correct"].sum())}
    # item 3: Dist-CAM (and its smoothed variant) of every query against its predicted class's prototype
    for method in DIST_CAMS:
        dcam = render(dist_cam_raw(method, q["maps"], q["prototype"]), size)
        accuracy, best_tau = max_box_accuracy(dcam, q["box"])
        error = top1_localization_error(dcam, q["box"], q["correct"], tau=TAU)
        out.update({f"{method}_top1_loc_err": float(error),
                    f"{method}_max_box_acc": float(accuracy), f"{method}_max_box_acc_tau": float(best_tau)})
    centre = centred_box_scores(q["box"], q["box"], q["correct"], size)
    out.update(center_top1_loc_err=centre["top1_loc_err"], center_box_acc=centre["box_acc"])
    # item 5: the correctly classified queries
    keep = q["correct"].nonzero().squeeze(1)
    c = {k: v[keep] for k, v in q.items()}
    explainer = ModelExplainer(model)
    maps = {}
    for method in MAPS + VARIANT_MAPS:
        maps[method] = torch.cat([
            episode_maps(method, explainer, c["image"][s:s + chunk], c["maps"][s:s + chunk],
                         c["prototype"][s:s + chunk], c["supports"][s:s + chunk], metric, size)
            for s in range(0, len(keep), chunk)
        ])
    scores = F.cosine_similarity(c["embedding"], c["prototype"], dim=1)

    def similarity(masked: Tensor, rows: slice) -> Tensor:
        return F.cosine_similarity(model(masked), c["prototype"][rows], dim=1)

    out["scores"] = score_maps(maps, c["image"], c["box"], similarity, scores, dm.mean, dm.std, chunk)
    return out


# --------------------------------------------------------------------------------------------------
# the retrieval model
# --------------------------------------------------------------------------------------------------
def retrieval_overrides(seed: int, smoke: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"seed": seed, "synthetic": {"seed": seed}}
    if smoke:
        out["synthetic"].update(num_classes=12, images_per_class=10)  # 6 train (2 of them validate), 6 test
        out.update(val_classes=2, batch_size=16, eval_batch_size=50)
    return out


def run_retrieval(seed: int, epochs: int | None, smoke: bool, queries: int, chunk: int,
                  threads: int | None) -> dict[str, Any]:
    out = train_and_measure(
        RETRIEVAL, seed, retrieval_overrides(seed, smoke), epochs, threads,
        lambda model, dm, metrics, device: measure_retrieval(model, dm, metrics, seed, queries, chunk,
                                                             device),
    )
    print(f"  seed {seed}: retrieval trained in {out['train_seconds']:.0f} s, "
          f"Recall@1 {out['recall_at_1']:.3f}; "
          f"{out['correct']} of {out['queries']} queries correct; "
          f"FAM energy {out['scores']['fam']['energy']:.3f} ({out['seconds']:.0f} s)", flush=True)
    return out


@torch.no_grad()
def measure_retrieval(model: Any, dm: Any, metrics: dict[str, float], seed: int, queries: int, chunk: int,
                      device: torch.device) -> dict[str, Any]:
    """Items 3 and 5 on a trained retrieval model (module docstring)."""
    test = nearest_items(model, dm.test_dataloader(), dm.datasets["test"], queries, device)
    val = nearest_items(model, dm.val_dataloader(), dm.datasets["val"], queries, device)
    keep = test["correct"].nonzero().squeeze(1)
    c = {k: v[keep] for k, v in test.items()}
    size = tuple(c["image"].shape[-2:])
    explainer = ModelExplainer(model)
    projection = model.embedding_projection()
    maps: dict[str, list[Tensor]] = {}
    for s in range(0, len(keep), chunk):
        part = {k: v[s:s + chunk] for k, v in c.items()}
        features = explainer.features_from_maps(part["image"], [part["maps"]])
        for method in ("fam", "gradcam", "fam_unfloored"):  # FAM through the projection (Eq. 16-18)
            maps.setdefault(method, []).append(explainer.explain(method, features, part["target"], size,
                                                                 branches=False)[:, 0])
        raw = {m: dist_cam_raw(m, part["maps"], part["reference_pooled"]) for m in DIST_CAMS}  # Eq. 4-6
        raw.update(signed_raw_maps(part["signed"], part["maps"], part["target"], projection))
        for method, r in raw.items():
            maps.setdefault(method, []).append(render(r, size))
    joined = {k: torch.cat(v) for k, v in maps.items()}
    scores = (c["embedding"] * c["target"]).sum(1)  # unit embeddings: the cosine similarity

    def similarity(masked: Tensor, rows_: slice) -> Tensor:
        return F.cosine_similarity(model(masked), c["target"][rows_], dim=1)

    out: dict[str, Any] = {"seed": seed, "recall_at_1": metrics.get("test/recall@1"),
                           "queries": len(test["image"]), "correct": int(keep.numel())}
    out["scores"] = score_maps(joined, c["image"], c["box"], similarity, scores, dm.mean, dm.std, chunk)
    out["table1"] = dist_cam_table1(test, val)
    out["eps"] = eps_sweep(c["maps"], c["reference_pooled"], c["box"], size)
    # item 6 on this model: 32 of these queries against the same references
    count = min(32, len(keep))
    reference_images = load_items(dm.datasets["test"], c["reference"][:count].tolist(), device)["image"]
    names, blocks = zip(*model.randomization_blocks())
    check = sanity_check(sanity_explain(reference_images, ["fam", "fam_unfloored", "gradcam"]),
                         model, list(blocks), list(names), c["image"][:count], seed=seed)
    out["sanity"] = as_lists(check)
    return out


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------
def run_seed(seed: int, args: argparse.Namespace, gflops: float) -> dict[str, Any]:
    """Both models of one seed, trained and measured."""
    start, threads = time.perf_counter(), args.threads or None
    out = {"seed": seed, "matmul_gflops": gflops,
           "protonet": run_protonet(seed, args.epochs, args.smoke, args.episodes, args.chunk, threads),
           "retrieval": run_retrieval(seed, args.epochs, args.smoke, args.queries, args.chunk, threads)}
    return out | {"seconds": time.perf_counter() - start}


def seed_settings(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """What a cached seed must share with this sitting to be reused (JSON-native, as stored)."""
    settings = {"seed": seed, "measures": MEASURES, "episodes": args.episodes, "queries": args.queries,
                "epsilons": list(EPSILONS), "smoke": args.smoke,
                "protonet": run_settings(PROTONET, protonet_overrides(seed, args.smoke), args.epochs),
                "retrieval": run_settings(RETRIEVAL, retrieval_overrides(seed, args.smoke), args.epochs)}
    return json.loads(json.dumps(settings))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs of both models (default: the configs')")
    parser.add_argument("--episodes", type=int, default=20,
                        help="ProtoNet test episodes explained (75 queries each)")
    parser.add_argument("--queries", type=int, default=600,
                        help="retrieval test images explained (and validation images that choose tau)")
    parser.add_argument("--chunk", type=int, default=200, help="images per explanation batch")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of the measurements (training keeps torch's): small tensors run "
                             "faster on one, and on a busy 2-core machine several threads wait on each other "
                             "(0: torch's)")
    parser.add_argument("--smoke", action="store_true",
                        help="1 seed, 1 epoch, small data: a quick check (under results/claims/tmp/smoke)")
    parser.add_argument("--fresh", action="store_true", help="run every seed again, even those cached")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.epochs = args.seeds[:1], args.epochs or 1
        args.episodes, args.queries = min(args.episodes, 4), min(args.queries, 60)
    out_dir = RESULTS / "claims" / "tmp" / "smoke" if args.smoke else RESULTS / "claims"
    start = time.perf_counter()
    gflops, threads = matmul_gflops()
    runs, reused = [], []
    for seed in args.seeds:
        print(f"fam claims: seed {seed} ...", flush=True)
        path = out_dir / NAME / f"seed{seed}.json"
        run, hit = cached_seed(path, seed_settings(seed, args), args.fresh,
                               lambda seed=seed: run_seed(seed, args, gflops))
        if hit:
            reused.append(seed)
            print(f"  seed {seed}: read from {path.relative_to(REPO)} ({run['seconds']:.0f} s when it ran)",
                  flush=True)
        runs.append(run)
    protonet, retrieval = [run["protonet"] for run in runs], [run["retrieval"] for run in runs]
    get = lambda runs, name: [run[name] for run in runs]  # noqa: E731
    proto_note = (f"Conv4 ProtoNet (cosine), correctly classified queries of {args.episodes} 5-way 1-shot "
                  f"test episodes ({pm(get(protonet, 'correct'), 1, 0)} per seed), few-shot accuracy "
                  f"{pm(get(protonet, 'test_acc'), 100, 1)}; AD / IC of the cosine similarity to the "
                  "predicted prototype, in percent")
    retrieval_note = (f"ResNet-10 MS-loss model with FC projection, the first {args.queries} test images "
                      "whose nearest other image is of their class "
                      f"({pm(get(retrieval, 'correct'), 1, 0)} per seed), "
                      f"Recall@1 {pm(get(retrieval, 'recall_at_1'), 100, 1)}; "
                      "AD / IC of the cosine similarity to that image, in percent")
    rows = with_seeds(
        protonet_dist_cam_rows(protonet) + retrieval_dist_cam_rows(retrieval) + eps_rows(retrieval)
        + fam_rows(protonet, "protonet", "ProtoNet's few-shot queries", proto_note)
        + fam_rows(retrieval, "retrieval", "retrieval model's queries", retrieval_note)
        + signed_rows(retrieval, retrieval_note)
        + variant_rows(protonet, "ProtoNet's few-shot queries", proto_note)
        + variant_rows(retrieval, "retrieval model's queries", retrieval_note),
        len(runs),
    )
    sanity = [run["sanity"] for run in retrieval]
    rows += sanity_rows("the retrieval model", sanity)
    sanity_plot("the retrieval model", sanity, out_dir / "sanity_retrieval.png")
    sitting = time.perf_counter() - start
    # the bench's wall time over every sitting: each seed's own time, plus this sitting's rest
    total = sitting + sum(run["seconds"] for run in runs if run["seed"] in reused)
    extra = {"protonet": protonet, "retrieval": retrieval, "seeds": args.seeds, "epochs": args.epochs,
             "episodes": args.episodes, "queries": args.queries, "smoke": args.smoke, "seconds": total,
             "sitting_seconds": sitting, "reused_seeds": reused, "matmul_gflops": gflops, "threads": threads}
    if args.smoke:  # results/claims/fam.json holds the whole bench only
        path = out_dir / f"{NAME}.json"
        path.write_text(json.dumps({"rows": rows, **extra}, indent=2, sort_keys=True))
    else:
        path = write_rows(NAME, rows, extra)
    for r in rows:
        print(f"[{r['holds']:>6}] {r['claim']}\n         paper: {r['paper']}\n         ours:  {r['ours']}")
    print(f"wrote {path.relative_to(REPO)}; wall time {total:.0f} s in all ({total / 60:.1f} min; "
          f"this sitting "
          f"{sitting:.0f} s, seeds read back: {reused or 'none'}); host {gflops:.0f} GFLOP/s "
          f"(2048² float32 matmul, {threads} threads)")


if __name__ == "__main__":
    main()
