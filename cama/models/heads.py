"""Per-branch heads of the IDE+BN / CAMA networks (cama-ram Eq. 2-4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cama.explain import class_activation_map
from cama.explain.precision import work_dtype

__all__ = ["PooledBatchNorm2d", "CAMHead", "OneBranchGAP"]


class PooledBatchNorm2d(nn.BatchNorm1d):
    """BatchNorm of the GAP feature, applied to every location of the feature map (cama-ram Eq. 3).

    IDE+BN normalises ``GAP(T)`` with a 1-D BatchNorm (Eq. 2). Because BN (with fixed statistics)
    and GAP are both linear, the paper moves BN before GAP: ``F(x, y) = BN(T(x, y))`` (Eq. 3), which
    is what makes CAM usable on the BN baseline. This module does exactly that, also in training:
    the batch statistics are those of the pooled features ``GAP(T)`` (as in Eq. 2) and the same
    per-channel affine map is applied to every location, so ``GAP(F) == BN1d(GAP(T))`` holds in both
    train and eval mode. Its state dict is that of ``nn.BatchNorm1d``.

    Under mixed precision (half / bfloat16 maps) the statistics are computed in float32, like the
    running statistics they update; the output is then float32 too (type promotion), which keeps
    the feature maps that the explanation callbacks capture at full precision.
    """

    def forward(self, maps: Tensor) -> Tensor:  # noqa: D102 - documented on the class
        pooled = maps.mean(dim=(2, 3), dtype=work_dtype(maps.dtype))
        if self.training:
            mean = pooled.mean(dim=0)
            var = pooled.var(dim=0, unbiased=False)
            if self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                    n = pooled.shape[0]
                    unbiased = var * n / max(n - 1, 1)
                    self.running_mean.lerp_(mean.detach(), momentum)
                    self.running_var.lerp_(unbiased.detach(), momentum)
        else:
            mean, var = self.running_mean, self.running_var
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
            shift = self.bias - mean * scale
        else:
            shift = -mean * scale
        return maps * scale[None, :, None, None] + shift[None, :, None, None]


class CAMHead(nn.Module):
    """BN -> bias-free classifier used as CAM -> GAP (cama-ram Fig. 2, Eq. 3-4).

    ``features(T)`` gives ``F = BN(T)``; ``logits(F)`` gives the class scores ``S = W GAP(F)``
    (equal to ``GAP(M)`` of the class activation maps ``M_c = sum_k W_{c,k} F_k``, Eq. 4);
    ``target_cam(F, t)`` gives ``M_t`` for one class per sample.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = PooledBatchNorm2d(in_channels)
        self.classifier = nn.Linear(in_channels, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def features(self, backbone_maps: Tensor) -> Tensor:
        return self.bn(backbone_maps)

    def logits(self, maps: Tensor) -> Tensor:
        return self.classifier(maps.mean(dim=(2, 3)))

    def target_cam(self, maps: Tensor, classes: Tensor) -> Tensor:
        """``M_t(x, y) = sum_k W_{t,k} F_k(x, y)`` for class ``classes[b]`` of each sample: ``[B, h, w]``
        (:func:`cama.explain.class_activation_map`, the one CAM of the project)."""
        return class_activation_map(maps, self.classifier.weight, classes)


def l2_normalized_gap(maps: Tensor) -> Tensor:
    """``GAP`` then L2 normalisation, the per-branch test feature of cama-ram Sec. 3.3."""
    return F.normalize(maps.mean(dim=(2, 3)), dim=1)


class OneBranchGAP:
    """The model protocol (:class:`cama.protocols.EmbeddingModel`) of a one-branch model whose
    embedding is the global average pool of its ``backbone``'s maps (dist-cam Eq. 2): a mixin of the
    classifier and the few-shot learner, which set ``self.backbone`` and the ``channels_last``
    hyper-parameter."""

    backbone: nn.Module
    hparams: dict

    def feature_maps(self, images: Tensor) -> list[Tensor]:
        """The backbone's maps ``[B, K, h, w]`` (one branch), the maps pooled into the embedding."""
        if self.hparams.get("channels_last"):
            images = images.contiguous(memory_format=torch.channels_last)
        return [self.backbone(images)]

    def embed_maps(self, maps: list[Tensor]) -> Tensor:
        """``q = GAP(Q)`` ``[B, K]``: the embedding (what a classifier's FC layer or a prototype compares)."""
        return maps[0].mean(dim=(2, 3))
