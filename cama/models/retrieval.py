"""A deep-metric-learning image retrieval model (MS loss, Margin loss, ...; fam Sec. V-D, dist-cam Sec. 4.2).

A torchvision ResNet (ResNet-50 by default, up to ``layer4``) gives feature maps ``Q`` ``[B, K, h, w]``;
they are pooled (``avg`` = GAP by default, ``max`` or ``gem``) into ``g`` ``[B, K]``, optionally
projected by a bias-free FC layer ``e = W g`` to ``embedding_size`` dimensions (512 by default) and
L2-normalised. Images are ranked by the Euclidean (= cosine, for unit vectors) distance of their
embeddings.

The loss and the miner are any of pytorch-metric-learning's, named in the YAML with their arguments
(:func:`build_pml_object`)::

    loss: MultiSimilarityLoss                                  # a name, default arguments
    loss: {name: TripletMarginLoss, margin: 0.1}               # a name and arguments
    loss:                                                      # jsonargparse-style
      class_path: pytorch_metric_learning.losses.ArcFaceLoss
      init_args: {margin: 28.6, scale: 64}
    miner: {name: MultiSimilarityMiner, epsilon: 0.1}          # or null for no miner

The defaults are the MS-loss paper's: ``MultiSimilarityLoss(alpha=2, beta=50, base=0.5)`` with
``MultiSimilarityMiner(epsilon=0.1)``. Losses that need ``num_classes`` / ``embedding_size`` (ArcFace,
Proxy-Anchor, NormalizedSoftmax, CrossBatchMemory, ...) get the number of training classes (linked
from the data module by ``train.py``) and the embedding size; their parameters (class weights,
proxies) are trained in an optimizer group of their own with the learning rate ``loss_lr``.

Validation and test embed the whole test split and log ``{val,test}/recall@{1,2,4,8}`` and
``{val,test}/map@r`` (:class:`cama.metrics.RetrievalMetric`: pytorch-metric-learning's
AccuracyCalculator, every test image a query against the others).

Explanations (:mod:`cama.protocols`, ``docs/explanations.md#fam``): the model offers
``feature_maps`` / ``embed_maps``, and :meth:`RetrievalModel.embedding_projection` gives the FC
weight ``W`` ``[D, K]`` (``None`` without a projection) so that FAM maps embedding-dimension
contributions back to channels (fam Eq. 16-18); :class:`cama.viz.ModelExplainer` does it with
``embedding_projection()``. Eq. 16-18 assume ``e = W GAP(Q)``: exact with the default
``pooling="avg"`` and ``projection_bias=False``, an approximation otherwise.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cama.backbones import TokenGrid, TransformerOptions, build_body
from cama.backbones.builders import body_layers, body_token_grid, check_backbone_name
from cama.metrics.retrieval import RECALL_KS, RetrievalMetric
from cama.models.checkpoints import init_from_checkpoint
from cama.models.evaluation import EpochEvaluation
from cama.models.pml import PML_MODULES, build_pml_object
from cama.metrics.ranking import EmbeddingSet
from cama.protocols import EvaluationOutputs
from cama.references import RetrievalReferences

__all__ = ["PML_MODULES", "build_pml_object", "pool_maps", "RetrievalModel"]

def pool_maps(
    maps: Tensor, mode: Literal["avg", "max", "gem"] = "avg", p: Tensor | float = 3.0, eps: float = 1e-6
) -> Tensor:
    """Pool ``[B, K, h, w]`` maps to ``[B, K]``: average (GAP), max or generalised mean (GeM, exponent ``p``)."""
    if maps.dim() != 4:
        raise ValueError(f"maps must be [B, K, h, w], got shape {tuple(maps.shape)}")
    if mode == "avg":
        return maps.mean(dim=(2, 3))
    if mode == "max":
        return maps.amax(dim=(2, 3))
    if mode == "gem":
        return maps.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
    raise ValueError(f"pooling must be 'avg', 'max' or 'gem', got {mode!r}")


def _mined_count(indices_tuple: Any) -> int:
    """Pairs (positive + negative) or triplets a miner returned."""
    if indices_tuple is None:
        return 0
    if len(indices_tuple) == 4:
        return int(indices_tuple[0].numel() + indices_tuple[2].numel())
    return int(indices_tuple[0].numel())


class RetrievalModel(pl.LightningModule):
    """Backbone -> pooling -> optional FC projection -> L2 normalisation, trained with a pml loss.

    Args:
        num_classes: number of training classes (linked from the data module by ``train.py``); used
            by the losses that need it (ArcFace, Proxy-Anchor, ...).
        backbone: a torchvision ResNet of :data:`cama.backbones.RESNET_NAMES` (up to ``layer4``) or a
            timm vision transformer (its patch tokens as the maps; see ``transformer``).
        pretrained: ``None``, ``"imagenet"`` (torch hub cache, never downloaded) or a weights file.
        last_stride: stride of ``layer4`` (2 as in torchvision; 1 doubles the resolution of the maps).
        width: channels of the backbone's first stage (64: the torchvision ResNet; narrower nets for
            CPU runs from scratch, :func:`cama.backbones.build_resnet`).
        pooling: ``"avg"`` (GAP, as in the MS-loss code), ``"max"`` or ``"gem"``.
        gem_p: initial GeM exponent (learned).
        embedding_size: output size of the FC projection (512 in the MS-loss paper); ``None`` or 0:
            no projection, the pooled feature (``K`` dims) is the embedding.
        projection_bias: give the projection a bias (the MS-loss code has one; without it FAM's
            Eq. 16-18 are exact).
        normalize: L2-normalise the embedding.
        frozen_bn: keep the backbone's BatchNorm layers in eval mode (running statistics of the
            pretrained weights, as the MS-loss code does for ResNet-50); their affine weights train.
        loss: the pytorch-metric-learning loss (:func:`build_pml_object`).
        miner: the pytorch-metric-learning miner, or ``None``.
        optimizer: ``"adam"`` (MS-loss code), ``"adamw"`` or ``"sgd"`` (momentum 0.9, Nesterov).
        lr: learning rate of the backbone and the projection (3e-5: the MS-loss code with ResNet-50).
        loss_lr: learning rate of the loss's own parameters (proxies, class weights); default
            ``100 * lr`` (Proxy-Anchor's setting).
        weight_decay: weight decay (5e-4 in the MS-loss code) of the backbone and the projection.
        loss_weight_decay: weight decay of the loss's parameters.
        lr_milestones: multiply the learning rates by ``lr_gamma`` at these epochs (or steps, see
            ``lr_interval``); empty: constant.
        lr_gamma: the factor.
        lr_interval: ``"epoch"`` or ``"step"`` (the MS-loss code decays at iterations 1200 and 2400).
        recall_ks: the K of the logged Recall@K.
        knn: the evaluation's neighbour search: ``"auto"`` (faiss if installed), ``"faiss"``, ``"torch"``.
        rerank: also log ``recall@K_rerank`` and ``map@r_rerank``, ranked by k-reciprocal re-ranked
            distances (Zhong et al. 2017, :func:`cama.metrics.rerank.re_ranking`).
        channels_last: run the backbone in the channels-last memory format (faster on CPU).
        transformer: a timm transformer's options (:class:`cama.backbones.TransformerOptions`).
        init_from: a checkpoint whose matching weights initialise a fresh run (fine-tuning).
        init_from_min_match: the least fraction of the model's values ``init_from`` must match (0: any).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        backbone: str = "resnet50",
        pretrained: str | None = None,
        last_stride: int = 2,
        width: int = 64,
        pooling: Literal["avg", "max", "gem"] = "avg",
        gem_p: float = 3.0,
        embedding_size: int | None = 512,
        projection_bias: bool = False,
        normalize: bool = True,
        frozen_bn: bool = False,
        loss: str | dict[str, Any] = "MultiSimilarityLoss",
        miner: str | dict[str, Any] | None = "MultiSimilarityMiner",
        optimizer: Literal["adam", "adamw", "sgd"] = "adam",
        lr: float = 3e-5,
        loss_lr: float | None = None,
        weight_decay: float = 5e-4,
        loss_weight_decay: float = 0.0,
        lr_milestones: Sequence[int] = (),
        lr_gamma: float = 0.1,
        lr_interval: Literal["epoch", "step"] = "epoch",
        recall_ks: Sequence[int] = RECALL_KS,
        knn: Literal["auto", "faiss", "torch"] = "auto",
        rerank: bool = False,
        channels_last: bool = False,
        transformer: TransformerOptions | None = None,
        init_from: str | None = None,
        init_from_min_match: float = 0.5,
    ) -> None:
        super().__init__()
        check_backbone_name(backbone)
        if pooling not in ("avg", "max", "gem"):
            raise ValueError(f"pooling must be 'avg', 'max' or 'gem', got {pooling!r}")
        if optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {optimizer!r}")
        if lr_interval not in ("epoch", "step"):
            raise ValueError(f"lr_interval must be 'epoch' or 'step', got {lr_interval!r}")
        if embedding_size is not None and embedding_size < 0:
            raise ValueError(f"embedding_size must be positive, 0 or None, got {embedding_size}")
        self.save_hyperparameters()
        self.backbone, self.out_channels = build_body(backbone, pretrained, last_stride, width, transformer)
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.gem_p = nn.Parameter(torch.tensor(float(gem_p))) if pooling == "gem" else None
        if embedding_size:
            self.projection: nn.Linear | None = nn.Linear(
                self.out_channels, int(embedding_size), bias=projection_bias
            )
            nn.init.kaiming_normal_(self.projection.weight, mode="fan_out")
            if self.projection.bias is not None:
                nn.init.zeros_(self.projection.bias)
        else:
            self.projection = None
        self.embedding_dim = int(embedding_size) if embedding_size else self.out_channels
        automatic = {"num_classes": num_classes, "embedding_size": self.embedding_dim}
        self.loss_fn = build_pml_object(loss, "loss", **automatic)
        self.miner = build_pml_object(miner, "miner", **automatic) if miner else None
        self.val_metric = RetrievalMetric(recall_ks, knn, rerank=rerank)
        self.test_metric = RetrievalMetric(recall_ks, knn, rerank=rerank)
        self.evaluation = EpochEvaluation(self.val_metric.result_names, headline=("recall@1", "map@r"))

    # ------------------------------------------------------------------ the model protocol (cama.protocols)
    def feature_maps(self, images: Tensor) -> list[Tensor]:
        """The backbone's ``layer4`` maps ``[B, K, h, w]`` (one branch), pooled into the embedding."""
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return [self.backbone(images)]

    def pooled(self, maps: list[Tensor]) -> Tensor:
        """The pooled feature ``g`` ``[B, K]``."""
        return pool_maps(maps[0], self.hparams.pooling, self.gem_p if self.gem_p is not None else 3.0)

    def embed_maps(self, maps: list[Tensor]) -> Tensor:
        """The embedding that ranks, ``[B, D]``: ``normalize(W pool(Q))`` (or ``normalize(pool(Q))``)."""
        x = self.pooled(maps)
        if self.projection is not None:
            x = self.projection(x)
        return F.normalize(x, dim=1) if self.hparams.normalize else x

    def forward(self, images: Tensor) -> Tensor:
        return self.embed_maps(self.feature_maps(images))

    def embedding_projection(self) -> Tensor | None:
        """The FC projection weight ``W`` ``[D, K]`` (``e = W g``) for FAM's Eq. 16-18, or ``None``."""
        return None if self.projection is None else self.projection.weight.detach()

    def explanation_layers(self) -> list[list[str]]:
        """The gradient maps' default layer (:class:`cama.protocols.HasBranchLayers`): the backbone's last
        convolution, or a transformer's norm in front of its last attention."""
        return body_layers(self.backbone)

    def token_grid(self, size: tuple[int, int]) -> TokenGrid | None:
        """A transformer's tokens -> maps (:class:`cama.protocols.HasTokenLayers`); None for a CNN."""
        return body_token_grid(self.backbone, size)

    def randomization_blocks(self) -> list[tuple[str, nn.Module]]:
        """``projection`` (when there is one), then the backbone's ``conv5`` .. ``conv1``: the cascading
        randomization's blocks, top first (:class:`cama.protocols.HasRandomizationBlocks`). A learned
        GeM exponent is pooling, not a layer, and stays as trained."""
        head = [("projection", self.projection)] if self.projection is not None else []
        return [*head, *self.backbone.stages_top_down()]

    # ------------------------------------------------------------------ the task (cama.protocols.RankingTask)
    def evaluation_embeddings(self) -> EmbeddingSet:
        """This validation epoch's embeddings (a collective when distributed)."""
        return self.val_metric.embedding_set()

    def reference_provider(self, dataset: Any) -> RetrievalReferences:
        """Every image is a probe; its reference is its nearest other image."""
        return RetrievalReferences.from_dataset(dataset)

    # ------------------------------------------------------------------ training
    def train(self, mode: bool = True) -> "RetrievalModel":
        super().train(mode)
        if mode and self.hparams.frozen_bn:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def setup(self, stage: str) -> None:
        init_from_checkpoint(self, stage)

    def compute_losses(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """The pml loss of a batch (with the miner's tuples when there is a miner) and the mined count."""
        embeddings = self(images)
        indices_tuple = self.miner(embeddings, labels) if self.miner is not None else None
        loss = self.loss_fn(embeddings, labels, indices_tuple)
        out = {"loss": loss}
        if self.miner is not None:
            out["mined"] = torch.tensor(float(_mined_count(indices_tuple)), device=loss.device)
        return out

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        losses = self.compute_losses(batch["image"], batch["label"])
        self.log("train/loss", losses["loss"], prog_bar=True)
        if "mined" in losses:
            self.log("train/mined_tuples", losses["mined"])
        if self.gem_p is not None:
            self.log("train/gem_p", self.gem_p.detach())
        return losses  # the total ("loss") and its terms (callbacks.non_finite names them)

    # ------------------------------------------------------------------ evaluation
    def _log_metric(self, metric: RetrievalMetric, prefix: str) -> None:
        results = self.evaluation.finish(self, metric, prefix)  # None in the sanity check
        # compute() already gathered every process's samples: the values are the same on each rank.
        for name, value in (results or {}).items():
            self.log(self.evaluation.tag(prefix, name), value, prog_bar=name in self.evaluation.headline,
                     sync_dist=False)

    def headline_metrics(self) -> list[str]:
        """The logged names of the validation headline metrics (:class:`cama.protocols.HasHeadlineMetrics`)."""
        return self.evaluation.headline_tags()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> EvaluationOutputs:
        maps = self.feature_maps(batch["image"])
        self.val_metric.update(self.embed_maps(maps), batch["label"], batch["index"])
        return {"feature_maps": [m.detach() for m in maps]}

    def on_validation_epoch_end(self) -> None:
        self._log_metric(self.val_metric, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.test_metric.update(self(batch["image"]), batch["label"], batch["index"])

    def on_test_epoch_end(self) -> None:
        self._log_metric(self.test_metric, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return {"embedding": self(batch["image"]), **{k: batch[k] for k in ("label", "index") if k in batch}}

    # ------------------------------------------------------------------ optimisation
    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups: ``backbone``, ``head`` (projection, GeM exponent) and, when the loss has
        parameters (proxies, class weights), ``loss`` with ``loss_lr`` and ``loss_weight_decay``."""
        hp = self.hparams
        head = [p for m in (self.projection,) if m is not None for p in m.parameters()]
        if self.gem_p is not None:
            head.append(self.gem_p)
        groups = [{"params": list(self.backbone.parameters()), "name": "backbone"}]
        if head:
            groups.append({"params": head, "name": "head"})
        loss_params = list(self.loss_fn.parameters())
        if self.miner is not None:
            loss_params += list(self.miner.parameters())
        if loss_params:
            groups.append({
                "params": loss_params,
                "name": "loss",
                "lr": hp.loss_lr if hp.loss_lr is not None else 100.0 * hp.lr,
                "weight_decay": hp.loss_weight_decay,
            })
        return groups

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups = self.param_groups()
        if hp.optimizer == "adam":
            optimizer = torch.optim.Adam(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.SGD(
                groups, lr=hp.lr, momentum=0.9, nesterov=True, weight_decay=hp.weight_decay
            )
        if not hp.lr_milestones:
            return optimizer
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(hp.lr_milestones), gamma=hp.lr_gamma
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": hp.lr_interval}}
