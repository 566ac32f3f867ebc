"""cama-ram in miniature: Tables 4 and 5, and what the branches see (Fig. 1, 5, 8) with ground truth.

Trains, for every seed, on the embedded synthetic re-ID set with the main job's data and schedule
(``configs/cama_synthetic.yaml``; only the network changes):

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

Differences between variants are paired by seed (the same seed draws the same batches).
Usage::

    .venv/bin/python bench/claims_cama.py [--seeds 0 1 2] [--epochs N] [--variants ...]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import lightning.pytorch as pl
import torch
from claims_common import REPO, RESULTS, fmt, mean_ci, row, train_config, write_rows
from claims_rules import combine, differences, direction, no_change
from claims_sanity import as_lists, reid_probes, reid_sanity, sanity_plot, sanity_rows
from torch.utils.data import DataLoader

from callbacks.base import load_items
from cama.explain import dist_cam, dist_cam_weights, global_average_pool, postprocess
from cama.loading import instantiate_config, read_config
from cama.metrics import BranchOverlap
from cama.metrics.parts import PartEvidence, part_energy_share
from cama.viz import ModelExplainer, Own, ProbeAgainst

CONFIG = REPO / "configs" / "cama_synthetic.yaml"
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


def checkpoint_path(name: str, seed: int) -> Any:
    return RESULTS / "claims" / "tmp" / f"{name.replace(' ', '').replace('+', '_')}_seed{seed}.pt"


def remeasure(saved: dict[str, Any]) -> None:
    """The map measures again on the weights the last run saved (no training): for new measures."""
    config = read_config(CONFIG)
    for name, measures in saved["per_seed"].items():
        # the map measures are replaced as a whole (names with a "/", the overlap; and the bare
        # parts_covered of earlier files): the test metrics stay
        for key in [k for k in measures if "/" in k or k in ("overlap", "parts_covered")]:
            del measures[key]
        for position, seed in enumerate(saved["seeds"]):
            pl.seed_everything(seed, verbose=False)
            model, datamodule = instantiate_config(config, model=VARIANTS[name])
            datamodule.setup("test")
            model.load_state_dict(torch.load(checkpoint_path(name, seed), map_location="cpu", weights_only=True))
            model.eval()
            fresh = {**map_measures(model, datamodule), **reference_diagnostics(model, datamodule, seed=seed)}
            for key, value in fresh.items():
                measures.setdefault(key, [float("nan")] * len(saved["seeds"]))[position] = value
            print(f"remeasured {name} seed {seed}", flush=True)


def run(
    seeds: list[int], variants: list[str], epochs: int | None
) -> tuple[dict[str, dict[str, list[float]]], dict[str, list[dict[str, Any]]]]:
    """``results[variant][measure] = [value per seed]`` and the sanity checks ``sanity[variant] =
    [result per seed]``."""
    results: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    sanity: dict[str, list[dict[str, Any]]] = {}
    for seed in seeds:
        for name in variants:
            start = time.perf_counter()
            model, datamodule, metrics = train_config(CONFIG, seed, VARIANTS[name], max_epochs=epochs)
            measures = {k.removeprefix("test/"): v for k, v in metrics.items()}
            measures.update(map_measures(model, datamodule))
            measures.update(reference_diagnostics(model, datamodule, seed=seed))
            checkpoint = checkpoint_path(name, seed)
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), checkpoint)  # for later looks (ignored by git)
            for key, value in measures.items():
                results[name].setdefault(key, []).append(value)
            if name in SANITY_VARIANTS:
                check = reid_sanity(model, datamodule, SANITY_METHODS, count=32, seed=seed)
                sanity.setdefault(name, []).append(as_lists(check))
            print(
                f"seed {seed} {name:>14}: mAP {measures['mAP']:.4f} rank-1 {measures['rank1']:.4f} "
                f"overlap {measures.get('overlap', float('nan')):.3f} "
                f"evidence ratio {measures.get('sum/evidence_ratio', float('nan')):.2f} "
                f"parts {measures['sum/parts_covered']:.2f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return results, sanity


def paired(results: dict[str, dict[str, list[float]]], a: str, b: str, key: str) -> list[float]:
    """Per-seed ``a - b`` of one measure (the same seed draws the same batches)."""
    return differences(results[a][key], results[b][key])


def rows(results: dict[str, dict[str, list[float]]]) -> list[dict[str, str]]:
    r = results
    out = []
    out.append(row(
        "1. cama-ram Table 4", "MltB + L_id is only slightly better than IDE+BN (mAP, 3 branches)",
        "78.8 -> 79.0 (Market-1501)",
        f"{fmt(r['IDE+BN']['mAP'], 100, 1)} -> {fmt(r['MltB-3 + L_id']['mAP'], 100, 1)}; "
        f"difference {fmt(paired(r, 'MltB-3 + L_id', 'IDE+BN', 'mAP'), 100, 1)}",
        no_change(paired(r, "MltB-3 + L_id", "IDE+BN", "mAP"), 0.02),
        "'slightly': the difference within +-2 mAP points",
    ))
    for n in (3, 2):
        cama, mltb = f"CAMA-{n}", f"MltB-{n} + L_id"
        diff = paired(r, cama, mltb, "mAP")
        out.append(row(
            "1. cama-ram Table 4", f"the OAP raises mAP over the same {n} branches without it",
            "79.0 -> 84.5" if n == 3 else "(2 branches: Fig. 5)",
            f"{fmt(r[mltb]['mAP'], 100, 1)} -> {fmt(r[cama]['mAP'], 100, 1)}; difference {fmt(diff, 100, 1)}; "
            f"rank-1 {fmt(r[mltb]['rank1'], 100, 1)} -> {fmt(r[cama]['rank1'], 100, 1)}",
            direction(diff),
        ))
        lower = paired(r, mltb, cama, "overlap")
        out.append(row(
            "1. cama-ram Sec. 3.2", f"the OAP makes the {n} branches look at different regions (overlap of top-k RAMs)",
            "(not measured in the paper)",
            f"{fmt(r[mltb]['overlap'])} -> {fmt(r[cama]['overlap'])}", direction(lower), methods=("ram",),
        ))
    keys = [k for k in ("mAP_branches_1", "mAP_branches_1-2", "mAP") if k in r["CAMA-3"]]
    gains = [[x - y for x, y in zip(r["CAMA-3"][b], r["CAMA-3"][a])] for a, b in zip(keys, keys[1:])]
    out.append(row(
        "1. cama-ram Table 5", "mAP rises as branches are added at test time (CAMA, 3 branches)",
        "79.0 / 82.7 / 84.5",
        " / ".join(fmt(r["CAMA-3"][k], 100, 1) for k in keys),
        combine([direction(g) for g in gains]),
    ))
    for measure, text in (
        ("sum/evidence_ratio", "of the summed RAM's energy on the person, the share on the parts that "
                                      "tell the identity from a look-alike, over their share of the person's area"),
        ("sum/parts_covered", "the distinct parts the branches' top-k regions cover"),
    ):
        diff = paired(r, "CAMA-3", "IDE+BN", measure)
        out.append(row(
            "2. cama-ram Fig. 1, 5, 8", f"CAMA looks at more of the evidence than IDE+BN: {text}",
            "(qualitative in the paper)",
            f"IDE+BN {fmt(r['IDE+BN'][measure], 1, 2)}, MltB-3 {fmt(r['MltB-3 + L_id'][measure], 1, 2)}, "
            f"CAMA-3 {fmt(r['CAMA-3'][measure], 1, 2)}, CAMA-2 {fmt(r['CAMA-2'][measure], 1, 2)}",
            direction(diff), methods=("ram",),
        ))
    return out + diagnostic_rows(r)


def diagnostic_rows(r: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """Model or maps? (The issue: Dist-CAM and FAM light the image borders on the trained CAMA.)"""
    mltb, cama = r["MltB-2 + L_id"], r["CAMA-2"]
    item, question = "2. model or maps", "(the issue's question: maps lighting the image borders)"
    each = lambda v, key, d=2: fmt(v[key], 1, d)  # noqa: E731
    before_bn = differences(cama["dist_cam_pre_bn/sum/person_energy"], cama["dist_cam/sum/person_energy"])
    inverted = max(cama["bn/branch1/negative_weight_share"]) > 0
    bn_holds = "yes" if not inverted and mean_ci(before_bn)[0] < 0.05 else "no"
    out = [row(
        item, "With the OAP, the maps put less of their energy on the person (sum of the branches)",
        question,
        "; ".join(f"{m}: MltB-2 {each(mltb, f'{m}/sum/person_energy')}, CAMA-2 {each(cama, f'{m}/sum/person_energy')}"
                  for m in ("ram", "fam", "dist_cam")) + f"; a constant map {each(cama, 'constant/person_energy')}",
        combine([direction(paired(r, "MltB-2 + L_id", "CAMA-2", f"{m}/sum/person_energy")) for m in ("fam", "dist_cam")]),
        methods=("ram", "fam", "dist_cam"),
    ), row(
        item, "... and more of it in the outer 8 pixels of the image (the borders)",
        question,
        "; ".join(f"{m}: MltB-2 {each(mltb, f'{m}/sum/border_energy')}, CAMA-2 {each(cama, f'{m}/sum/border_energy')}"
                  for m in ("ram", "fam", "dist_cam")) + f"; a constant map {each(cama, 'constant/border_energy')}",
        combine([direction(paired(r, "CAMA-2", "MltB-2 + L_id", f"{m}/sum/border_energy")) for m in ("fam", "dist_cam")]),
        methods=("ram", "fam", "dist_cam"),
    ), row(
        item, "... yet the match does not rest on the background: with the background set to the mean colour "
              "the query keeps its similarity to its match (the person alone carries it)",
        "(a test without maps)",
        f"cosine similarity to the match, original / person only / background only: MltB-2 "
        f"{each(mltb, 'similarity/original')} / {each(mltb, 'similarity/person_only')} / "
        f"{each(mltb, 'similarity/background_only')}; CAMA-2 {each(cama, 'similarity/original')} / "
        f"{each(cama, 'similarity/person_only')} / {each(cama, 'similarity/background_only')}",
        no_change(differences(cama["similarity/person_only"], cama["similarity/original"]), 0.03),
        "'yes': the person-only similarity within 0.03 of the original",
    ), row(
        item, "Dist-CAM's inverse-distance weights (dist-cam Eq. 5) rest on a few channels: those equal in query "
              "and match, content-independent ones included",
        "(the paper's definition)",
        f"channels in use (1 / sum W^2) of {int(cama['dist_cam/branch1/channels'][0])}: MltB-2 "
        f"{each(mltb, 'dist_cam/branch1/effective_channels', 1)}, CAMA-2 {each(cama, 'dist_cam/branch1/effective_channels', 1)} "
        f"(branch 1); top channel's weight CAMA-2 {each(cama, 'dist_cam/branch1/top_channel_weight')}",
        "yes" if max(cama["dist_cam/branch1/effective_channels"]) < 0.25 * cama["dist_cam/branch1/channels"][0] else "no",
        "'yes': fewer than a quarter of the channels in use", methods=("dist_cam",),
    ), row(
        item, "Not the BatchNorm before the embedding: no channel is inverted, and Dist-CAM on the features before "
              "it (non-negative, as in the paper) is no better on the person",
        "(the issue's hypothesis)",
        f"BN weights < 0: CAMA-2 {each(cama, 'bn/branch1/negative_weight_share')} (branch 1); Dist-CAM on the "
        f"person, after / before BN: MltB-2 {each(mltb, 'dist_cam/sum/person_energy')} / "
        f"{each(mltb, 'dist_cam_pre_bn/sum/person_energy')}, CAMA-2 {each(cama, 'dist_cam/sum/person_energy')} / "
        f"{each(cama, 'dist_cam_pre_bn/sum/person_energy')}",
        bn_holds, "'yes': no inverted channel and Dist-CAM before BN within 0.05 of after", methods=("dist_cam",),
    )]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="shorter than the config's (a quick try)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rows-only", action="store_true",
                        help="no training: the rows and plots again from results/claims/cama.json's numbers")
    parser.add_argument("--remeasure", action="store_true",
                        help="with --rows-only: the map measures again on the saved weights (results/claims/tmp)")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.rows_only:
        saved = json.loads((RESULTS / "claims" / "cama.json").read_text())
        results, sanity, args.seeds, args.variants = saved["per_seed"], saved["sanity"], saved["seeds"], list(saved["per_seed"])
        if args.remeasure:
            remeasure(saved)
        seconds = saved["seconds"]  # the bench's run time, not this rewrite's
    else:
        results, sanity = run(args.seeds, args.variants, args.epochs)
        seconds = time.perf_counter() - start
    table = rows(results) if set(args.variants) == set(VARIANTS) else []
    for name, per_seed in sanity.items():
        table += sanity_rows(name, per_seed)
        sanity_plot(name, per_seed, RESULTS / "claims" / f"sanity_{name.replace('+', '_')}.png")
    extra = {"per_seed": results, "sanity": sanity, "seeds": args.seeds, "seconds": seconds}
    path = write_rows("cama", table, extra)
    for r in table:
        print(f"{r['claim']}: {r['ours']} -> {r['holds']}")
    print(f"wrote {path} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
