"""ResNet backbones with the last stride set to 1 and conv5 copied per branch (cama-ram Sec. 4.2).

The CAMA network shares ``conv1``-``conv4`` (torchvision's ``conv1 .. layer3``) between its branches
and gives every branch its own copy of ``conv5`` (``layer4``). Following PCB, the spatial
down-sampling of ``conv5`` is removed, so a 256x128 image gives 16x8 feature maps.

Weights never download here: ``pretrained`` is ``None`` (random init), ``"imagenet"`` (torchvision's
ImageNet weights, read from the torch hub cache only) or a path to a state dict / checkpoint file.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from cama.errors import InputError

__all__ = ["RESNET_NAMES", "build_resnet", "MultiBranchResNet", "PretrainedWeightsNotFound", "ResNetBody"]


class PretrainedWeightsNotFound(InputError, FileNotFoundError):
    """Raised when ImageNet weights are asked for but are not on disk (nothing downloads here);
    ``train.py`` prints its message last and exits with status 2."""


def _resnet10(**kwargs) -> tv_resnet.ResNet:
    """A ResNet with one BasicBlock per stage: ResNet-18's layout at half the depth, for fast CPU runs."""
    return tv_resnet.ResNet(tv_resnet.BasicBlock, [1, 1, 1, 1], **kwargs)


# (block, blocks per stage) of each name, for the narrower nets of ``build_resnet(width=...)``.
_LAYOUTS = {
    "resnet10": (tv_resnet.BasicBlock, (1, 1, 1, 1)),
    "resnet18": (tv_resnet.BasicBlock, (2, 2, 2, 2)),
    "resnet34": (tv_resnet.BasicBlock, (3, 4, 6, 3)),
    "resnet50": (tv_resnet.Bottleneck, (3, 4, 6, 3)),
    "resnet101": (tv_resnet.Bottleneck, (3, 4, 23, 3)),
}

