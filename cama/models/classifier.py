"""A plain softmax image classifier (ResNet -> GAP -> FC, cross-entropy): the network CAM was made for.

dist-cam Table 1 compares CAM (dist-cam Eq. 3) with Dist-CAM against class prototypes (Eq. 4-7) on
softmax classifiers, and ltgrad-cam explains a classifier's class score with Grad-CAM, Layer-CAM and
FullGrad (Eq. 2-11); this is that classifier. A torchvision ResNet (from scratch by default, up to
``layer4``) gives feature maps ``Q`` ``[B, K, h, w]``, their global average pool ``q = GAP(Q)`` is
the embedding, and a linear layer ``z = W q`` gives the class logits.

The FC layer has **no bias** by default: CAM's map of class ``c`` is ``sum_k w_{c,k} Q_k`` (the bias
adds a constant to the logit, not to any pixel), and without a bias the class CAM explains is the
logit's argmax, which is how :class:`cama.viz.ModelExplainer` picks it (``GAP(Q) @ W^T``).

Training is plain cross-entropy on labelled images (``batch["image"]``, ``batch["label"]``, e.g.
:class:`datamodules.classification.ClassificationDataModule`), optionally with label smoothing.
Validation and test log ``{val,test}/acc`` (top-1 accuracy; ``Val/acc`` is the headline) and
``{val,test}/loss``.

Explanations (:mod:`cama.protocols`, ``docs/explanations.md#maps-of-a-whole-model``): the model
offers ``feature_maps`` / ``embed_maps`` (one branch), the FC weight as the CAM weights
(``classifier_weights()``, :class:`cama.protocols.HasClassifier`) and ``layer4`` as the gradient
CAMs' default layer (``explanation_layers()``); the backbone's stages are the submodules
``backbone.layer1`` ... ``backbone.layer4`` (:meth:`ImageClassifier.stage_names`), the layers
ltgrad-cam's layerization fuses.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from cama.backbones import RESNET_NAMES, build_resnet
from cama.models.checkpoints import init_from_checkpoint
from cama.models.evaluation import EpochEvaluation
from cama.models.heads import OneBranchGAP

__all__ = ["ImageClassifier"]

_STAGES = ("layer1", "layer2", "layer3", "layer4")


class ImageClassifier(OneBranchGAP, pl.LightningModule):
    """ResNet -> GAP -> FC softmax classifier (module docstring).

    Args:
        num_classes: number of classes (linked from the data module by ``train.py``).
        backbone: a torchvision ResNet of :data:`cama.backbones.RESNET_NAMES` (up to ``layer4``).
        pretrained: ``None``, ``"imagenet"`` (torch hub cache, never downloaded) or a weights file.
        last_stride: stride of ``layer4`` (2 as in torchvision; 1 doubles the resolution of the maps).
        width: channels of the backbone's first stage (64: the torchvision ResNet).
        fc_bias: give the FC layer a bias (see the module docstring: off, so CAM's class is the argmax).
        label_smoothing: of the cross-entropy.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (momentum 0.9, Nesterov).
        lr: learning rate.
        weight_decay: weight decay.
        lr_schedule: ``"cosine"`` (a half cosine to 0 at ``max_epochs``), ``"step"`` (x ``lr_gamma`` at
            each of ``lr_milestones``) or ``"constant"``.
        lr_milestones, lr_gamma: the step schedule.
        channels_last: run the backbone in the channels-last memory format (faster on CPU).
        init_from: a checkpoint whose matching weights initialise a fresh run (fine-tuning).
        init_from_min_match: the least fraction of the model's values ``init_from`` must match (0: any).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet18",
        pretrained: str | None = None,
        last_stride: int = 2,
        width: int = 64,
        fc_bias: bool = False,
        label_smoothing: float = 0.0,
        optimizer: Literal["adam", "adamw", "sgd"] = "adam",
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        lr_schedule: Literal["cosine", "step", "constant"] = "cosine",
        lr_milestones: Sequence[int] = (),
        lr_gamma: float = 0.1,
        channels_last: bool = False,
        init_from: str | None = None,
        init_from_min_match: float = 0.5,
    ) -> None:
        super().__init__()
        if backbone not in RESNET_NAMES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(RESNET_NAMES)}")
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")
        if optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {optimizer!r}")
        if lr_schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine', 'step' or 'constant', got {lr_schedule!r}")
        self.save_hyperparameters()
        net = build_resnet(backbone, pretrained, last_stride, width)
        self.backbone = nn.Sequential(OrderedDict(
            (name, getattr(net, name)) for name in ("conv1", "bn1", "relu", "maxpool", *_STAGES)
        ))
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.out_channels = net.fc.in_features
        self.fc = nn.Linear(self.out_channels, int(num_classes), bias=fc_bias)
        self.val_acc, self.test_acc = MeanMetric(), MeanMetric()
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.evaluation = EpochEvaluation(("acc", "loss"), headline=("acc",))

    # ------------------------------------------------------------------ the model protocol (cama.protocols)
    # feature_maps, embed_maps: OneBranchGAP (the backbone's maps, their global average pool)
    def logits_from_embedding(self, embedding: Tensor) -> Tensor:
        """Class logits ``[B, C]`` of pooled features ``[B, K]``."""
        return self.fc(embedding.to(self.fc.weight.dtype))

    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``[B, C]`` (what :func:`cama.explain.logit_score` explains)."""
        return self.logits_from_embedding(self.embed_maps(self.feature_maps(images)))

    def classifier_weights(self) -> list[Tensor]:
        """The CAM weights ``W`` ``[C, K]`` (one branch; :class:`cama.protocols.HasClassifier`)."""
        return [self.fc.weight]

    def explanation_layers(self) -> list[list[str]]:
        """``layer4``, the default layer of the gradient CAMs (:class:`cama.protocols.HasBranchLayers`)."""
        return [["backbone.layer4"]]

    @staticmethod
    def stage_names() -> list[str]:
        """The submodule names of the backbone's stages, shallow to deep (ltgrad-cam's S1 ... S4)."""
        return [f"backbone.{name}" for name in _STAGES]

    # ------------------------------------------------------------------ training
    def setup(self, stage: str) -> None:
        init_from_checkpoint(self, stage)

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        logits = self(batch["image"])
        loss = self._loss(logits, batch["label"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", (logits.argmax(1) == batch["label"]).float().mean())
        return {"loss": loss}

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: dict[str, Tensor], acc: MeanMetric, loss: MeanMetric) -> None:
        logits = self(batch["image"])
        acc.update((logits.argmax(1) == batch["label"]).float())
        loss.update(F.cross_entropy(logits.float(), batch["label"], reduction="none"))

    def _log_epoch(self, stage: str, acc: MeanMetric, loss: MeanMetric) -> None:
        if self.trainer.sanity_checking:
            acc.reset()
            loss.reset()
            return
        for name, metric in (("acc", acc), ("loss", loss)):
            # MeanMetric syncs every process's sums in compute(): the value is the same on each rank
            self.log(self.evaluation.tag(stage, name), metric.compute(), prog_bar=name == "acc",
                     sync_dist=False)
            metric.reset()

    def headline_metrics(self) -> list[str]:
        """The logged names of the validation headline metrics (``HasHeadlineMetrics``)."""
        return self.evaluation.headline_tags()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_acc, self.val_loss)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_acc, self.val_loss)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_acc, self.test_loss)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_acc, self.test_loss)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        embedding = self.embed_maps(self.feature_maps(batch["image"]))
        out = {"embedding": embedding, "logits": self.logits_from_embedding(embedding)}
        return {**out, **{k: batch[k] for k in ("label", "index") if k in batch}}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        if hp.optimizer == "adam":
            optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=0.9, nesterov=True,
                                        weight_decay=hp.weight_decay)
        if hp.lr_schedule == "constant":
            return optimizer
        if hp.lr_schedule == "cosine":
            scheduler: Any = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=max(1, self.trainer.max_epochs))
        else:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(hp.lr_milestones),
                                                             gamma=hp.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
