"""Explanation maps for metric-learning and classification models.

Pure, batched tensor functions (any device, any floating dtype). Every map is computed in float32
whatever its inputs' dtype -- float16 / bfloat16 feature maps of a mixed-precision model are
upcast and autocast is switched off inside -- and returned as float32 (float64 inputs stay
float64), so low-precision maps equal the float32 maps of the same values:

* forward-only maps at feature resolution, raw (no ReLU, no normalisation):
  :func:`class_activation_map` (CAM, dist-cam Eq. 3), :func:`dist_cam` (Dist-CAM, Eq. 4-7),
  :func:`ram` / :func:`ram_self` / :func:`ram_per_branch` (RAM, cama-ram Eq. 10, Fig. 8),
  :func:`fam` (FAM, fam Sec. IV, Eq. 11-18; in :mod:`.feature_activation`);
* :func:`gradient_cam`: Grad-CAM, Grad-CAM++, Layer-CAM, FullGrad, HiResCAM, XGrad-CAM with the
  layerization and truncation tricks (ltgrad-cam Eq. 2-11), and the gradient-free Score-CAM,
  Ablation-CAM and EigenCAM (:mod:`.gradient_free`) with the layerization, in ``[0, 1]`` at image
  size, each layer's map min-max normalised before the layerization sum or not (``layer_norm``,
  :data:`LAYER_NORMS`); the method names are :data:`CAM_METHODS`; the gradient methods' two halves
  :func:`record_gradients` (one forward and backward) and :func:`gradient_layer_maps` (the
  per-layer terms of Eq. 8) sweep layers and truncations on one pass; its scores
  :func:`logit_score` and :func:`similarity_score`; :func:`mask_images` (the masked inputs of
  Score-CAM and of the faithfulness scores);
* variants beyond the papers, off by default: Dist-CAM with a smoothing term in Eq. 5's
  denominator (:func:`dist_cam` ``smoothing=``), FAM without Eq. 12's min-max floor
  (:func:`fam` ``importance="relu"``);
* rendering: :func:`postprocess` (ReLU -> bilinear upsampling -> per-map min-max),
  :func:`overlay` (uint8 RGB heat-map overlays), :func:`grid`;
* contrastive ranking maps (:mod:`.contrastive`): why a false match outranked the true match,
  :func:`contrastive_ranks` (which probes), :func:`contrastive_ram` (the RAM of
  ``s(q, g-) - s(q, g+)``, exact by linearity of cama-ram Eq. 10), :func:`contrast_score` (that
  difference as a gradient CAM's score), :func:`signed_display`;
* sanity checks (Adebayo et al. 2018, :mod:`.sanity`): :func:`sanity_check` and
  :func:`cascading_randomization` (cascading model-parameter randomization),
  :func:`spearman_correlation`, :func:`ssim`;
* robustness (Yeh et al. 2019, :mod:`.sensitivity`): :func:`max_sensitivity`, the Monte-Carlo
  max-sensitivity of any ``explain_fn`` under uniform noise in an L-inf ball.

This package imports nothing from ``cama.models``, ``callbacks`` or ``datamodules``.

Examples (hand-checkable). Two channels on a 1x2 grid, ``Q[0] = [1, 3]``, ``Q[1] = [0, 2]``, so
``q = GAP(Q) = [2, 1]``. RAM against a query feature ``f_q = [1, 0]`` is
``<f_q, Q(x, y)> / ||q|| = [1, 3] / sqrt(5)``; CAM with class weights ``[0.5, 1]`` is
``0.5 Q[0] + Q[1] = [0.5, 3.5]``; every map is brought to ``[0, 1]`` at image size by
:func:`postprocess`:

>>> import torch
>>> from cama.explain import class_activation_map, dist_cam, fam, postprocess, ram
>>> Q = torch.tensor([[[[1.0, 3.0]], [[0.0, 2.0]]]])          # [B=1, K=2, h=1, w=2]
>>> (ram(torch.tensor([[1.0, 0.0]]), Q) * 5 ** 0.5).round(decimals=4)
tensor([[[1., 3.]]])
>>> class_activation_map(Q, torch.tensor([[0.5, 1.0]]), 0)
tensor([[[0.5000, 3.5000]]])
>>> dist_cam(Q, torch.tensor([[2.0, 1.0]])).shape              # against a reference embedding
torch.Size([1, 1, 2])
>>> fam(Q, torch.tensor([[[2.0, 1.0], [1.0, 2.0]]])).shape     # against two supports
torch.Size([1, 1, 2])
>>> postprocess(torch.tensor([[[1.0, 3.0]]]), size=(1, 3))     # ReLU, upsample, min-max
tensor([[[0.0000, 0.5000, 1.0000]]])
"""

from .gradient import (
    CAM_METHODS,
    GRADIENT_FREE_METHODS,
    LAYER_NORMS,
    GradientRecord,
    check_layer_norm,
    fullgrad_layers,
    gradient_cam,
    gradient_cam_layer_map,
    gradient_layer_maps,
    record_gradients,
    truncate_gradients,
)
from .gradient_scores import RowScore, logit_score, similarity_score
from .masking import mask_images
from .contrastive import contrast_score, contrastive_ram, contrastive_ranks, signed_display
from .feature_activation import fam, fam_channel_contributions, fam_importance
from .maps import (
    class_activation_map,
    class_prototype,
    dist_cam,
    dist_cam_weights,
    global_average_pool,
    ram,
    ram_per_branch,
    ram_self,
)
from .render import colorize, colormap, draw_boxes, grid, minmax_normalize, overlay, postprocess
from .sensitivity import max_sensitivity
from .sanity import (
    SanityCheckResult,
    cascading_randomization,
    sanity_check,
    spearman_correlation,
    ssim,
)

__all__ = [
    "CAM_METHODS",
    "GRADIENT_FREE_METHODS",
    "LAYER_NORMS",
    "RowScore",
    "SanityCheckResult",
    "check_layer_norm",
    "cascading_randomization",
    "GradientRecord",
    "class_activation_map",
    "class_prototype",
    "colorize",
    "contrast_score",
    "contrastive_ram",
    "contrastive_ranks",
    "draw_boxes",
    "colormap",
    "dist_cam",
    "dist_cam_weights",
    "fam",
    "fam_channel_contributions",
    "fam_importance",
    "fullgrad_layers",
    "global_average_pool",
    "gradient_cam",
    "gradient_cam_layer_map",
    "gradient_layer_maps",
    "grid",
    "logit_score",
    "mask_images",
    "max_sensitivity",
    "minmax_normalize",
    "overlay",
    "postprocess",
    "ram",
    "ram_per_branch",
    "ram_self",
    "sanity_check",
    "signed_display",
    "record_gradients",
    "similarity_score",
    "spearman_correlation",
    "ssim",
    "truncate_gradients",
]
