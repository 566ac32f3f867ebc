"""The ltgrad-cam grid of ``claims_classifier.py`` (item 4): Otsu scores of Grad-CAM, Layer-CAM and FullGrad
on a trained classifier, per stage and layerized over the last ``l`` stages, with and without truncation,
the layerization sum both ways -- each layer map min-max normalised first (``gradient_cam``'s default
``layer_norm="minmax"``) and the raw maps summed (``layer_norm="none"``, ltgrad-cam Eq. 8 as written) --
from one forward and backward pass per batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from claims_classifier_rows import DELTAS, LITERAL
from torch import Tensor

from cama.explain import gradient_layer_maps, logit_score, minmax_normalize, record_gradients
from cama.metrics.segmentation import otsu_segmentation, segmentation_counts, segmentation_scores

__all__ = ["gradient_layers", "add_counts", "normalised", "layerized", "ltgrad_grid"]


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


def normalised(raw: Sequence[Tensor]) -> list[Tensor]:
    """The raw upsampled layer maps min-max normalised, as ``gradient_layer_maps(layer_norm="minmax")``
    gives them (a map constant before the upsampling -- flat to rounding after it -- becomes zeros)."""
    out = []
    for m in raw:
        span = m.amax(dim=(-2, -1), keepdim=True) - m.amin(dim=(-2, -1), keepdim=True)
        flat = span <= 1e-5 * m.abs().amax(dim=(-2, -1), keepdim=True)
        out.append(torch.where(flat, torch.zeros_like(m), minmax_normalize(m)))
    return out


def layerized(maps: Sequence[Tensor]) -> Tensor:
    """Eq. 8: the per-layer maps (already upsampled; min-max normalised each, or raw for the literal sum)
    summed, min-max normalised."""
    total = maps[0]
    for m in maps[1:]:
        total = total + m
    return minmax_normalize(total)


def ltgrad_grid(model: Any, data: dict[str, Tensor], batch_size: int) -> dict[tuple, dict[str, float]]:
    """Otsu scores of every (method, l, delta) and of Grad-CAM per stage, on ``data`` (module docstring).

    Keys: ``("gradcam", "S1")`` ... ``("gradcam", "S4")`` and ``(method, l, delta)`` with ``delta``
    None (no truncation) or 0 ... 90: the layer maps min-max normalised before the layerization sum
    (``gradient_cam``'s ``layer_norm="minmax"``), and ``(method + LITERAL, l, delta)`` the raw maps summed
    (``layer_norm="none"``, Eq. 8 as written; ``l >= 2``, and FullGrad's every ``l``), both from the same
    raw layer maps: one backward pass and one set of layer maps per batch.
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
                # S1 .. S4 raw (Eq. 8's literal terms), normalised from them: no second pass
                raw = gradient_layer_maps(stage_record, method, truncation=delta, layer_norm="none")
                maps = normalised(raw)
                for l in range(1, depth + 1):
                    add_counts(table, (method, l, delta), layerized(maps[depth - l:]), masks)
                    if l > 1:  # one layer: the literal map is the normalised one
                        add_counts(table, (method + LITERAL, l, delta), layerized(raw[depth - l:]), masks)
                if method == "gradcam" and delta is None:
                    for i in range(depth):
                        add_counts(table, ("gradcam", f"S{i + 1}"), maps[i], masks)
            # the batch norms, then the input term
            raw = gradient_layer_maps(norm_record, "fullgrad", truncation=delta, layer_norm="none")
            maps = normalised(raw)
            for l in range(1, depth + 1):
                chosen = [position[n] for n in norms_per_l[l]] + [len(raw) - 1]
                add_counts(table, ("fullgrad", l, delta), layerized([maps[i] for i in chosen]), masks)
                literal = layerized([raw[i] for i in chosen])
                add_counts(table, ("fullgrad" + LITERAL, l, delta), literal, masks)
    return {key: {k: float(v) for k, v in segmentation_scores(c).items()} for key, c in table.items()}
