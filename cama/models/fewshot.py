"""The prototypical few-shot learner (Snell et al.; dist-cam Sec. 4.1, Eq. 7; fam Sec. V-B) as a LightningModule.

A backbone (Conv4, ResNet-12 or a torchvision ResNet) gives feature maps ``Q`` ``[B, K, h, w]``; the
embedding is their global average pool ``q = GAP(Q)``. In an N-way K-shot episode the prototype of
class ``c`` is the mean of its support embeddings, ``p_c = (1/K) sum_i s_{c,i}`` (dist-cam Eq. 7),
and a query's logits are

* ``euclidean`` (ProtoNet): ``z_c = -scale * ||q - p_c||^2`` (``scale`` 1 by default), or
* ``cosine``: ``z_c = scale * cos(q, p_c)`` with a learnable ``scale`` (temperature, 10 at start).

Training is episodic (cross-entropy of the queries over the N classes), optionally after
``pretrain_epochs`` of standard classification over the base classes (a linear classifier on
``q``), and optionally with that classification as an auxiliary loss (``classifier_weight``; the
FAM paper's "multi-task learning scheme"). Validation and test run episodes on unseen classes and
log ``{val,test}/acc`` and ``{val,test}/acc_ci95`` (mean over episodes and ``1.96 std / sqrt(E)``,
:class:`~cama.metrics.FewShotAccuracy`, fractions in [0, 1]).

Batches are those of :class:`datamodules.FewShotDataModule`: ``image``, ``label`` (class within the
split), ``index``, ``episode_labels`` (0..N-1) and ``is_query``; the supports are the items with
``is_query`` false, whatever their order.

Explanations (``docs/explanations.md#the-reference-of-each-task``): a query is explained against
its *predicted* class, Dist-CAM against that class's prototype and FAM against its supports.
:meth:`ProtoNet.episode_references` gives, for every query of an episode batch, its maps and that
prototype and those supports; :mod:`cama.references` holds that logic, shared with the explanation
callbacks.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cama.backbones import RESNET_NAMES, Conv4, ResNet12, TokenGrid, TransformerOptions, build_body, is_transformer
from cama.backbones.builders import body_layers, body_token_grid
from cama.explain.precision import work_dtype
from cama.metrics import FewShotAccuracy
from cama.models.checkpoints import init_from_checkpoint
from cama.models.evaluation import EpochEvaluation
from cama.models.heads import OneBranchGAP
from cama.protocols import EvaluationOutputs
from cama.references import EpisodeReferences, class_prototypes, episode_references

__all__ = [
    "FEW_SHOT_BACKBONES",
    "build_fewshot_backbone",
    "class_prototypes",
    "prototype_logits",
    "ProtoNet",
]

FEW_SHOT_BACKBONES = ("conv4", "resnet12", *RESNET_NAMES)  # and timm's vision transformers


def build_fewshot_backbone(
    name: str = "conv4",
    pretrained: str | None = None,
    last_stride: int = 2,
    activation: Literal["relu", "leaky_relu"] | None = None,
    transformer: TransformerOptions | None = None,
) -> tuple[nn.Module, int]:
    """``(backbone, channels)``: a module mapping images ``[B, 3, H, W]`` to maps ``[B, channels, h, w]``.

    Args:
        name: ``"conv4"`` (64 channels, 84x84 -> 5x5), ``"resnet12"`` (640 channels, 84x84 -> 5x5) or a
            torchvision ResNet of :data:`cama.backbones.RESNET_NAMES` (up to ``layer4``, no pooling).
        pretrained: torchvision ResNets only: ``None``, ``"imagenet"`` (torch hub cache, never
            downloaded) or a state-dict file (see :func:`cama.backbones.build_resnet`).
        last_stride: stride of a torchvision ResNet's ``layer4`` (2 as in torchvision; 1 doubles the
            map resolution, 84x84 -> 6x6 instead of 3x3).
        activation: ``"relu"`` or ``"leaky_relu"`` (slope 0.1, FAM Sec. V-B) for Conv4 / ResNet-12;
            default ReLU for Conv4 (ProtoNet), LeakyReLU for ResNet-12.
        transformer: with a timm vision transformer as ``name``: its options
            (:class:`cama.backbones.TransformerOptions`); its patch tokens are the maps.
    """
    if name == "conv4":
        if pretrained:
            raise ValueError("pretrained weights exist only for torchvision ResNets; use init_from for Conv4")
        net = Conv4(activation=activation or "relu")
        return net, net.out_channels
    if name == "resnet12":
        if pretrained:
            raise ValueError("pretrained weights exist only for torchvision ResNets; use init_from for ResNet-12")
        net = ResNet12(activation=activation or "leaky_relu")
        return net, net.out_channels
    if name in RESNET_NAMES or is_transformer(name):
        return build_body(name, pretrained, last_stride, transformer=transformer)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(FEW_SHOT_BACKBONES)}")


def prototype_logits(
    queries: Tensor, prototypes: Tensor, metric: Literal["euclidean", "cosine"] = "euclidean", scale: Tensor | float = 1.0
) -> Tensor:
    """Logits ``[Q, N]`` of queries ``[Q, D]`` against prototypes ``[N, D]``.

    ``euclidean``: ``-scale * ||q - p||^2`` (dist-cam Eq. 7 / ProtoNet); ``cosine``: ``scale * cos(q, p)``.
    Computed in at least float32: half-precision sums of squares (``16-mixed``) overflow at 65504."""
    dtype = work_dtype(torch.promote_types(queries.dtype, prototypes.dtype))
    queries, prototypes = queries.to(dtype), prototypes.to(dtype)
    if metric == "euclidean":
        return -scale * (queries[:, None, :] - prototypes[None, :, :]).square().sum(dim=-1)
    if metric == "cosine":
        return scale * (F.normalize(queries, dim=-1) @ F.normalize(prototypes, dim=-1).T)
    raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")


class ProtoNet(OneBranchGAP, pl.LightningModule):
    """Prototypical network with Dist-CAM / FAM explanations (module docstring).

    Args:
        num_classes: number of base (training) classes, linked from the data module by ``train.py``;
            used by the classifier of the optional standard pre-training / auxiliary loss only.
        backbone: ``"conv4"``, ``"resnet12"`` or a torchvision ResNet name (:func:`build_fewshot_backbone`).
        pretrained: torchvision ResNets: ``None``, ``"imagenet"`` (hub cache only) or a weights file.
        last_stride: stride of a torchvision ResNet's ``layer4``.
        activation: ``"relu"`` / ``"leaky_relu"`` for Conv4 and ResNet-12 (default per backbone).
        metric: ``"euclidean"`` (squared distance, ProtoNet) or ``"cosine"``. On the synthetic classes
            the cosine metric also trains faster and gives Dist-CAM / FAM maps on the object, where the
            Euclidean one lights up the background (``configs/protonet_synthetic.yaml``).
        scale: the logit multiplier (temperature); default 1 for euclidean, 10 for cosine.
        learn_scale: learn the multiplier (default: for cosine only).
        optimizer: ``"adam"`` (ProtoNet) or ``"sgd"`` (momentum 0.9, Nesterov).
        lr: learning rate.
        weight_decay: weight decay.
        lr_step: multiply the learning rate by ``lr_gamma`` every ``lr_step`` epochs (StepLR).
        lr_gamma: the decay factor.
        lr_schedule: ``"step"`` (StepLR with ``lr_step`` / ``lr_gamma``) or ``"cosine"``: a half cosine
            from ``lr`` towards 0 at the end of ``max_epochs`` (for short runs).
        pretrain_epochs: epochs of standard classification over the base classes (the classifier on
            the embedding, cross-entropy on ``batch["label"]`` of every image) before episodic training.
        classifier_weight: weight of that classification as an auxiliary loss during episodic
            training (0: episodic loss only).
        eval_cache: at validation / test time embed each distinct image once per epoch (keyed by
            ``batch["index"]``; the network is in eval mode, so an image's embedding does not depend
            on the episode it is in): 2,000 test episodes then cost a few hundred forward passes.
        channels_last: run the backbone in the channels-last memory format (faster convolutions on CPU).
        transformer: a timm transformer's options (:class:`cama.backbones.TransformerOptions`).
        init_from: a checkpoint whose matching weights initialise a fresh run (fine-tuning).
        init_from_min_match: the least fraction of the model's values ``init_from`` must match (0: any).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "conv4",
        pretrained: str | None = None,
        last_stride: int = 2,
        activation: Literal["relu", "leaky_relu"] | None = None,
        metric: Literal["euclidean", "cosine"] = "euclidean",
        scale: float | None = None,
        learn_scale: bool | None = None,
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_step: int = 20,
        lr_gamma: float = 0.5,
        lr_schedule: str = "step",
        pretrain_epochs: int = 0,
        classifier_weight: float = 0.0,
        eval_cache: bool = True,
        channels_last: bool = False,
        transformer: TransformerOptions | None = None,
        init_from: str | None = None,
        init_from_min_match: float = 0.5,
    ) -> None:
        super().__init__()
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if lr_schedule not in ("step", "cosine"):
            raise ValueError(f"lr_schedule must be 'step' or 'cosine', got {lr_schedule!r}")
        if pretrain_epochs < 0 or classifier_weight < 0:
            raise ValueError("pretrain_epochs and classifier_weight must be >= 0")
        uses_classifier = pretrain_epochs > 0 or classifier_weight > 0
        if uses_classifier and num_classes < 2:
            raise ValueError(f"the base-class classifier needs num_classes >= 2, got {num_classes}")
        self.save_hyperparameters()
        self.backbone, self.out_channels = build_fewshot_backbone(
            backbone, pretrained, last_stride, activation, transformer
        )
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        init_scale = float(scale) if scale is not None else (1.0 if metric == "euclidean" else 10.0)
        learn = learn_scale if learn_scale is not None else metric == "cosine"
        if learn:
            self.scale = nn.Parameter(torch.tensor(init_scale))
        else:
            self.register_buffer("scale", torch.tensor(init_scale), persistent=False)
        self.classifier = nn.Linear(self.out_channels, num_classes) if uses_classifier else None
        self.val_metric = FewShotAccuracy()
        self.test_metric = FewShotAccuracy()
        self.evaluation = EpochEvaluation(self.val_metric.result_names, headline=("acc", "acc_ci95"))
        self._embedding_cache: dict[int, Tensor] = {}

    # ------------------------------------------------------------------ the model protocol (cama.protocols)
    # feature_maps, embed_maps: OneBranchGAP (the backbone's maps, their global average pool)
    def forward(self, images: Tensor) -> Tensor:
        return self.embed_maps(self.feature_maps(images))

    def explanation_layers(self) -> list[list[str]]:
        """The gradient maps' default layer (:class:`cama.protocols.HasBranchLayers`): the backbone's last
        convolution, or a transformer's norm in front of its last attention."""
        return body_layers(self.backbone)

    def token_grid(self, size: tuple[int, int]) -> TokenGrid | None:
        """A transformer's tokens -> maps (:class:`cama.protocols.HasTokenLayers`); None for a CNN."""
        return body_token_grid(self.backbone, size)

    def randomization_blocks(self) -> list[tuple[str, nn.Module]]:
        """The backbone's stages, top first (:class:`cama.protocols.HasRandomizationBlocks`); the
        base-class classifier of the pre-training builds no embedding and is left out."""
        return self.backbone.stages_top_down()

    # ------------------------------------------------------------------ episodes
    def logits(self, queries: Tensor, prototypes: Tensor) -> Tensor:
        """Logits ``[Q, N]`` of query embeddings against prototypes (:func:`prototype_logits`)."""
        return prototype_logits(queries, prototypes, self.hparams.metric, self.scale)

    @staticmethod
    def split_episode(embeddings: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(supports [S, D], support_labels [S], queries [Q, D], query_labels [Q])`` of an episode batch."""
        if "episode_labels" not in batch or "is_query" not in batch:
            raise KeyError(
                "episode batches need 'episode_labels' and 'is_query' (datamodules.EpisodeCollate adds them)"
            )
        labels = batch["episode_labels"].to(embeddings.device)
        is_query = batch["is_query"].to(embeddings.device)
        return embeddings[~is_query], labels[~is_query], embeddings[is_query], labels[is_query]

    def episode_logits(self, embeddings: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(logits [Q, N], query_labels [Q])`` of an episode batch from the embeddings of all its items."""
        supports, support_labels, queries, query_labels = self.split_episode(embeddings, batch)
        prototypes = class_prototypes(supports, support_labels)
        return self.logits(queries, prototypes), query_labels

    # ------------------------------------------------------------------ training
    def setup(self, stage: str) -> None:
        init_from_checkpoint(self, stage)

    @property
    def pretraining(self) -> bool:
        """Whether the current epoch is one of the ``pretrain_epochs`` of standard classification."""
        return self.current_epoch < self.hparams.pretrain_epochs

    def compute_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The episodic loss and accuracy, the classification loss where used, and their total ``loss``."""
        embeddings = self(batch["image"])
        losses: dict[str, Tensor] = {}
        class_loss = None
        if self.classifier is not None:
            class_logits = self.classifier(embeddings)
            class_loss = F.cross_entropy(class_logits, batch["label"])
            losses["class_loss"] = class_loss
            losses["class_accuracy"] = (class_logits.argmax(1) == batch["label"]).float().mean()
        if self.pretraining:
            assert class_loss is not None
            losses["loss"] = class_loss
            return losses
        logits, query_labels = self.episode_logits(embeddings, batch)
        episode_loss = F.cross_entropy(logits, query_labels)
        losses["episode_loss"] = episode_loss
        losses["accuracy"] = (logits.argmax(1) == query_labels).float().mean()
        if class_loss is not None:
            # weight 0 after pre-training still touches the classifier, which keeps DDP's gradient
            # reduction happy (every parameter gets a gradient every step)
            losses["loss"] = episode_loss + self.hparams.classifier_weight * class_loss
        else:
            losses["loss"] = episode_loss
        return losses

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        losses = self.compute_losses(batch)
        self.log("train/loss", losses["loss"], prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, prog_bar=False)
        if isinstance(self.scale, nn.Parameter):
            self.log("train/scale", self.scale.detach())
        return losses  # the total ("loss") and its terms (callbacks.non_finite names them)

    # ------------------------------------------------------------------ evaluation
    def _eval_embeddings(self, batch: dict[str, Tensor]) -> tuple[Tensor, EvaluationOutputs]:
        """Embeddings of an evaluation batch, each distinct ``index`` computed once per epoch, and the
        feature maps of the images it forwarded (:class:`cama.protocols.EvaluationOutputs`)."""
        if not self.hparams.eval_cache or "index" not in batch or self.training:
            maps = self.feature_maps(batch["image"])
            return self.embed_maps(maps), {"feature_maps": [m.detach() for m in maps]}
        keys = batch["index"].tolist()
        cache = self._embedding_cache
        missing = sorted({k for k in keys if k not in cache})
        outputs: EvaluationOutputs = {}
        if missing:
            position = {k: i for i, k in enumerate(keys)}
            rows = torch.tensor([position[k] for k in missing], device=batch["image"].device)
            maps = self.feature_maps(batch["image"][rows])
            for k, e in zip(missing, self.embed_maps(maps)):
                cache[k] = e
            outputs = {"feature_maps": [m.detach() for m in maps], "map_index": batch["index"][rows]}
        return torch.stack([cache[k] for k in keys]), outputs

    def _evaluate_episode(
        self, metric: FewShotAccuracy, batch: dict[str, Tensor], prefix: str
    ) -> EvaluationOutputs:
        embeddings, outputs = self._eval_embeddings(batch)
        logits, query_labels = self.episode_logits(embeddings, batch)
        metric.update(logits.argmax(dim=1), query_labels)
        self.log(f"{prefix}/loss", F.cross_entropy(logits, query_labels), on_step=False, on_epoch=True,
                 batch_size=1, sync_dist=True)
        return outputs

    def _log_metric(self, metric: FewShotAccuracy, prefix: str) -> None:
        results = self.evaluation.finish(self, metric, prefix)
        self._embedding_cache.clear()
        if results is None:  # the sanity check
            return
        # compute() already summed every process's episodes: the values are the same on each rank.
        tag = self.evaluation.tag
        self.log(tag(prefix, "acc"), results["acc"].float(), prog_bar=True, sync_dist=False)
        self.log(tag(prefix, "acc_ci95"), results["acc_ci95"].float(), prog_bar=True, sync_dist=False)
        self.log(tag(prefix, "episodes"), results["episodes"].float(), sync_dist=False)

    def headline_metrics(self) -> list[str]:
        """The logged names of the validation headline metrics (:class:`cama.protocols.HasHeadlineMetrics`)."""
        return self.evaluation.headline_tags()

    def on_validation_epoch_start(self) -> None:
        self._embedding_cache.clear()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> EvaluationOutputs:
        return self._evaluate_episode(self.val_metric, batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metric(self.val_metric, "val")

    def on_test_epoch_start(self) -> None:
        self._embedding_cache.clear()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate_episode(self.test_metric, batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metric(self.test_metric, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return {"embedding": self(batch["image"]), **{k: batch[k] for k in ("label", "index") if k in batch}}

    # ------------------------------------------------------------------ explanations (cama.protocols.EpisodeTask)
    def episode_references(self, batch: dict[str, Tensor], maps: list[Tensor]) -> EpisodeReferences:
        """Every query of an episode batch with the prototype and supports that explain it
        (:func:`cama.references.episode_references`); ``maps`` = ``self.feature_maps(batch["image"])``."""
        return episode_references(
            maps[0], self.embed_maps(maps), batch["episode_labels"], batch["is_query"], self.logits,
            self.hparams.metric,
        )

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        if hp.optimizer == "adam":
            optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=0.9, nesterov=True,
                                        weight_decay=hp.weight_decay)
        if hp.lr_schedule == "cosine":
            scheduler: Any = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.trainer.max_epochs))
        else:
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, hp.lr_step), gamma=hp.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
