"""What ``claims_fam.py`` measures on the retrieval model beyond fam Tables I, II and IV.

* :func:`nearest_items`: a split's first images, each with its nearest other image of the split (the
  reference every map is explained against), the model's post-ReLU maps and the **signed maps** of the
  same layer (:func:`signed_feature_maps`);
* :func:`dist_cam_table1` (item 3, dist-cam Table 1 on a metric model): Dist-CAM's (and the smoothed
  variant's) top-1 localization error and box accuracy at the tau chosen on the validation split (the
  training classes held out, ``val_classes``), its MaxBoxAcc on the test images, and a centred box;
* :func:`eps_sweep` (item 3, Eq. 5's guard): Dist-CAM per ``eps``: localization, the map's change from
  the default ``eps``'s and under a bfloat16-rounded reference, the channels in use
  (:mod:`dist_cam_eps`'s measures);
* :func:`signed_raw_maps` (item 5): FAM on the signed maps;
* :func:`sanity_explain`: the maps of the cascading randomization test, the variants included.

**Signed maps.** The retrieval model's maps are the output of the backbone's last residual block,
``ReLU(bn2(conv2(.)) + shortcut)``. A forward pre-hook on that block's ``relu`` module (called twice
in a torchvision ``BasicBlock`` / ``Bottleneck``; the last call is the block's final ReLU) copies its
input: the signed maps of the same layer, taken in the same forward pass as the model's own maps
(checked: their ReLU is the model's maps). Two readings of "FAM on the signed maps":

* ``fam_signed``: FAM (Eq. 11-13, 16-18 through the projection) with the signed maps in place of the
  post-ReLU ones, their pooled feature included (a feature the model never ranks with);
* ``fam_signed_weights``: FAM's weights ``alpha`` from the model's own (post-ReLU) pooled feature, i.e.
  its real similarity, combining the signed maps (``sum_k alpha_k Q_k`` with signed ``Q_k``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from claims_fam_rows import TAU
from dist_cam_eps import bfloat16_reference, channels_in_use, mean_change
from torch import Tensor, nn

from callbacks.sanity_checks import sanity_maps
from cama.explain import (
    dist_cam,
    fam,
    fam_channel_contributions,
    fam_importance,
    global_average_pool,
    postprocess,
)
from cama.metrics.boxes import (
    DEFAULT_TAUS,
    box_iou,
    box_localization_iou,
    centered_boxes,
    max_box_accuracy,
    top1_localization_error,
)
from cama.metrics.faithfulness import average_drop, increase_in_confidence, mask_images
from cama.metrics.ranking import EmbeddingSet
from cama.metrics.segmentation import energy_pointing_game
from cama.references import RetrievalReferences
from cama.viz.methods import forward_call

EPSILONS = (1e-8, 1e-6, 1e-4, 1e-2)
DEFAULT_EPS = 1e-6  # dist_cam's default
DIST_CAMS = ("dist_cam", "dist_cam_smoothed")
VARIANT_MAPS = ("dist_cam_smoothed", "fam_unfloored")


# --------------------------------------------------------------------------------------------------
# the maps and their references
# --------------------------------------------------------------------------------------------------
def final_relu(model: Any) -> nn.Module:
    """The ReLU module that ends the backbone's last residual block (module docstring)."""
    block = list(model.backbone.children())[-1]
    block = list(block.children())[-1] if isinstance(block, nn.Sequential) else block
    if not isinstance(getattr(block, "relu", None), nn.ReLU):
        raise TypeError(f"the backbone's last block {type(block).__name__} has no `relu` module")
    return block.relu


@torch.no_grad()
def signed_feature_maps(model: Any, images: Tensor) -> tuple[Tensor, Tensor]:
    """``(maps, signed)``: the model's (post-ReLU) feature maps and the same layer's signed maps, float32."""
    captured: list[Tensor] = []
    handle = final_relu(model).register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0].clone()))
    try:
        maps = model.feature_maps(images)[0]
    finally:
        handle.remove()
    signed = captured[-1].float()
    if not torch.allclose(signed.relu(), maps.float()):
        raise RuntimeError("the hooked ReLU's input is not the model's maps before their ReLU")
    return maps.float(), signed


