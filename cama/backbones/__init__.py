from cama.backbones.resnet import RESNET_NAMES, MultiBranchResNet, PretrainedWeightsNotFound, build_resnet

__all__ = ["RESNET_NAMES", "MultiBranchResNet", "PretrainedWeightsNotFound", "build_resnet"]
