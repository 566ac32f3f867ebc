"""cama-ram in miniature: Tables 4 and 5, and what the branches see (Fig. 1, 5, 8) with ground truth.

Trains, for every seed, on the embedded synthetic re-ID set with the aligned crops and the schedule of
``configs/cama_synthetic_aligned.yaml`` (the main job on the papers' aligned crops; only the network
changes):

* ``IDE+BN``: one branch, ``L_id`` only (cama-ram Eq. 3);
* ``MltB-3 + L_id``: three ordered branches, ``L_id`` only;
* ``CAMA-3``: three branches, ``L_id + L_oap`` (Eq. 7-8): Table 4's last row;
* ``MltB-2 + L_id`` and ``CAMA-2``: the two-branch pair of the main job.

and measures on the test split (identities unseen in training): mAP and rank-1 (Table 4), the mAP
of the first i branches of the concatenated feature (Table 5), the branches' overlap (the mean
pairwise IoU of their top-k RAM masks, ``branch_overlap_iou``, k the OAP's), and, against the
synthetic ground truth, the evidence the maps point at: every test identity has siblings that
differ from it in exactly one part, so the parts that tell it from them are known; the share of
each branch's and of the summed RAM ``R_q^q`` energy on those parts (against their share of the
person's area: a ratio above 1 means the map prefers the evidence), the share of each map's energy
on the person at all (``person_energy``), and how many distinct parts the branches' top-k regions
cover (:mod:`cama.metrics.parts`). The sanity checks (:mod:`claims_sanity`) run on IDE+BN and CAMA-2.

The data: the aligned config's (200 training identities, 50 of them held out for validation, tight
128x64 crops) with 250 test identities instead of 100 (``DATA_OVERRIDES``): 2 query cameras each, so
500 test queries (and about 3,300 gallery images); every run prints the test split it measured.
The measured weights: the last epoch's, for every variant (:func:`claims_common.train_config`
trains the config's epochs without validating; the 50 held-out identities are kept out of training
but choose no checkpoint).

Differences between variants are paired by seed (the same seed draws the same batches): the
t-interval over seeds and, for mAP and rank-1, a paired bootstrap over the test queries
(:mod:`claims_cama_rows`, :mod:`paired_bootstrap`, from each query's AP and rank-1 hit,
:mod:`reid_per_query`).

Resumable: each (variant, seed) is written to ``results/claims/cama/<variant>/seed<N>.json`` as soon as
it finishes (its weights to ``results/claims/tmp/<variant>_seed<N>.pt``), a later sitting reuses what is
cached with the same settings (``--fresh`` runs it again), and the rows are assembled from every seed
cached for all variants, each row saying its n (:mod:`claims_cama_cache`). The bench's wall time is the
sum of the cached runs' own times plus this sitting's time outside them, printed with the host's
2048x2048 float32 matmul rate and stored in ``results/claims/cama.json``.

Usage::

    .venv/bin/python bench/claims_cama.py [--seeds 0 1 2 3 4] [--epochs N] [--variants ...] [--fresh]
    .venv/bin/python bench/claims_cama.py --smoke   # 1 epoch, seed 0, small data: results/claims/tmp/smoke
    .venv/bin/python bench/claims_cama.py --rows-only [--remeasure]   # no training: from the cache
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from claims_cama_cache import CACHE_ROOT, RunCache, run_settings, variant_dir
from claims_cama_rows import rows
from claims_common import REPO, RESULTS, train_config, write_rows
from claims_sanity import as_lists, reid_probes, reid_sanity, sanity_plot, sanity_rows
from real_scale import matmul_gflops
from reid_per_query import model_per_query
from torch.utils.data import DataLoader

from callbacks.base import load_items
from cama.explain import dist_cam, dist_cam_weights, global_average_pool, postprocess
from cama.loading import instantiate_config, read_config
from cama.metrics import BranchOverlap
from cama.metrics.parts import PartEvidence, part_energy_share
from cama.viz import ModelExplainer, Own, ProbeAgainst

CONFIG = REPO / "configs" / "cama_synthetic_aligned.yaml"
# the bench's data: the main job's, with 250 test identities (2 query cameras each: 500 test queries)
DATA_OVERRIDES: dict[str, Any] = {"synthetic": {"num_test_ids": 250}}
# --smoke: the whole bench in a few minutes, on a small set (40 training identities, 10 of them held
# out, 50 test identities: 100 queries), 1 epoch, seed 0
SMOKE_DATA: dict[str, Any] = {"val_ids": 10, "p": 8, "synthetic": {"num_train_ids": 40, "num_test_ids": 50}}
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
CHECKPOINTS = RESULTS / "claims" / "tmp"
VARIANTS: dict[str, dict[str, Any]] = {
    "IDE+BN": {"num_branches": 1, "oap_weight": 0.0},
    "MltB-3 + L_id": {"num_branches": 3, "oap_weight": 0.0},
    "CAMA-3": {"num_branches": 3, "oap_weight": 1.0},
    "MltB-2 + L_id": {"num_branches": 2, "oap_weight": 0.0},
    "CAMA-2": {"num_branches": 2, "oap_weight": 1.0},
}
EVIDENCE_KEY = "evidence_required"  # the parts that alone tell an identity from a sibling
SANITY_VARIANTS = ("IDE+BN", "CAMA-2")
SANITY_METHODS = ["dist_cam", "ram", "fam", "gradcam"]


@torch.no_grad()
def map_measures(model: torch.nn.Module, datamodule: Any, batch_size: int = 128) -> dict[str, float]:
    """Overlap, evidence share (per branch and summed) and parts covered of the RAMs ``R_q^q`` of
    every test query."""
    explainer = ModelExplainer(model)
    topk = model.overlap_topk()
    overlap = BranchOverlap(topk)
    evidence: dict[str, PartEvidence] = {}
    constant: list[torch.Tensor] = []
    loader = DataLoader(datamodule.query_dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        features = explainer.features(batch["image"].to(model.device))
        branches = features.num_branches
        if branches > 1:
            overlap.update(explainer.raw_maps("ram", features, Own()).cpu())
        maps = explainer.explain("ram", features, Own(), branches=True).cpu()  # [B, N(+1), H, W]
        parts, selected = batch["mask"].bool(), batch[EVIDENCE_KEY].bool()
        names = [f"branch{i + 1}" for i in range(branches)] + (["sum"] if branches > 1 else [])
        for i, name in enumerate(names if branches > 1 else ["sum"]):
            # the summed map's parts covered: the union of the branches' top regions
            regions = maps[:, :branches] if name == "sum" else None
            evidence.setdefault(name, PartEvidence(topk=topk)).update(maps[:, i], parts, selected, regions)
        constant.append(parts.any(dim=1).flatten(1).float().mean(dim=1))  # a flat map's share on the person
    out = {f"{name}/{k}": float(v) for name, m in evidence.items() for k, v in m.compute().items()}
    out["constant/person_energy"] = float(torch.cat(constant).mean())
    if overlap.update_count:
        out["overlap"] = float(overlap.compute())
    return out


@torch.no_grad()
def reference_diagnostics(model: torch.nn.Module, datamodule: Any, count: int = 256, seed: int = 0) -> dict[str, float]:
    """Model or maps? For test queries and their first true match: the share of each branch's
    Dist-CAM, FAM (against the match) and RAM ``R_q^q`` energy on the person, and how many channels
    Dist-CAM's inverse-distance weights really use (``1 / sum W_k^2``, of K; dist-cam Eq. 5)."""
    dataset = datamodule.eval_dataset
    queries, references = reid_probes(dataset, count, seed)
    explainer = ModelExplainer(model)
    batch = load_items(dataset, queries, model.device)
    features = explainer.features(batch["image"])
    reference = explainer.features(load_items(dataset, references, model.device)["image"]).embedding
    person = batch["mask"].bool()
    everything = torch.ones(person.shape[:2], dtype=torch.bool, device=person.device)
    out: dict[str, float] = {}
    for method in ("dist_cam", "fam", "ram"):
        maps = explainer.explain(method, features, ProbeAgainst(reference), branches=True)
        names = [f"branch{i + 1}" for i in range(maps.shape[1] - 1)] + ["sum"] if maps.shape[1] > 1 else ["sum"]
        for i, name in enumerate(names):
            out[f"{method}/{name}/person_energy"] = float(part_energy_share(maps[:, i], person, everything)[0].nanmean())
        out[f"{method}/sum/border_energy"] = float(border_share(maps[:, -1]).mean())
    slices = features.slices or [(0, features.embedding.shape[1])]
    for i, (maps, (a, b)) in enumerate(zip(features.scaled_maps(), slices)):
        weights = dist_cam_weights(global_average_pool(maps), reference[:, a:b])
        out[f"dist_cam/branch{i + 1}/effective_channels"] = float((1 / weights.square().sum(dim=1)).mean())
        out[f"dist_cam/branch{i + 1}/top_channel_weight"] = float(weights.amax(dim=1).mean())
        out[f"dist_cam/branch{i + 1}/channels"] = float(b - a)
    out.update(pre_bn_dist_cam(model, batch["image"], load_items(dataset, references, model.device)["image"], person))
    # without any map: how much of the similarity to the match does the person alone (background set
    # to the mean colour, 0 after normalisation) or the background alone keep?
    on = person.any(dim=1, keepdim=True)
    for name, kept in (("original", batch["image"]), ("person_only", batch["image"] * on),
                       ("background_only", batch["image"] * ~on)):
        similarity = torch.nn.functional.cosine_similarity(explainer.features(kept).embedding, reference, dim=1)
        out[f"similarity/{name}"] = float(similarity.mean())
    # a blank image (the mean colour): where do its own maps lie? Only the zero padding tells a
    # border from the middle there
    blank = explainer.features(torch.zeros_like(batch["image"][:1]))
    out["ram/blank/border_energy"] = float(border_share(explainer.explain("ram", blank, Own())[:, -1]).mean())
    out["constant/border_energy"] = float(border_share(torch.ones_like(person[:1, 0], dtype=torch.float)).mean())
    return out