@torch.no_grad()
def nearest_items(model: Any, loader: Any, dataset: Any, count: int,
                  device: torch.device) -> dict[str, Tensor]:
    """The first ``count`` images of a split (the loader's order: classes interleaved): ``image``,
    ``box``, ``maps``, ``signed``, ``embedding``, and against the nearest other image of the split (every
    image a candidate): ``target`` (its embedding), ``reference_pooled`` (its pooled feature),
    ``reference`` (its dataset index, -1 for none), ``correct`` (it is of the query's class)."""
    parts: dict[str, list[Tensor]] = {}
    for batch in loader:
        maps, signed = signed_feature_maps(model, batch["image"].to(device))
        item = {"embedding": model.embed_maps([maps]), "pooled": model.pooled([maps]).float(),
                "label": batch["label"].to(device), "index": batch["index"].to(device)}
        have = sum(len(x) for x in parts.get("image", []))
        if have < count:
            n = min(count - have, len(batch["label"]))
            item.update(image=batch["image"][:n].to(device), box=batch["box"][:n].float().to(device),
                        maps=maps[:n], signed=signed[:n])
        for k, v in item.items():
            parts.setdefault(k, []).append(v)
    every = {k: torch.cat(v) for k, v in parts.items()}
    n = every["image"].shape[0]
    order = torch.argsort(every["index"])  # EmbeddingSet rows ordered by dataset index
    gallery = EmbeddingSet(every["embedding"][order], every["label"][order], every["index"][order])
    references, matches = RetrievalReferences.from_dataset(dataset).rank(
        gallery, every["embedding"][:n], every["index"][:n], 1)
    rows = torch.searchsorted(gallery.indices, references[:, 0].clamp_min(0))
    out = {k: every[k][:n] for k in ("image", "box", "maps", "signed", "embedding")}
    out.update(target=gallery.embeddings[rows], reference_pooled=every["pooled"][order][rows],
               reference=references[:, 0], correct=matches[:, 0] & (references[:, 0] >= 0))
    return out


def dist_cam_raw(method: str, maps: Tensor, reference: Tensor, **options: Any) -> Tensor:
    """The raw map of ``dist_cam`` or a variant of it (:func:`cama.viz.methods.forward_call`)."""
    function, kwargs = forward_call(method, {method: options} if options else None)
    if function != "dist_cam":
        raise ValueError(f"{method!r} is not Dist-CAM")
    return dist_cam(maps, reference, **kwargs)


def render(raw: Tensor, size: tuple[int, int]) -> Tensor:
    """Raw ``[B, h, w]`` -> ``[B, H, W]`` in [0, 1] (ReLU, bilinear, min-max)."""
    return postprocess(raw[:, None], size)[:, 0]


def signed_raw_maps(signed: Tensor, maps: Tensor, target: Tensor, projection: Tensor) -> dict[str, Tensor]:
    """The raw ``fam_signed`` and ``fam_signed_weights`` maps ``[B, h, w]`` (module docstring)."""
    pooled = global_average_pool(maps)
    alpha = fam_importance(fam_channel_contributions(pooled, target, projection=projection))
    return {"fam_signed": fam(signed, target, metric="cosine", projection=projection),
            "fam_signed_weights": torch.einsum("bk,bkhw->bhw", alpha, signed.float())}


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


def centred_box(sized_by: Tensor, size: Sequence[int]) -> Tensor:
    """A box ``[4]`` of the mean size of the boxes ``sized_by`` ``[N, 4]``, centred in an image of
    ``size``."""
    widths, heights = sized_by[:, 2] - sized_by[:, 0], sized_by[:, 3] - sized_by[:, 1]
    mean_size = torch.stack([widths, heights], dim=1).mean(0)
    return centered_boxes(mean_size, size)


