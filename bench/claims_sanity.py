"""Sanity checks of the maps in the claims benches (Adebayo et al. 2018, cascading randomization).

:func:`reid_sanity` runs :func:`cama.explain.sanity_check` on a trained re-ID model: ``count``
test queries with a true match (a seeded choice), each explained against its first true match in
the gallery (the reference of Dist-CAM, FAM and the gradient maps; RAM is the query's own
``R_q^q``), the model's blocks (``randomization_blocks()``, top first) re-initialised cumulatively.
:func:`sanity_rows` turns the per-seed results into claims rows (a method fails when its maps stay
rank-correlated with the trained model's after every block is randomized) and :func:`sanity_plot`
draws the paper's Fig. 2: the rank correlation per randomized block, one line per method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from claims_common import fmt, line_plot, mean_ci, row

from callbacks.base import load_items
from callbacks.sanity_checks import sanity_maps
from cama.explain import SanityCheckResult, sanity_check

PASS_BELOW = 0.5  # the upper end of the 95% interval of the final rank correlation


def reid_probes(dataset: Any, count: int, seed: int) -> tuple[list[int], list[int]]:
    """``count`` queries with a true match in the gallery (another camera), seeded, and each one's
    first such match: dataset indices of a query + gallery evaluation set."""
    pids = torch.as_tensor(list(dataset.pids))
    camids = torch.as_tensor(list(dataset.camids))
    nq = int(dataset.num_query)
    match = (pids[:nq, None] == pids[None, nq:]) & (camids[:nq, None] != camids[None, nq:]) & (pids[None, nq:] > 0)
    candidates = match.any(dim=1).nonzero().squeeze(1)
    chosen = candidates[torch.randperm(candidates.numel(), generator=torch.Generator().manual_seed(seed))[:count]]
    references = nq + match[chosen].int().argmax(dim=1)
    return chosen.tolist(), references.tolist()


def reid_sanity(model: Any, datamodule: Any, methods: list[str], count: int = 32, seed: int = 0) -> SanityCheckResult:
    """The cascading randomization test of ``methods`` on a trained re-ID model's test queries."""
    dataset = datamodule.eval_dataset
    queries, references = reid_probes(dataset, count, seed)
    device = model.device
    images = load_items(dataset, queries, device)["image"]
    reference_images = load_items(dataset, references, device)["image"]
    names, blocks = zip(*model.randomization_blocks())

    def explain(m: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return sanity_maps(m, x, reference_images, methods)

    return sanity_check(explain, model, list(blocks), list(names), images, seed=seed)


def as_lists(result: SanityCheckResult) -> dict[str, Any]:
    """A JSON-able copy: blocks and, per measure and method, the per-step means."""
    return {
        "blocks": list(result.blocks),
        **{m: {k: v.tolist() for k, v in getattr(result, m).items()} for m in ("spearman", "spearman_abs", "ssim")},
    }


def sanity_rows(model_name: str, per_seed: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per method: the rank correlation (absolute maps) and SSIM after every block is
    randomized; fails when the correlation's 95% interval reaches :data:`PASS_BELOW`."""
    out = []
    methods = list(per_seed[0]["spearman_abs"])
    for method in methods:
        final = [s["spearman_abs"][method][-1] for s in per_seed]
        first = [s["spearman_abs"][method][0] for s in per_seed]
        ssim_final = [s["ssim"][method][-1] for s in per_seed]
        mean, half = mean_ci(final)
        passed = mean + half < PASS_BELOW
        out.append(row(
            "6. Sanity checks (Adebayo et al.)",
            f"{method} on {model_name}: the maps change when the weights are randomized",
            "saliency maps that pass: rank correlation falls towards 0",
            f"Spearman |map| after the top block {fmt(first, 1, 2)}, after all blocks {fmt(final, 1, 2)}; "
            f"SSIM after all {fmt(ssim_final, 1, 2)}",
            "yes" if passed else "no",
            f"passes: the final rank correlation's 95% interval is below {PASS_BELOW}",
        ) | {"sanity_of": method, "sanity_model": model_name, "final_spearman": mean})
    return out


def sanity_plot(model_name: str, per_seed: list[dict[str, Any]], path: str | Path) -> Path:
    """Fig. 2 of the paper: mean rank correlation (absolute maps) per randomized block, per method,
    with 95% intervals over seeds."""
    blocks = per_seed[0]["blocks"]
    series, errors = {}, {}
    for method in per_seed[0]["spearman_abs"]:
        stats = [mean_ci([s["spearman_abs"][method][i] for s in per_seed]) for i in range(len(blocks))]
        series[method] = [m for m, _ in stats]
        errors[method] = [h for _, h in stats]
    return line_plot(
        {k: [1.0, *v] for k, v in series.items()}, ["trained", *blocks], path,
        f"Cascading randomization, {model_name}: rank correlation with the trained model's maps",
        "Spearman (absolute maps); x: randomized down to this block",
        (-0.2, 1.0),
        {k: [0.0, *v] for k, v in errors.items()},
    )
