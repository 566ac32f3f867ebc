"""The re-ID claims bench's rows (cama-ram Tables 4-5, what the branches see, model or maps) from the
per-seed numbers of :mod:`claims_cama`.

A difference between two variants is paired by seed (the same seed draws the same batches): its
``mean +- half-width`` is the 95% t-interval over the seeds' differences, and ``holds`` follows it
(:mod:`claims_rules`). The test-metric differences (mAP, rank-1) also give the paired bootstrap over
test queries (:mod:`paired_bootstrap`: both models' per-query AP or rank-1 hit on the same queries,
resampled within each seed, averaged over seeds; 95% percentile interval, 2,000 resamples): how much
the difference would move with other test queries of the same trained models.
"""

from __future__ import annotations

from typing import Any

from claims_common import fmt, mean_ci, row
from claims_rules import combine, differences, direction, no_change
from paired_bootstrap import paired_bootstrap

RESAMPLES = 2000


def paired(results: dict[str, dict[str, list[float]]], a: str, b: str, key: str) -> list[float]:
    """Per-seed ``a - b`` of one measure (the same seed draws the same batches)."""
    return differences(results[a][key], results[b][key])


def bootstrap(per_query: dict[str, list[dict[str, list]]] | None, a: str, b: str, key: str) -> str:
    """``; paired bootstrap over Q test queries (q x n seeds): mean [low, high]`` of ``a - b`` in
    points (``key``: ``"ap"`` or ``"rank1"``), or nothing without per-query values."""
    if not per_query or not per_query.get(a) or not per_query.get(b):
        return ""
    for seed, (x, y) in enumerate(zip(per_query[a], per_query[b])):
        if x["query"] != y["query"]:
            raise ValueError(f"{a} and {b} were not measured on the same queries (seed position {seed})")
    result = paired_bootstrap([x[key] for x in per_query[a]], [y[key] for y in per_query[b]],
                              resamples=RESAMPLES).scaled(100)
    counts = sorted({len(x[key]) for x in per_query[a]})
    each = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return (f"; paired bootstrap over {result.queries} test queries ({each} x {result.seeds} seeds, "
            f"{result.resamples} resamples): {result.mean:.1f} [{result.low:.1f}, {result.high:.1f}]")


def rows(
    results: dict[str, dict[str, list[float]]], per_query: dict[str, list[dict[str, list]]] | None = None
) -> list[dict[str, str]]:
    """The rows; ``per_query[variant]``: each seed's per-query AP and rank-1 hits (the bootstrap)."""
    r, q = results, per_query
    out = []
    out.append(row(
        "1. cama-ram Table 4", "MltB + L_id is only slightly better than IDE+BN (mAP, 3 branches)",
        "78.8 -> 79.0 (Market-1501)",
        f"{fmt(r['IDE+BN']['mAP'], 100, 1)} -> {fmt(r['MltB-3 + L_id']['mAP'], 100, 1)}; "
        f"difference {fmt(paired(r, 'MltB-3 + L_id', 'IDE+BN', 'mAP'), 100, 1)}"
        f"{bootstrap(q, 'MltB-3 + L_id', 'IDE+BN', 'ap')}",
        no_change(paired(r, "MltB-3 + L_id", "IDE+BN", "mAP"), 0.02),
        "'slightly': the difference within +-2 mAP points",
    ))
    for n in (3, 2):
        cama, mltb = f"CAMA-{n}", f"MltB-{n} + L_id"
        diff = paired(r, cama, mltb, "mAP")
        out.append(row(
            "1. cama-ram Table 4", f"the OAP raises mAP over the same {n} branches without it",
            "79.0 -> 84.5" if n == 3 else "(2 branches: Fig. 5)",
            f"{fmt(r[mltb]['mAP'], 100, 1)} -> {fmt(r[cama]['mAP'], 100, 1)}; difference {fmt(diff, 100, 1)}"
            f"{bootstrap(q, cama, mltb, 'ap')}; "
            f"rank-1 {fmt(r[mltb]['rank1'], 100, 1)} -> {fmt(r[cama]['rank1'], 100, 1)}; "
            f"difference {fmt(paired(r, cama, mltb, 'rank1'), 100, 1)}{bootstrap(q, cama, mltb, 'rank1')}",
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