def border_share(maps: torch.Tensor, band: float = 1 / 16) -> torch.Tensor:
    """Share of each map's energy ``[B, H, W]`` in the band of ``band`` of the height (and as many
    pixels of the width) along the image's edges."""
    height, width = maps.shape[-2:]
    edge = max(1, round(height * band))
    inner = torch.zeros(height, width, dtype=torch.bool, device=maps.device)
    inner[edge:-edge, edge:-edge] = True
    total = maps.flatten(1).sum(dim=1).clamp_min(1e-12)
    return maps[:, ~inner].sum(dim=1) / total


@torch.no_grad()
def pre_bn_dist_cam(model: Any, images: torch.Tensor, reference_images: torch.Tensor, person: torch.Tensor) -> dict[str, float]:
    """Dist-CAM as the paper applies it, on non-negative conv features: CAMA's conv5 output ``T``
    before the heads' BatchNorm (``F = BN(T)`` can be negative, and a channel whose BN weight is
    negative is inverted: positive Dist-CAM weights then paint where that channel is low). A bench
    diagnostic, so it reads the model's ``backbone`` and ``heads`` directly."""
    queries, references = model.backbone(images), model.backbone(reference_images)
    maps = [dist_cam(q.float(), global_average_pool(r)) for q, r in zip(queries, references)]
    summed = postprocess(torch.stack(maps, dim=1).sum(dim=1, keepdim=True), tuple(images.shape[-2:]))[:, 0]
    everything = torch.ones(person.shape[:2], dtype=torch.bool, device=person.device)
    out = {"dist_cam_pre_bn/sum/person_energy": float(part_energy_share(summed, person, everything)[0].nanmean())}
    for i, head in enumerate(model.heads):
        out[f"bn/branch{i + 1}/negative_weight_share"] = float((head.bn.weight < 0).float().mean())
    return out


