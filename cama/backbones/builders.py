"""Backbones chosen by name: a torchvision ResNet, or one of timm's vision transformers."""

from __future__ import annotations

from torch import nn

from cama.backbones.resnet import RESNET_NAMES, MultiBranchResNet, ResNetBody, build_resnet
from cama.backbones.vit import MultiBranchViT, TokenGrid, TransformerOptions, ViTBody, is_transformer

__all__ = ["build_branches", "build_body", "last_conv_layer", "check_backbone_name", "body_layers",
           "body_token_grid"]


def check_backbone_name(name: str, extra: tuple[str, ...] = ()) -> None:
    """``ValueError`` unless ``name`` is one of ``extra``, a ResNet of :data:`RESNET_NAMES` or a timm ViT."""
    if name in extra or name in RESNET_NAMES or is_transformer(name):
        return
    choices = ", ".join((*extra, *RESNET_NAMES))
    raise ValueError(
        f"unknown backbone {name!r}; choose one of {choices}, or a timm vision transformer "
        f"(e.g. vit_small_patch16_224, deit_tiny_patch16_224)"
    )


def _check_resnet_only(name: str, width: int, transformer: TransformerOptions | None) -> None:
    if name in RESNET_NAMES and transformer is not None:
        raise ValueError(f"`transformer` options apply to timm transformers, not to {name}")
    if name not in RESNET_NAMES and width != 64:
        raise ValueError(f"`width` applies to the ResNets only, not to {name} (use `transformer: embed_dim`)")


def build_branches(
    name: str,
    num_branches: int,
    pretrained: str | None = None,
    last_stride: int = 1,
    width: int = 64,
    transformer: TransformerOptions | None = None,
) -> MultiBranchResNet | MultiBranchViT:
    """CAMA's backbone: shared layers and ``num_branches`` copies of the last ones; ``forward`` returns
    one ``[B, K, h, w]`` map per branch, ``layer_names()`` each branch's gradient layers."""
    check_backbone_name(name)
    _check_resnet_only(name, width, transformer)
    if name in RESNET_NAMES:
        return MultiBranchResNet(name, num_branches, pretrained, last_stride, width)
    return MultiBranchViT(name, num_branches, pretrained, transformer)


def build_body(
    name: str,
    pretrained: str | None = None,
    last_stride: int = 2,
    width: int = 64,
    transformer: TransformerOptions | None = None,
) -> tuple[nn.Module, int]:
    """``(body, channels)``: a one-branch backbone mapping images to ``[B, channels, h, w]``."""
    check_backbone_name(name)
    _check_resnet_only(name, width, transformer)
    if name in RESNET_NAMES:
        net = build_resnet(name, pretrained, last_stride, width)
        return ResNetBody(net), net.fc.in_features
    body = ViTBody(name, pretrained, transformer)
    return body, body.out_channels


def last_conv_layer(module: nn.Module) -> str:
    """The name of ``module``'s last ``Conv2d`` (the default layer of a CNN's gradient maps)."""
    convolutions = [name for name, child in module.named_modules() if isinstance(child, nn.Conv2d)]
    if not convolutions:
        raise ValueError("the model has no Conv2d layer: give the gradient methods their layers")
    return convolutions[-1]


def body_layers(body: nn.Module, prefix: str = "backbone") -> list[list[str]]:
    """The gradient maps' default layer of a one-branch model whose backbone is ``body`` (at ``prefix``):
    a CNN's last convolution, or a transformer's LayerNorm in front of its last attention."""
    names = body.layer_names()[0] if isinstance(body, ViTBody) else [last_conv_layer(body)]
    return [[f"{prefix}.{name}" for name in names]]


def body_token_grid(body: nn.Module, size: tuple[int, int]) -> TokenGrid | None:
    """A transformer body's tokens -> maps for images of ``size`` (the ``reshape`` of the gradient
    maps); None for a CNN, whose layers output maps."""
    return body.token_grid(size) if isinstance(body, ViTBody) else None
