"""The training loss of the re-ID model: CAMA's terms (cama-ram Eq. 7-8) and BoT's (Luo et al., "Bag of
Tricks and a Strong Baseline for Deep Person Re-identification", CVPR-W 2019, Sec. 3.3, 3.5, 3.6).

For the ``N`` branches ``i`` of :class:`cama.models.CAMA`, with ``T^i`` a branch's backbone maps,
``F^i = BN(T^i)`` its head's maps, ``z^i = W^i GAP(F^i)`` its logits and ``g^i`` its metric feature
(``GAP(T^i)`` with the BNNeck, ``GAP(F^i)`` without):

``L = sum_i CE_eps(z^i, y) + alpha * L_oap + w_tri * sum_i L_tri(g^i) + beta * sum_i L_C(g^i)``

- ``CE_eps``: the cross-entropy with label smoothing (BoT Sec. 3.3): the target ``q_k = 1 - eps +
  eps / C`` for the true class and ``eps / C`` for the others (``eps = 0``: the one-hot target).
- ``L_oap``: the Overlapped Activation Penalty of the branches' target-class CAMs (cama-ram Eq. 5-6).
- ``L_tri``: the batch-hard triplet loss (Hermans et al. 2017, BoT Sec. 2 and 3.6): for each anchor
  ``a`` its farthest positive and its nearest negative in the batch, ``mean_a [d(a, p*) - d(a, n*) +
  m]_+`` with the Euclidean distance of the unnormalised features (BoT's margin ``m = 0.3``), from
  pytorch-metric-learning: ``BatchHardMiner`` chooses the triplets, ``TripletMarginLoss`` (reduced
  by ``MeanReducer``: every mined anchor counts, as in BoT) scores them.
- ``L_C``: the centre loss (Wen et al. 2016; BoT Sec. 3.6), :func:`cama.losses.center_loss`, one
  set of centres per branch, moved by :func:`cama.losses.center_loss_step` in every training forward.

Each branch's triplet and centre terms are computed on that branch's own metric feature and summed
over the branches, like the identity terms; the logged terms are the sums (``triplet``, ``center``)
and the per-branch values (``triplet_branch1``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import BatchHardMiner
from pytorch_metric_learning.reducers import MeanReducer
from torch import Tensor, nn

from cama.explain.precision import work_dtype
from cama.losses import center_loss, center_loss_step, overlapped_activation_penalty
from cama.models.heads import CAMHead

__all__ = ["ReIDLoss"]


def _check_weight(name: str, value: float) -> None:
    if not value >= 0:  # also NaN
        raise ValueError(f"{name} must be >= 0 (0 disables the term), got {value!r}")


class ReIDLoss(nn.Module):
    """The loss terms of the re-ID model, from its heads and the branches' backbone maps.

    Args:
        num_branches, num_classes, channels: the model's branches, training identities and the
            channels ``K`` of a branch's maps (the size of the metric feature and of the centres).
        label_smoothing: ``eps`` of the identity losses (BoT Sec. 3.3: 0.1).
        oap_weight, oap_topk: ``alpha`` and ``k`` of the OAP (cama-ram Eq. 5, 8).
        triplet_weight: ``w_tri`` (BoT: 1; 0 disables the term).
        triplet_margin: ``m`` of the triplet loss (BoT: 0.3).
        center_weight: ``beta`` (BoT Sec. 3.6: 0.0005; 0 disables the term and its centres).
        center_lr: the learning rate of the centres' SGD step (BoT: 0.5).
        bnneck: the metric terms on the pooled features before the heads' BN (BoT Sec. 3.5), else on
            the BN's output, the feature the classifier sees.
    """

    def __init__(
        self,
        num_branches: int,
        num_classes: int,
        channels: int,
        label_smoothing: float = 0.0,
        oap_weight: float = 0.0,
        oap_topk: float = 0.2,
        triplet_weight: float = 0.0,
        triplet_margin: float = 0.3,
        center_weight: float = 0.0,
        center_lr: float = 0.5,
        bnneck: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        for name, value in (("oap_weight", oap_weight), ("triplet_weight", triplet_weight),
                            ("center_weight", center_weight)):
            _check_weight(name, value)
        if not triplet_margin >= 0:
            raise ValueError(f"triplet_margin must be >= 0, got {triplet_margin!r}")
        if not center_lr > 0:
            raise ValueError(f"center_lr must be > 0, got {center_lr!r}")
        self.label_smoothing = float(label_smoothing)
        self.oap_weight, self.oap_topk = float(oap_weight), oap_topk
        self.triplet_weight, self.center_weight = float(triplet_weight), float(center_weight)
        self.center_lr = float(center_lr)
        self.bnneck = bool(bnneck)
        self.triplet: TripletMarginLoss | None = None
        self.miner: BatchHardMiner | None = None
        if self.triplet_weight > 0:
            euclidean = LpDistance(normalize_embeddings=False, p=2, power=1)
            self.triplet = TripletMarginLoss(margin=float(triplet_margin), distance=euclidean,
                                             reducer=MeanReducer())
            self.miner = BatchHardMiner(distance=euclidean)
        # BoT draws its centres from a standard normal; center_loss_step moves them, not the optimizer:
        # a buffer [N, C, K] (checkpointed; restored with the BN statistics by NonFiniteGuard when it
        # skips a step; under DDP, like those statistics, rank 0's copy is broadcast at each forward)
        centers = torch.randn(num_branches, num_classes, channels) if self.center_weight > 0 else None
        self.register_buffer("centers", centers)

    def metric_features(self, backbone_maps: Sequence[Tensor], maps: Sequence[Tensor]) -> list[Tensor]:
        """``g^i`` of each branch, ``[B, K]`` in float32: ``GAP(T^i)`` with the BNNeck, else ``GAP(F^i)``."""
        chosen = backbone_maps if self.bnneck else maps
        return [m.mean(dim=(2, 3), dtype=work_dtype(m.dtype)) for m in chosen]

    def forward(
        self, heads: Sequence[CAMHead], backbone_maps: Sequence[Tensor], pids: Tensor
    ) -> dict[str, Tensor]:
        """The total (``loss``) and its terms, from each branch's head and backbone maps ``T^i``
        ``[B, K, h, w]``; in training mode it also moves the centres (:func:`center_loss_step`)."""
        maps = [head.features(t) for head, t in zip(heads, backbone_maps)]
        logits = [head.logits(m) for head, m in zip(heads, maps)]
        eps = self.label_smoothing
        id_losses = torch.stack([F.cross_entropy(z, pids, label_smoothing=eps) for z in logits])
        losses = {"id_loss": id_losses.sum(), "accuracy": (logits[0].argmax(1) == pids).float().mean()}
        for i, loss in enumerate(id_losses, start=1):
            losses[f"id_loss_branch{i}"] = loss
        total = losses["id_loss"]
        if self.oap_weight > 0:
            cams = torch.stack([head.target_cam(m, pids) for head, m in zip(heads, maps)])
            losses["oap"] = overlapped_activation_penalty(cams, self.oap_topk)
            total = total + self.oap_weight * losses["oap"]
        if self.triplet is not None or self.centers is not None:
            features = self.metric_features(backbone_maps, maps)
            if self.triplet is not None:
                total = total + self.triplet_weight * self._branch_terms(losses, "triplet", [
                    self.triplet(g, pids, self.miner(g, pids)) for g in features])
            if self.centers is not None:
                total = total + self.center_weight * self._branch_terms(losses, "center", [
                    center_loss(g, c, pids) for g, c in zip(features, self.centers)])
                if self.training:
                    with torch.no_grad():
                        for g, c in zip(features, self.centers):
                            c.copy_(center_loss_step(g, c, pids, self.center_lr))
        losses["loss"] = total
        return losses

    @staticmethod
    def _branch_terms(losses: dict[str, Tensor], name: str, values: list[Tensor]) -> Tensor:
        """Log each branch's ``values`` as ``<name>_branch<i>`` and their sum as ``<name>``; the sum."""
        for i, value in enumerate(values, start=1):
            losses[f"{name}_branch{i}"] = value
        losses[name] = torch.stack(values).sum()
        return losses[name]