def centred_box_scores(sized_by: Tensor, boxes: Tensor, correct: Tensor,
                       size: Sequence[int]) -> dict[str, float]:
    """``box_acc`` (IoU >= 0.5) and ``top1_loc_err`` (dist-cam Sec. 3: ``1 - mean(correct & hit)``) of
    :func:`centred_box` against every box of ``boxes``."""
    hit = box_iou(centred_box(sized_by, size)[None], boxes) >= 0.5  # element-wise: [N]
    return {"box_acc": float(hit.float().mean()), "top1_loc_err": float(1.0 - (hit & correct).float().mean())}


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
    centre = centred_box(boxes, size)[None].expand(len(boxes), 4)
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
# the measures of the retrieval model beyond the tables
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def dist_cam_table1(test: dict[str, Tensor], val: dict[str, Tensor]) -> dict[str, Any]:
    """dist-cam Table 1's measures on every test query (module docstring): per Dist-CAM method the test
    box accuracy over ``DEFAULT_TAUS`` (``box_curve``), the tau with the best box accuracy on the
    validation images (``val_tau``), the top-1 localization error and box accuracy there, at ``TAU`` and
    MaxBoxAcc; the same for a centred box of the validation images' mean size."""
    size = tuple(test["image"].shape[-2:])
    taus = torch.tensor(DEFAULT_TAUS)
    out: dict[str, Any] = {}
    for method in DIST_CAMS:
        maps = render(dist_cam_raw(method, test["maps"], test["reference_pooled"]), size)
        val_maps = render(dist_cam_raw(method, val["maps"], val["reference_pooled"]), size)
        val_curve = (box_localization_iou(val_maps, val["box"], taus) >= 0.5).float().mean(0)
        tau = float(taus[val_curve.argmax()])
        curve = (box_localization_iou(maps, test["box"], taus) >= 0.5).float().mean(0)
        best, best_tau = max_box_accuracy(maps, test["box"], taus)
        out[method] = {
            "box_curve": curve.tolist(), "val_tau": tau, "box_acc": float(curve[val_curve.argmax()]),
            "top1_loc_err": float(top1_localization_error(maps, test["box"], test["correct"], tau=tau)),
            "top1_loc_err_tau02": float(top1_localization_error(maps, test["box"], test["correct"], tau=TAU)),
            "max_box_acc": float(best), "max_box_acc_tau": float(best_tau),
        }
    out["center"] = centred_box_scores(val["box"], test["box"], test["correct"], size)
    out.update(queries=int(test["correct"].numel()), correct=int(test["correct"].sum()),
               val_queries=int(val["correct"].numel()))
    return out


@torch.no_grad()
def eps_sweep(maps: Tensor, reference: Tensor, boxes: Tensor,
              size: tuple[int, int]) -> dict[str, dict[str, float]]:
    """Per ``eps`` of Dist-CAM (key ``f"{eps:g}"``) and for ``dist_cam_smoothed`` (key ``"smoothed"``, the
    default eps): energy, box IoU at ``TAU``, the mean |change| of the [0, 1] map from the default eps's
    Dist-CAM (``change``) and under the bfloat16-rounded reference (``bf16_change``), the effective
    number of channels of the weights (``channels``; Eq. 5's, also for the smoothed variant)."""
    settings = [(f"{e:g}", "dist_cam", e) for e in EPSILONS]
    settings.append(("smoothed", "dist_cam_smoothed", DEFAULT_EPS))
    exact = {key: render(dist_cam_raw(method, maps, reference, eps=eps), size)
             for key, method, eps in settings}
    default = exact[f"{DEFAULT_EPS:g}"]  # Dist-CAM at its default eps, one of EPSILONS
    rounded = bfloat16_reference(reference)
    pooled = global_average_pool(maps)
    out: dict[str, dict[str, float]] = {}
    for key, method, eps in settings:
        half = render(dist_cam_raw(method, maps, rounded, eps=eps), size)
        out[key] = {"energy": float(energy_pointing_game(exact[key], boxes).mean()),
                    "iou": float(box_localization_iou(exact[key], boxes, [TAU])[:, 0].mean()),
                    "change": mean_change(exact[key], default), "bf16_change": mean_change(half, exact[key]),
                    "channels": float(channels_in_use(pooled, reference, eps).mean())}
    return out


def sanity_explain(reference_images: Tensor,
                   methods: list[str]) -> Callable[[nn.Module, Tensor], dict[str, Tensor]]:
    """``explain_fn`` of :func:`cama.explain.sanity_check` on the retrieval model: ``methods`` through the
    explainer (:func:`callbacks.sanity_checks.sanity_maps`), plus Dist-CAM, its smoothed variant and the
    signed FAMs, computed here (the explainer's Dist-CAM needs a concatenated embedding): raw maps,
    upsampled, as ``sanity_maps`` gives forward-only maps."""

    def explain(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        out = sanity_maps(model, images, reference_images, methods)
        with torch.no_grad():
            maps, signed = signed_feature_maps(model, images)
            reference_maps = model.feature_maps(reference_images)
            target, pooled = model.embed_maps(reference_maps), model.pooled(reference_maps).float()
            raw = {m: dist_cam_raw(m, maps, pooled) for m in DIST_CAMS}
            raw.update(signed_raw_maps(signed, maps, target, model.embedding_projection()))
        size = tuple(images.shape[-2:])
        return out | {k: F.interpolate(v[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
                      for k, v in raw.items()}

    return explain
