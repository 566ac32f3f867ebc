"""ResNet-12, the usual few-shot backbone (TADAM, MetaOptNet, FEAT; dist-cam Sec. 4.1, FAM Sec. V-B).

Four residual blocks of 64-160-320-640 channels; each block is three ``conv3x3 -> BN`` layers with
LeakyReLU (slope 0.1) between them, a ``conv1x1 -> BN`` shortcut, LeakyReLU after the sum and a 2x2
max-pool. An 84x84 image gives ``[640, 5, 5]`` feature maps. DropBlock (used by MetaOptNet / FEAT
for the last two blocks) is left out; ``drop_rate`` is plain dropout after each block (0 = off).
"""

from __future__ import annotations

from typing import Literal, Sequence

from torch import Tensor, nn

from .blocks import BlockStack, make_activation

__all__ = ["ResNet12", "ResNet12Block"]


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False)


class ResNet12Block(nn.Module):
    """``x -> [conv-BN-act, conv-BN-act, conv-BN] + shortcut(x) -> act -> max-pool 2 (-> dropout)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        activation: str = "leaky_relu",
        negative_slope: float = 0.1,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(in_channels, out_channels), nn.BatchNorm2d(out_channels)
        self.conv2, self.bn2 = _conv3x3(out_channels, out_channels), nn.BatchNorm2d(out_channels)
        self.conv3, self.bn3 = _conv3x3(out_channels, out_channels), nn.BatchNorm2d(out_channels)
        self.act = make_activation(activation, negative_slope)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = self.act(out + self.shortcut(x))
        return self.dropout(self.pool(out))


class ResNet12(BlockStack):
    """ResNet-12: ``[B, 3, H, W] -> [B, channels[-1], H/16, W/16]``.

    Args:
        channels: output channels of the four blocks (64-160-320-640 as in TADAM / MetaOptNet / FEAT).
        in_channels: input channels.
        activation: ``"leaky_relu"`` (slope ``negative_slope``, the usual choice) or ``"relu"``.
        negative_slope: slope of the LeakyReLU.
        drop_rate: dropout after each block (0 disables it).
    """

    def __init__(
        self,
        channels: Sequence[int] = (64, 160, 320, 640),
        in_channels: int = 3,
        activation: Literal["relu", "leaky_relu"] = "leaky_relu",
        negative_slope: float = 0.1,
        drop_rate: float = 0.0,
    ) -> None:
        if len(channels) < 1:
            raise ValueError("channels must list at least one block")
        blocks, cin = [], in_channels
        for cout in channels:
            blocks.append(ResNet12Block(cin, int(cout), activation, negative_slope, drop_rate))
            cin = int(cout)
        super().__init__(blocks, cin, "leaky_relu")
