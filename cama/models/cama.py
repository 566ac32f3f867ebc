"""The CAMA re-ID network (cama-ram Sec. 3), its IDE+BN baseline and the BoT baseline (Luo et al., CVPR-W
2019) as a LightningModule."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from cama.backbones import MultiBranchViT, TokenGrid, TransformerOptions, build_branches
from cama.metrics import ReIDRankMetric
from cama.models.checkpoints import init_from_checkpoint
from cama.models.evaluation import EpochEvaluation
from cama.models.heads import CAMHead, l2_normalized_gap
from cama.models.reid_loss import ReIDLoss
from cama.models.schedules import check_milestones, two_phase_lambdas
from cama.metrics.ranking import EmbeddingSet
from cama.protocols import EvaluationOutputs
from cama.references import ReIDReferences

__all__ = ["CAMA"]


class CAMA(pl.LightningModule):
    """Class Activation Maps Augmentation network for person re-ID (cama-ram Fig. 2).

    A ResNet whose ``conv1``-``conv4`` are shared and whose ``conv5`` is copied into
    ``num_branches`` ordered branches; each branch has BN -> bias-free classifier (its weights are
    the CAM, Eq. 4) -> GAP -> softmax, trained with ``L = sum_i CE_i + alpha * L_oap`` (Eq. 7-8).
    With ``num_branches=1`` and ``oap_weight=0`` it is the IDE+BN baseline (Eq. 3).
    The test feature is the concatenation of each branch's L2-normalised GAP feature (Sec. 3.3).

    BoT (Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person Re-identification", CVPR-W
    2019) is IDE+BN with its tricks switched on (``configs/bot_*.yaml``): warm-up (Sec. 3.1,
    ``lr_schedule="multistep"``), random erasing (Sec. 3.2, the data module's ``random_erasing``),
    label smoothing (Sec. 3.3), last stride 1 (Sec. 3.4), the BNNeck (Sec. 3.5: the heads' BN is the
    neck; the triplet and centre losses read the pooled features before it, the cross-entropy its
    output, and the test feature is its output) and the centre loss (Sec. 3.6). The loss terms are
    assembled by :class:`cama.models.reid_loss.ReIDLoss`; with several branches the triplet and
    centre terms are computed per branch, each on its own pre-BN pooled feature, and summed.

    Args:
        num_classes: number of training identities (linked from the data module by ``train.py``).
        backbone: torchvision ResNet name (``resnet10`` is a small one for CPU runs) or a timm vision
            transformer (see ``transformer``).
        num_branches: N, the number of ordered branches.
        pretrained: ``None``, ``"imagenet"`` (torch hub cache, never downloaded) or a weights file.
        width: channels of the backbone's first stage (64: the torchvision ResNet; 32 costs about a
            quarter of the FLOPs, for CPU runs from scratch).
        last_stride: stride of conv5; 1 as in the paper (Sec. 4.2).
        oap_weight: alpha of Eq. 8 (1.0 in the paper; 0 disables the penalty).
        oap_topk: k of Eq. 5 as a fraction of the feature grid (0.2 ~ the paper's 26/128) or a count.
        lr: base learning rate of Adam (3e-4).
        weight_decay: Adam weight decay.
        warmup_epochs: epochs of the first phase (10 in the paper), learning rate rising linearly
            from ``warmup_start_lr`` to ``lr``.
        warmup_start_lr: first learning rate of the warm-up (3e-6).
        freeze_backbone_during_warmup: train only BN + classifiers in the first phase (the paper
            "fine-tunes the classifier weights" first); the backbone's learning rate is then 0.
        lr_step: after the warm-up, multiply the learning rate by ``lr_gamma`` every ``lr_step`` epochs.
        lr_gamma: the decay factor (0.1).
        lr_schedule: ``"step"`` (the paper's: ``lr_step`` / ``lr_gamma``), ``"cosine"``: after the
            warm-up a half cosine from ``lr`` towards 0 at the end of ``max_epochs`` (for short runs),
            or ``"multistep"`` (``lr_gamma`` at each of ``lr_milestones``, BoT's).
        lr_milestones: with ``lr_schedule="multistep"``, the epochs (from 0, from the start of the run,
            none inside the warm-up) from which the learning rate is multiplied by ``lr_gamma`` once
            more; BoT (Sec. 3.1): ``[40, 70]`` after 10 warm-up epochs from 3.5e-5 to 3.5e-4.
        label_smoothing: epsilon of the identity losses' label smoothing (BoT Sec. 3.3: 0.1; 0: none).
        triplet_weight: weight of the batch-hard triplet loss (BoT Sec. 2: 1; 0: no triplet loss),
            pytorch-metric-learning's ``TripletMarginLoss`` on the triplets of its ``BatchHardMiner``,
            Euclidean distance of the unnormalised features, averaged over the anchors.
        triplet_margin: the triplet loss's margin (BoT: 0.3).
        bnneck: the triplet and centre losses read each branch's pooled features before the head's BN
            (BoT Sec. 3.5, the BNNeck); ``False``: after it, the feature the classifier sees.
        freeze_bn_bias: keep the heads' BN shift at 0 (BoT's code trains its BNNeck without a shift).
        center_weight: beta of the centre loss (Wen et al. 2016; BoT Sec. 3.6: 0.0005; 0: none).
        center_lr: learning rate of the centres' own SGD step (BoT: 0.5), taken in every training
            forward (:func:`cama.losses.center_loss_step`), not by the optimizer.
        max_rank: CMC length for evaluation.
        rerank: also report the metrics after k-reciprocal re-ranking (Zhong et al., CVPR 2017;
            k1=20, k2=6, lambda=0.3) as ``val/mAP_rerank``, ``val/rank1_rerank``, ... (and ``test/``);
            it needs the whole (Q+G)^2 distance matrix (1.5 GB for Market-1501) and seconds to
            minutes per evaluation on a CPU (``bench/rerank.py``).
        init_from: a checkpoint (Lightning or plain state dict) whose matching weights initialise a
            fresh run (fine-tuning); layers whose shapes differ, e.g. a classifier for another number
            of identities, keep their fresh initialisation and are listed in the log.
        init_from_min_match: stop when less than this fraction of the model's values (parameters and
            buffers, by element count) match ``init_from`` by name and shape; 0 loads whatever matches.
        channels_last: run the backbone in the channels-last memory format (faster convolutions on
            CPU; the results do not change beyond float rounding).
        transformer: with a timm vision transformer as ``backbone`` (e.g. ``vit_small_patch16_224``):
            its image size, pooling (mean of the patch tokens or the class token), blocks per branch
            and size overrides (:class:`cama.backbones.TransformerOptions`); the branches are copies of
            its last blocks and the OAP compares their token grids.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        num_branches: int = 2,
        pretrained: str | None = None,
        last_stride: int = 1,
        width: int = 64,
        oap_weight: float = 1.0,
        oap_topk: float = 0.2,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        warmup_epochs: int = 10,
        warmup_start_lr: float = 3e-6,
        freeze_backbone_during_warmup: bool = True,
        lr_step: int = 20,
        lr_gamma: float = 0.1,
        lr_schedule: str = "step",
        lr_milestones: list[int] | None = None,
        label_smoothing: float = 0.0,
        triplet_weight: float = 0.0,
        triplet_margin: float = 0.3,
        bnneck: bool = True,
        freeze_bn_bias: bool = False,
        center_weight: float = 0.0,
        center_lr: float = 0.5,
        max_rank: int = 50,
        rerank: bool = False,
        init_from: str | None = None,
        init_from_min_match: float = 0.5,
        channels_last: bool = False,
        transformer: TransformerOptions | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (training identities), got {num_classes}")
        if lr_schedule not in ("step", "cosine", "multistep"):
            raise ValueError(f"lr_schedule must be 'step', 'cosine' or 'multistep', got {lr_schedule!r}")
        if lr_schedule == "multistep":
            check_milestones(lr_milestones or [], warmup_epochs)
        elif lr_milestones:
            raise ValueError(
                f"lr_milestones {list(lr_milestones)} need lr_schedule 'multistep', got {lr_schedule!r}")
        self.save_hyperparameters()
        self.backbone = build_branches(backbone, num_branches, pretrained, last_stride, width, transformer)
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        channels = self.backbone.out_channels
        self.heads = nn.ModuleList([CAMHead(channels, num_classes) for _ in range(num_branches)])
        if freeze_bn_bias:
            for head in self.heads:
                head.bn.bias.requires_grad_(False)
        self.criterion = ReIDLoss(
            num_branches, num_classes, channels, label_smoothing=label_smoothing, oap_weight=oap_weight,
            oap_topk=oap_topk, triplet_weight=triplet_weight, triplet_margin=triplet_margin,
            center_weight=center_weight, center_lr=center_lr, bnneck=bnneck)
        # Table 5 of the paper: the mAP of the first i branches; the full model is val/mAP itself.
        prefix_dims = [channels * i for i in range(1, num_branches)] or None
        self.val_metric = ReIDRankMetric(max_rank=max_rank, prefix_dims=prefix_dims, rerank=rerank)
        self.test_metric = ReIDRankMetric(max_rank=max_rank, prefix_dims=prefix_dims, rerank=rerank)
        self.evaluation = EpochEvaluation(self.val_metric.result_names, headline=("mAP", "rank1", "mINP"))

    # ------------------------------------------------------------------ the model protocol (cama.protocols)
    def feature_maps(self, images: Tensor) -> list[Tensor]:
        """``F^i = BN(T^i)`` of each branch, ``[B, K, h, w]`` -- the maps pooled into the embedding."""
        return [head.features(maps) for head, maps in zip(self.heads, self.backbone_maps(images))]

    def backbone_maps(self, images: Tensor) -> list[Tensor]:
        """``T^i`` of each branch, ``[B, K, h, w]``: the maps before the heads' BN (``feature_maps`` is
        ``head.features`` of these); what the training loss reads."""
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return list(self.backbone(images))

    def embed_maps(self, maps: list[Tensor]) -> Tensor:
        """``f = [f^1/||f^1||; ...; f^N/||f^N||]``, the test feature of Sec. 3.3, ``[B, N*K]``."""
        return torch.cat([l2_normalized_gap(m) for m in maps], dim=1)

    def forward(self, images: Tensor) -> Tensor:
        return self.embed_maps(self.feature_maps(images))

    def classifier_weights(self) -> list[Tensor]:
        """The CAM weights ``W^i`` ``[C, K]`` of each branch (for CAM explanations of training ids)."""
        return [head.classifier.weight for head in self.heads]

    def explanation_layers(self) -> list[list[str]]:
        """Each branch's last block (conv5 copy; a transformer's: the norm in front of its last
        attention), the default layer of its gradient CAMs."""
        return [[f"backbone.{name}" for name in names] for names in self.backbone.layer_names()]

    def token_grid(self, size: tuple[int, int]) -> TokenGrid | None:
        """A transformer's tokens -> maps for images of ``size`` (:class:`cama.protocols.HasTokenLayers`)."""
        return self.backbone.token_grid(size) if isinstance(self.backbone, MultiBranchViT) else None

    def randomization_blocks(self) -> list[tuple[str, nn.Module]]:
        """``head`` (every branch's BN and classifier), ``conv5`` (every branch) .. ``conv1``: the
        cascading randomization's blocks, top first (:class:`cama.protocols.HasRandomizationBlocks`)."""
        return [("head", self.heads), *self.backbone.stages_top_down()]

    def overlap_topk(self) -> float | int:
        """The OAP's k (Eq. 5): what the branch-overlap score of the explanations compares."""
        return self.hparams.oap_topk

    # ------------------------------------------------------------------ the task (cama.protocols.RankingTask)
    def evaluation_embeddings(self) -> EmbeddingSet:
        """This validation epoch's query and gallery embeddings (a collective when distributed)."""
        return self.val_metric.embedding_set()

    def reference_provider(self, dataset: Any) -> ReIDReferences:
        """Probes are queries with a true match; the reference is the top-ranked gallery image."""
        return ReIDReferences.from_dataset(dataset)

    # ------------------------------------------------------------------ training
    def setup(self, stage: str) -> None:
        init_from_checkpoint(self, stage)

    def compute_losses(self, images: Tensor, pids: Tensor) -> dict[str, Tensor]:
        """Eq. 7-8 (per-branch cross-entropy, OAP over the target-class CAMs) plus the BoT terms that
        are on, and their total (:class:`cama.models.reid_loss.ReIDLoss`); moves the centres in training."""
        return self.criterion(self.heads, self.backbone_maps(images), pids)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        losses = self.compute_losses(batch["image"], batch["pid"])
        self.log("train/loss", losses["loss"], prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, prog_bar=False)
        return losses  # the total ("loss") and its terms (callbacks.non_finite names them)

    # ------------------------------------------------------------------ evaluation
    def _update_metric(self, metric: ReIDRankMetric, batch: dict[str, Tensor]) -> EvaluationOutputs:
        maps = self.feature_maps(batch["image"])
        metric.update(self.embed_maps(maps), batch["pid"], batch["camid"], batch["is_query"], batch["index"])
        return {"feature_maps": [m.detach() for m in maps]}

    def _log_metric(self, metric: ReIDRankMetric, prefix: str) -> None:
        results = self.evaluation.finish(self, metric, prefix)
        if results is None:  # the sanity check
            return
        # compute() already gathered every process's samples: the values are the same on each rank.
        tag = self.evaluation.tag
        shown = {tag(prefix, "mAP"): results.pop("mAP"), tag(prefix, "rank1"): results.pop("rank1")}
        self.log_dict(shown, prog_bar=True, sync_dist=False)
        self.log_dict({tag(prefix, name): value for name, value in results.items()}, sync_dist=False)

    def headline_metrics(self) -> list[str]:
        """The logged names of the validation headline metrics (:class:`cama.protocols.HasHeadlineMetrics`)."""
        return self.evaluation.headline_tags()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> EvaluationOutputs:
        return self._update_metric(self.val_metric, batch)

    def on_validation_epoch_end(self) -> None:
        self._log_metric(self.val_metric, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._update_metric(self.test_metric, batch)

    def on_test_epoch_end(self) -> None:
        self._log_metric(self.test_metric, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        keys = ("pid", "camid", "is_query", "index")
        return {"embedding": self(batch["image"]), **{k: batch[k] for k in keys if k in batch}}

    # ------------------------------------------------------------------ optimisation (Sec. 4.2)
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = [
            {"params": list(self.backbone.parameters()), "name": "backbone"},
            {"params": list(self.heads.parameters()), "name": "heads"},
        ]
        optimizer = torch.optim.Adam(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        head_lambda, backbone_lambda = two_phase_lambdas(
            base_lr=hp.lr,
            warmup_epochs=hp.warmup_epochs,
            warmup_start_lr=hp.warmup_start_lr,
            step=hp.lr_step,
            gamma=hp.lr_gamma,
            freeze_backbone_during_warmup=hp.freeze_backbone_during_warmup,
            cosine_epochs=self.trainer.max_epochs if hp.lr_schedule == "cosine" else None,
            milestones=hp.lr_milestones if hp.lr_schedule == "multistep" else None,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [backbone_lambda, head_lambda])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