_BUILDERS = {
    "resnet10": (_resnet10, None),
    "resnet18": (tv_resnet.resnet18, tv_resnet.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tv_resnet.resnet34, tv_resnet.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (tv_resnet.resnet50, tv_resnet.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (tv_resnet.resnet101, tv_resnet.ResNet101_Weights.IMAGENET1K_V1),
}
RESNET_NAMES = tuple(_BUILDERS)


def _stage(block: type[nn.Module], inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """One ResNet stage of ``blocks`` blocks (the first one strided, with a 1x1 projection)."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(out, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _narrow(net: tv_resnet.ResNet, name: str, width: int) -> tv_resnet.ResNet:
    """``net`` rebuilt with ``width`` channels after the stem instead of 64 (stages: w, 2w, 4w, 8w).

    Same modules, names and initialisation as torchvision's ResNet (Kaiming normal fan-out for the
    convolutions, BatchNorm at 1/0), so everything that reads ``conv1 .. layer4`` and
    ``fc.in_features`` works unchanged; the FLOPs scale with about ``(width / 64) ** 2``.
    """
    block, blocks = _LAYOUTS[name]
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    inplanes = width
    for i, count in enumerate(blocks):
        planes = width * 2**i
        setattr(net, f"layer{i + 1}", _stage(block, inplanes, planes, count, 1 if i == 0 else 2))
        inplanes = planes * block.expansion
    net.fc = nn.Linear(inplanes, net.fc.out_features)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return net


def _imagenet_state_dict(name: str) -> dict[str, Tensor]:
    weights = _BUILDERS[name][1]
    if weights is None:
        raise ValueError(f"No ImageNet weights exist for {name!r}; use pretrained=None or a file path.")
    filename = os.path.basename(weights.url)
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise PretrainedWeightsNotFound(
            f"ImageNet weights for {name} are not in the torch hub cache: expected {path}. "
            f"Nothing is downloaded by this project. Copy the file from a machine with internet "
            f"(it is downloaded from {weights.url}) to that path, or pass its location with "
            f"`pretrained: /path/to/{filename}`, or train from scratch with `pretrained: null`."
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def _file_state_dict(path: str) -> dict[str, Tensor]:
    if not os.path.isfile(path):
        raise PretrainedWeightsNotFound(
            f"Pretrained weights file not found: {path}. Give a torchvision ResNet state dict "
            f"(e.g. resnet50-0676ba61.pth), use `pretrained: imagenet` to read the torch hub cache, "
            f"or `pretrained: null` to train from scratch."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def build_resnet(
    name: str = "resnet50", pretrained: str | None = None, last_stride: int = 1, width: int = 64
) -> tv_resnet.ResNet:
    """A torchvision ResNet whose ``layer4`` (conv5) has stride ``last_stride``.

    Args:
        name: one of :data:`RESNET_NAMES`.
        pretrained: ``None``, ``"imagenet"`` (hub cache only) or a path to a state dict.
        last_stride: stride of the first block of ``layer4``; 1 as in PCB / CAMA.
        width: channels of the first stage (64 in every torchvision ResNet; the stages have
            ``width * (1, 2, 4, 8)``). A narrower net costs about ``(width / 64) ** 2`` of the
            FLOPs; weights of another width do not load into it.
    """
    if name not in _BUILDERS:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {', '.join(RESNET_NAMES)}.")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    net = _BUILDERS[name][0]()
    if width != 64:
        net = _narrow(net, name, width)
    if pretrained:
        state = _imagenet_state_dict(name) if pretrained == "imagenet" else _file_state_dict(pretrained)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"Weights {pretrained!r} do not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
    block = net.layer4[0]
    strided_conv = block.conv2 if isinstance(block, tv_resnet.Bottleneck) else block.conv1
    strided_conv.stride = (last_stride, last_stride)
    if block.downsample is not None:
        block.downsample[0].stride = (last_stride, last_stride)
    return net


def _stem_stages(conv1: nn.Module, bn1: nn.Module, layers: list[nn.Module]) -> list[tuple[str, nn.Module]]:
    """``conv2`` .. ``conv<n+1>`` (``layer1 ..``) top first, then ``conv1`` with its BatchNorm."""
    stages = [(f"conv{i + 2}", layer) for i, layer in enumerate(layers)][::-1]
    return stages + [("conv1", nn.ModuleList([conv1, bn1]))]


class ResNetBody(nn.Sequential):
    """A torchvision ResNet's ``conv1 .. layer4`` as one ``nn.Sequential`` (no pooling, no ``fc``):
    ``[B, 3, H, W] -> [B, C, h, w]``. Its state dict is that of the plain ``nn.Sequential``
    (``0.weight`` = ``conv1.weight``, ..., ``7.*`` = ``layer4.*``)."""

    def __init__(self, net: tv_resnet.ResNet) -> None:
        super().__init__(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
        )

    def stages_top_down(self) -> list[tuple[str, nn.Module]]:
        """``conv5`` (``layer4``) .. ``conv2`` (``layer1``), ``conv1`` (with ``bn1``): the blocks of
        the cascading randomization (Adebayo et al. 2018, :mod:`cama.explain.sanity`), top first."""
        return _stem_stages(self[0], self[1], [self[4], self[5], self[6], self[7]])


class MultiBranchResNet(nn.Module):
    """Shared ``conv1``-``conv4`` and one ``conv5`` copy per branch (cama-ram Fig. 2, Sec. 4.2).

    ``forward`` returns one ``[B, C, h, w]`` feature map per branch.
    """

    def __init__(
        self,
        name: str = "resnet50",
        num_branches: int = 2,
        pretrained: str | None = None,
        last_stride: int = 1,
        width: int = 64,
    ) -> None:
        super().__init__()
        if num_branches < 1:
            raise ValueError(f"num_branches must be >= 1, got {num_branches}")
        net = build_resnet(name, pretrained, last_stride, width)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
        # Every branch starts from the same (possibly pretrained) conv5 weights.
        self.branches = nn.ModuleList([copy.deepcopy(net.layer4) for _ in range(num_branches)])
        self.out_channels = net.fc.in_features

    def stages_top_down(self) -> list[tuple[str, nn.Module]]:
        """``conv5`` (every branch's copy) .. ``conv2``, ``conv1`` (with its BatchNorm): the blocks of
        the cascading randomization (Adebayo et al. 2018, :mod:`cama.explain.sanity`), top first."""
        stem = self.stem
        return [("conv5", self.branches), *_stem_stages(stem[0], stem[1], [stem[4], stem[5], stem[6]])]

    def layer_names(self) -> list[list[str]]:
        """Each branch's conv5 copy: the default layer of its gradient maps."""
        return [[f"branches.{i}"] for i in range(len(self.branches))]

    def forward(self, images: Tensor) -> list[Tensor]:
        shared = self.stem(images)
        return [branch(shared) for branch in self.branches]