def checkpoint_path(name: str, seed: int, root: Path = CHECKPOINTS) -> Path:
    return root / f"{variant_dir(name)}_seed{seed}.pt"


def run_one(
    name: str, seed: int, epochs: int | None, checkpoints: Path, data: dict[str, Any]
) -> dict[str, Any]:
    """Train one variant with one seed, measure it and keep its weights: the cache entry."""
    start = time.perf_counter()
    model, datamodule, metrics = train_config(CONFIG, seed, VARIANTS[name], data, max_epochs=epochs)
    measures = {k.removeprefix("test/"): v for k, v in metrics.items()}
    measures.update(map_measures(model, datamodule))
    measures.update(reference_diagnostics(model, datamodule, seed=seed))
    per_query = model_per_query(model, datamodule)
    mean_ap = sum(per_query["ap"]) / len(per_query["ap"])
    if abs(mean_ap - measures["mAP"]) > 1e-4:  # the per-query values are the test metric's
        raise RuntimeError(f"{name} seed {seed}: per-query mean AP {mean_ap:.6f} != test mAP "
                           f"{measures['mAP']:.6f}")
    checkpoint = checkpoint_path(name, seed, checkpoints)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), checkpoint)  # for later looks (ignored by git)
    sanity = None
    if name in SANITY_VARIANTS:
        sanity = as_lists(reid_sanity(model, datamodule, SANITY_METHODS, count=32, seed=seed))
    seconds = time.perf_counter() - start
    print(
        f"seed {seed} {name:>14}: mAP {measures['mAP']:.4f} rank-1 {measures['rank1']:.4f} "
        f"overlap {measures.get('overlap', float('nan')):.3f} "
        f"evidence ratio {measures.get('sum/evidence_ratio', float('nan')):.2f} "
        f"parts {measures['sum/parts_covered']:.2f}; {len(per_query['ap'])} test queries of "
        f"{len(datamodule.query_dataset)}, gallery {len(datamodule.gallery_dataset)} ({seconds:.0f} s)",
        flush=True,
    )
    split = {"queries": len(datamodule.query_dataset), "gallery": len(datamodule.gallery_dataset)}
    return {"measures": measures, "per_query": per_query, "sanity": sanity, "seconds": seconds,
            "test_split": split}


