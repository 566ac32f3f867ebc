"""How Dist-CAM (dist-cam Eq. 4-6) depends on its guard ``eps`` and on the reference's precision, and what
the smoothed variant (``dist_cam_smoothed``, ``W_k ∝ 1 / (D_k + mean D)``, beyond the paper) changes.

For a trained re-ID checkpoint and ``--count`` test queries with a true match in another camera
(``claims_sanity.reid_probes``, seeded), the summed Dist-CAM of each query against its match (the
Explainer's ``ProbeAgainst``, maps in [0, 1] at image size) is drawn with ``eps`` = 1e-6 (the
default) ... 1, and with the reference rounded to bfloat16; printed per setting: the share of the map's
energy on the person (the synthetic ground truth), the mean absolute change from the default map on
the [0, 1] scale, and the effective number of channels ``1 / sum W_k^2`` of branch 1's weights.

    .venv/bin/python bench/dist_cam_eps.py --checkpoint runs/cama_synthetic/version_0/checkpoints/last.ckpt \
        --config configs/cama_synthetic.yaml [--count 200]
"""

from __future__ import annotations

import argparse

import torch
from claims_sanity import reid_probes

from callbacks.base import load_items
from cama.explain import dist_cam_weights, global_average_pool
from cama.loading import instantiate_data, load_model
from cama.metrics.parts import part_energy_share
from cama.viz import ModelExplainer, ProbeAgainst

EPSILONS = (1e-6, 1e-4, 1e-2, 1e-1, 1.0)


def bfloat16_reference(reference: torch.Tensor) -> torch.Tensor:
    """The reference rounded to bfloat16 and back (its dtype kept): a half-precision reference."""
    return reference.to(torch.bfloat16).to(reference.dtype)


def mean_change(maps: torch.Tensor, default: torch.Tensor) -> float:
    """The mean absolute difference of two stacks of maps (on their [0, 1] scale)."""
    return float((maps - default).abs().mean())


def channels_in_use(pooled: torch.Tensor, reference: torch.Tensor, eps: float) -> torch.Tensor:
    """The effective number of channels ``1 / sum_k W_k^2`` of each sample's Dist-CAM weights ``[B]``."""
    return 1 / dist_cam_weights(pooled, reference, eps=eps).square().sum(dim=1)


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    opts = p.parse_args()
    model = load_model(opts.checkpoint)
    data = instantiate_data(opts.config)
    data.setup("test")
    dataset = data.eval_dataset
    queries, references = reid_probes(dataset, opts.count, opts.seed)
    batch = load_items(dataset, queries)
    person = batch["mask"].bool().any(dim=1, keepdim=True)  # [B, 1, H, W]
    everything = torch.ones(person.shape[:2], dtype=torch.bool)
    base = ModelExplainer(model)
    features = base.features(batch["image"])
    reference = base.features(load_items(dataset, references)["image"]).embedding

    def summarize(
        name: str, explainer: ModelExplainer, ref: torch.Tensor, default: torch.Tensor | None
    ) -> tuple[torch.Tensor, float, float]:
        maps = explainer.explain(name, features, ProbeAgainst(ref), branches=False)[:, 0]
        energy = part_energy_share(maps, person, everything)[0].nanmean()
        change = mean_change(maps, default) if default is not None else 0.0
        return maps, float(energy), change

    slices = features.slices or [(0, features.embedding.shape[1])]
    pooled = global_average_pool(features.scaled_maps()[0])
    a, b = slices[0]
    print(f"{len(queries)} test queries against their first true match; summed Dist-CAM")
    print("setting | energy on the person | mean |change| from eps=1e-6 | branch-1 channels in use")
    default, energy, _ = summarize("dist_cam", base, reference, None)
    for eps in EPSILONS:
        explainer = ModelExplainer(model, map_options={"dist_cam": {"eps": eps}})
        _, energy, change = summarize("dist_cam", explainer, reference, default)
        used = float(channels_in_use(pooled, reference[:, a:b], eps).mean())
        print(f"eps={eps:g} | {energy:.3f} | {change:.3f} | {used:.1f} of {b - a}")
    rounded = bfloat16_reference(reference)
    _, energy, change = summarize("dist_cam", base, rounded, default)
    print(f"reference rounded to bfloat16 (eps=1e-6) | {energy:.3f} | {change:.3f} | -")
    smoothed, energy, change = summarize("dist_cam_smoothed", base, reference, default)
    _, _, change16 = summarize("dist_cam_smoothed", base, rounded, smoothed)
    print(f"dist_cam_smoothed | {energy:.3f} | {change:.3f} | -  (bfloat16 reference: change {change16:.3f})")
    print(f"constant map | {float(person.flatten(1).float().mean()):.3f} | - | -")


if __name__ == "__main__":
    main()
