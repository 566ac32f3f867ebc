"""Claims of fam Tables I, II, IV (and dist-cam's Dist-CAM on a ProtoNet), in miniature.

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

Every figure is a mean over seeds with its 95% t-interval; ``holds`` follows ``bench/claims_rules.py``.
Writes ``results/claims/fam.json``.

    python bench/claims_fam.py                 # 3 seeds, the configs' epochs
    python bench/claims_fam.py --smoke         # 1 seed, 1 epoch, small data: a quick check
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from claims_common import DEFAULT_SEEDS, REPO, RESULTS, train_and_measure, write_rows  # noqa: E402
from claims_fam_rows import MAPS, TAU, fam_rows, protonet_dist_cam_rows  # noqa: E402
from claims_rules import pm, with_seeds  # noqa: E402
from claims_sanity import as_lists, sanity_plot, sanity_rows  # noqa: E402
from torch import Tensor

from callbacks.base import load_items  # noqa: E402
from callbacks.sanity_checks import sanity_maps  # noqa: E402
from cama.explain import dist_cam, postprocess, sanity_check  # noqa: E402
from cama.metrics.boxes import (  # noqa: E402
    box_iou,
    box_localization_iou,
    centered_boxes,
    max_box_accuracy,
    top1_localization_error,
)
from cama.metrics.faithfulness import average_drop, increase_in_confidence, mask_images  # noqa: E402
from cama.metrics.ranking import EmbeddingSet  # noqa: E402
from cama.metrics.segmentation import energy_pointing_game  # noqa: E402
from cama.references import RetrievalReferences  # noqa: E402
from cama.viz import ModelExplainer  # noqa: E402
from cama.viz.episodes import episode_maps  # noqa: E402

PROTONET = REPO / "configs" / "protonet_synthetic.yaml"
RETRIEVAL = REPO / "configs" / "retrieval_synthetic.yaml"
NAME = "fam"



# --------------------------------------------------------------------------------------------------
# scoring (shared by both models)
# --------------------------------------------------------------------------------------------------
def box_maps(boxes: Tensor, size: Sequence[int]) -> Tensor:
    """``[B, H, W]`` maps that are 1 on the pixels whose centre lies inside each box, else 0."""
    ys = torch.arange(size[0], device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(size[1], device=boxes.device, dtype=torch.float32) + 0.5
    inside_y = (ys[None] >= boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])
    inside_x = (xs[None] >= boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])
    return (inside_y[:, :, None] & inside_x[:, None, :]).float()


@torch.no_grad()
def score_maps(
    maps: dict[str, Tensor], images: Tensor, boxes: Tensor, similarity: Any, scores: Tensor,
    mean: Sequence[float], std: Sequence[float], chunk: int,
) -> dict[str, dict[str, float]]:
    """Energy, box IoU at tau, AD and IC of every map (``name -> [N, H, W]``) of the correctly classified
    queries ``images`` (their boxes ``[N, 4]``, their similarity to the reference ``scores`` ``[N]``;
    ``similarity(masked images, rows) -> [n]`` scores masked images against the same references), plus
    the centred box and the constant map (module docstring)."""
    size = tuple(images.shape[-2:])
    mean_size = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], dim=1).mean(0)
    centre = centered_boxes(mean_size, size)[None].expand(len(boxes), 4)
    localization = {**maps, "center_box": box_maps(centre, size), "constant": torch.ones_like(maps["fam"])}
    fam_level = maps["fam"].mean(dim=(1, 2), keepdim=True)
    faithfulness = {**localization, "constant": fam_level.expand_as(maps["fam"])}
    out: dict[str, dict[str, float]] = {}
    for name in localization:
        masked = [similarity(mask_images(images[s:s + chunk], faithfulness[name][s:s + chunk], mean, std),
                             slice(s, s + chunk)) for s in range(0, len(images), chunk)]
        masked_scores = torch.cat(masked)
        out[name] = {
            "energy": float(energy_pointing_game(localization[name], boxes).mean()),
            "iou": float(box_localization_iou(localization[name], boxes, [TAU])[:, 0].mean()),
            "ad": float(average_drop(scores, masked_scores)),
            "ic": float(increase_in_confidence(scores, masked_scores)),
        }
    return out


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
        lambda model, dm, metrics, device: measure_protonet(model, dm, metrics, seed, episodes, chunk, device),
    )
    print(f"  seed {seed}: ProtoNet trained in {out['train_seconds']:.0f} s, test accuracy {out['test_acc']:.3f}; "
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
    # item 3: Dist-CAM of every query against its predicted class's prototype (forward only)
    dcam = postprocess(dist_cam(q["maps"], q["prototype"])[:, None], size)[:, 0]
    accuracy, best_tau = max_box_accuracy(dcam, q["box"])
    mean_size = torch.stack([q["box"][:, 2] - q["box"][:, 0], q["box"][:, 3] - q["box"][:, 1]], 1).mean(0)
    centre_hit = box_iou(centered_boxes(mean_size, size)[None], q["box"]) >= 0.5
    out.update(
        dist_cam_top1_loc_err=float(top1_localization_error(dcam, q["box"], q["correct"], tau=TAU)),
        dist_cam_max_box_acc=float(accuracy), dist_cam_max_box_acc_tau=float(best_tau),
        center_top1_loc_err=float(1.0 - (centre_hit & q["correct"]).float().mean()),
        center_box_acc=float(centre_hit.float().mean()),
    )
    # item 5: the correctly classified queries
    keep = q["correct"].nonzero().squeeze(1)
    c = {k: v[keep] for k, v in q.items()}
    explainer = ModelExplainer(model)
    maps = {}
    for method in MAPS:
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
        out["synthetic"].update(num_classes=10, images_per_class=10)
        out.update(batch_size=20, eval_batch_size=50)
    return out


def run_retrieval(seed: int, epochs: int | None, smoke: bool, queries: int, chunk: int,
                  threads: int | None) -> dict[str, Any]:
    out = train_and_measure(
        RETRIEVAL, seed, retrieval_overrides(seed, smoke), epochs, threads,
        lambda model, dm, metrics, device: measure_retrieval(model, dm, metrics, seed, queries, chunk, device),
    )
    print(f"  seed {seed}: retrieval trained in {out['train_seconds']:.0f} s, Recall@1 {out['recall_at_1']:.3f}; "
          f"{out['correct']} of {out['queries']} queries correct; "
          f"FAM energy {out['scores']['fam']['energy']:.3f} ({out['seconds']:.0f} s)", flush=True)
    return out


@torch.no_grad()
def measure_retrieval(model: Any, dm: Any, metrics: dict[str, float], seed: int, queries: int, chunk: int,
                      device: torch.device) -> dict[str, Any]:
    """Item 5 on a trained retrieval model (module docstring)."""
    parts: dict[str, list[Tensor]] = {}
    # every test image is a reference candidate; the first `queries` (classes interleaved) are explained
    for batch in dm.test_dataloader():
        maps = model.feature_maps(batch["image"].to(device))
        item = {"embedding": model.embed_maps(maps), "pooled": model.pooled(maps).float(),
                "label": batch["label"].to(device), "index": batch["index"].to(device)}
        have = sum(len(x) for x in parts.get("image", []))
        if have < queries:
            n = min(queries - have, len(batch["label"]))
            item.update(image=batch["image"][:n].to(device), box=batch["box"][:n].float().to(device),
                        maps=maps[0][:n].float())
        for k, v in item.items():
            parts.setdefault(k, []).append(v)
    every = {k: torch.cat(v) for k, v in parts.items()}
    n = every["image"].shape[0]
    order = torch.argsort(every["index"])  # EmbeddingSet rows ordered by dataset index
    gallery = EmbeddingSet(every["embedding"][order], every["label"][order], every["index"][order])
    references, matches = RetrievalReferences.from_dataset(dm.datasets["test"]).rank(
        gallery, every["embedding"][:n], every["index"][:n], 1)
    rows = torch.searchsorted(gallery.indices, references[:, 0].clamp_min(0))
    correct = matches[:, 0] & (references[:, 0] >= 0)
    keep = correct.nonzero().squeeze(1)
    images, boxes, query_maps = every["image"][keep], every["box"][keep], every["maps"][keep]
    target = gallery.embeddings[rows[keep]]
    reference_pooled = every["pooled"][order][rows[keep]]
    size = tuple(images.shape[-2:])
    explainer = ModelExplainer(model)
    maps: dict[str, list[Tensor]] = {m: [] for m in MAPS}
    for s in range(0, len(keep), chunk):
        features = explainer.features_from_maps(images[s:s + chunk], [query_maps[s:s + chunk]])
        for method in ("fam", "gradcam"):  # FAM through the projection (Eq. 16-18); Grad-CAM of the cosine
            explained = explainer.explain(method, features, target[s:s + chunk], size, branches=False)
            maps[method].append(explained[:, 0])
        raw = dist_cam(query_maps[s:s + chunk], reference_pooled[s:s + chunk])  # the conv channels, Eq. 4-6
        maps["dist_cam"].append(postprocess(raw[:, None], size)[:, 0])
    joined = {k: torch.cat(v) for k, v in maps.items()}
    scores = (every["embedding"][:n][keep] * target).sum(1)  # unit embeddings: the cosine similarity

    def similarity(masked: Tensor, rows_: slice) -> Tensor:
        return F.cosine_similarity(model(masked), target[rows_], dim=1)

    out: dict[str, Any] = {"seed": seed, "recall_at_1": metrics.get("test/recall@1"), "queries": n,
                           "correct": int(keep.numel())}
    out["scores"] = score_maps(joined, images, boxes, similarity, scores, dm.mean, dm.std, chunk)
    # item 6 on this model: 32 of these queries against the same references (Dist-CAM through the
    # ModelExplainer needs a concatenated embedding: this model has a projection)
    count = min(32, len(keep))
    reference_images = load_items(dm.datasets["test"], references[keep[:count], 0].tolist(), device)["image"]
    names, blocks = zip(*model.randomization_blocks())
    check = sanity_check(lambda m, x: sanity_maps(m, x, reference_images, ["fam", "gradcam"]),
                         model, list(blocks), list(names), images[:count], seed=seed)
    out["sanity"] = as_lists(check)
    return out


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs of both models (default: the configs')")
    parser.add_argument("--episodes", type=int, default=20,
                        help="ProtoNet test episodes explained (75 queries each)")
    parser.add_argument("--queries", type=int, default=600, help="retrieval test images explained")
    parser.add_argument("--chunk", type=int, default=200, help="images per explanation batch")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of the measurements (training keeps torch's): small tensors run "
                             "faster on one, and on a busy 2-core machine several threads wait on each other "
                             "(0: torch's)")
    parser.add_argument("--smoke", action="store_true", help="1 seed, 1 epoch, small data: a quick check")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.epochs = args.seeds[:1], args.epochs or 1
        args.episodes, args.queries = min(args.episodes, 4), min(args.queries, 60)
    start = time.perf_counter()
    protonet, retrieval = [], []
    for seed in args.seeds:
        print(f"fam claims: seed {seed} ...", flush=True)
        threads = args.threads or None
        protonet.append(run_protonet(seed, args.epochs, args.smoke, args.episodes, args.chunk, threads))
        retrieval.append(run_retrieval(seed, args.epochs, args.smoke, args.queries, args.chunk, threads))
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
        protonet_dist_cam_rows(protonet)
        + fam_rows(protonet, "protonet", "ProtoNet's few-shot queries", proto_note)
        + fam_rows(retrieval, "retrieval", "retrieval model's queries", retrieval_note),
        len(args.seeds),
    )
    sanity = [run["sanity"] for run in retrieval]
    rows += sanity_rows("the retrieval model", sanity)
    sanity_plot("the retrieval model", sanity, RESULTS / "claims" / "sanity_retrieval.png")
    path = write_rows(NAME, rows, {"protonet": protonet, "retrieval": retrieval, "seeds": args.seeds,
                                   "epochs": args.epochs, "episodes": args.episodes, "queries": args.queries,
                                   "smoke": args.smoke, "seconds": time.perf_counter() - start})
    for r in rows:
        print(f"[{r['holds']:>6}] {r['claim']}\n         paper: {r['paper']}\n         ours:  {r['ours']}")
    print(f"wrote {path.relative_to(REPO)} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
