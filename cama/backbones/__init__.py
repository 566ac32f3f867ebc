"""Backbones: torchvision ResNets (one body, or CAMA's branches), Conv4 / ResNet-12 for few-shot, and
timm's vision transformers (:mod:`cama.backbones.vit`, the patch tokens as feature maps).

:func:`build_branches` and :func:`build_body` choose by name: a ResNet of :data:`RESNET_NAMES`, else a
timm vision transformer (``vit_small_patch16_224``, ``deit_tiny_patch16_224``, ...).
"""

from cama.backbones.resnet import (
    RESNET_NAMES,
    MultiBranchResNet,
    PretrainedWeightsNotFound,
    ResNetBody,
    build_resnet,
)
from cama.backbones.conv4 import Conv4
from cama.backbones.resnet12 import ResNet12
from cama.backbones.vit import MultiBranchViT, TokenGrid, TransformerOptions, ViTBody, is_transformer
from cama.backbones.builders import build_body, build_branches, last_conv_layer

__all__ = [
    "RESNET_NAMES", "MultiBranchResNet", "PretrainedWeightsNotFound", "ResNetBody", "build_resnet",
    "Conv4", "ResNet12", "MultiBranchViT", "TokenGrid", "TransformerOptions", "ViTBody", "is_transformer",
    "build_body", "build_branches", "last_conv_layer",
]
