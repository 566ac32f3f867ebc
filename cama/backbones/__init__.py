from cama.backbones.resnet import (
    RESNET_NAMES,
    MultiBranchResNet,
    PretrainedWeightsNotFound,
    ResNetBody,
    build_resnet,
)

__all__ = ["RESNET_NAMES", "MultiBranchResNet", "PretrainedWeightsNotFound", "ResNetBody", "build_resnet"]
from cama.backbones.conv4 import Conv4
from cama.backbones.resnet12 import ResNet12

__all__ += ["Conv4", "ResNet12"]