def run(seeds: list[int], variants: list[str], epochs: int | None, cache: RunCache, fresh: bool,
        checkpoints: Path, gflops: float, data: dict[str, Any]) -> list[float]:
    """Every (variant, seed) not cached yet (all of them with ``fresh``), each written to the cache as
    soon as it finishes; returns the wall times of those that ran."""
    ran = []
    for seed in seeds:
        for name in variants:
            if not fresh and cache.load(name, seed) is not None:
                print(f"seed {seed} {name:>14}: cached ({cache.path(name, seed)})", flush=True)
                continue
            entry = run_one(name, seed, epochs, checkpoints, data)
            cache.save(name, seed, {**entry, "matmul_gflops": gflops})
            ran.append(entry["seconds"])
    return ran


def remeasure(cache: RunCache, variants: list[str], seeds: list[int], checkpoints: Path,
              data: dict[str, Any]) -> None:
    """The map measures again on the weights the cached runs saved (no training): for new measures.
    The test metrics, per-query values and run times stay."""
    config = read_config(CONFIG)
    for seed in seeds:
        for name in variants:
            entry = cache.load(name, seed)
            measures = entry["measures"]
            for key in [k for k in measures if "/" in k or k in ("overlap", "parts_covered")]:
                del measures[key]
            pl.seed_everything(seed, verbose=False)
            model, datamodule = instantiate_config(config, data, VARIANTS[name])
            datamodule.setup("test")
            path = checkpoint_path(name, seed, checkpoints)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            model.eval()
            measures.update(map_measures(model, datamodule))
            measures.update(reference_diagnostics(model, datamodule, seed=seed))
            cache.save(name, seed, entry)
            print(f"remeasured {name} seed {seed}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="default 0 1 2 3 4 (--smoke: 0)")
    parser.add_argument("--epochs", type=int, default=None, help="shorter than the config's (a quick try)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--fresh", action="store_true", help="run the seeds again even where cached")
    parser.add_argument("--smoke", action="store_true",
                        help="1 epoch, seed 0, a small data set (SMOKE_DATA), cached apart "
                             "(results/claims/tmp/smoke): results/claims untouched")
    parser.add_argument("--rows-only", action="store_true",
                        help="no training: the rows from the cached runs")
    parser.add_argument("--remeasure", action="store_true",
                        help="the map measures of the cached runs again on their saved weights "
                             "(results/claims/tmp)")
    args = parser.parse_args()
    start = time.perf_counter()
    out = RESULTS / "claims" / "tmp" / "smoke" if args.smoke else RESULTS / "claims"
    epochs = 1 if args.smoke and args.epochs is None else args.epochs
    seeds = args.seeds if args.seeds is not None else ([0] if args.smoke else list(DEFAULT_SEEDS))
    data = SMOKE_DATA if args.smoke else DATA_OVERRIDES
    cache = RunCache(out / "cama" if args.smoke else CACHE_ROOT, run_settings(CONFIG, data, epochs))
    checkpoints = out / "checkpoints" if args.smoke else CHECKPOINTS
    gflops, threads = matmul_gflops()
    ran: list[float] = []
    if not args.rows_only:
        ran = run(seeds, args.variants, epochs, cache, args.fresh, checkpoints, gflops, data)
    cached = cache.cached_seeds(args.variants)  # every seed run so far, in this sitting or before
    if args.remeasure:
        remeasure(cache, args.variants, cached, checkpoints, data)
    for note in dict.fromkeys(cache.notes):
        print(note)
    if not cached:
        raise SystemExit(f"no seed is cached for all of {args.variants} under {cache.root}")
    found = cache.collect(args.variants, cached)
    results, sanity = found["per_seed"], found["sanity"]
    table = rows(results, found["per_query"]) if set(args.variants) == set(VARIANTS) else []
    for name, per_seed in sanity.items():
        table += sanity_rows(name, per_seed)
        sanity_plot(name, per_seed, out / f"sanity_{name.replace('+', '_')}.png")
    sitting = time.perf_counter() - start
    # the bench's wall time: each cached run's own time, plus this sitting's time outside the runs
    # it did (the matmul rate, loading, the rows, the plots)
    seconds = found["seconds"] + max(0.0, sitting - sum(ran))
    wall = {"runs_seconds": found["seconds"], "runs": len(cached) * len(args.variants), "ran_now": len(ran),
            "sitting_seconds": sitting, "matmul_gflops": gflops, "threads": threads}
    extra = {"per_seed": results, "sanity": sanity, "seeds": cached, "seconds": seconds, "wall": wall,
             "settings": cache.settings}
    if args.smoke or set(args.variants) != set(VARIANTS):  # results/claims/cama.json holds the whole bench
        path = out / "tmp" / "cama_part.json" if not args.smoke else out / "cama.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"rows": table, **extra}, indent=2, sort_keys=True))
    else:
        path = write_rows("cama", table, extra)
    for r in table:
        print(f"{r['claim']}: {r['ours']} -> {r['holds']}")
    print(f"seeds {cached} (n={len(cached)}); {len(ran)} runs in this sitting of {sitting:.0f} s; "
          f"bench wall time {seconds / 60:.1f} min ({wall['runs']} runs' own {found['seconds'] / 60:.1f} "
          f"min + this sitting's rest); host {gflops:.0f} GFLOP/s (2048² float32 matmul, {threads} threads)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
