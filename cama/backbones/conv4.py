"""Conv4, the four-block backbone of Matching / Prototypical Networks (Vinyals et al.; Snell et al.).

Each block is ``conv3x3 (64 channels) -> BatchNorm -> ReLU -> 2x2 max-pool``; an 84x84 image gives
``[64, 5, 5]`` feature maps (84 -> 42 -> 21 -> 10 -> 5), a 28x28 Omniglot character ``[64, 1, 1]``.
The FAM paper (Sec. V-B) uses LeakyReLU (slope 0.1) in all its few-shot backbones: ``activation``.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from .blocks import BlockStack, make_activation

__all__ = ["Conv4"]


class Conv4(BlockStack):
    """``num_blocks`` x (conv3x3, BN, activation, max-pool 2): ``[B, 3, H, W] -> [B, out_channels, H/16, W/16]``.

    Args:
        in_channels: input channels (3 for RGB).
        hidden_channels: channels of every block but the last (64 in ProtoNet).
        out_channels: channels of the last block, i.e. of the embedding (64 in ProtoNet).
        num_blocks: number of blocks (4).
        activation: ``"relu"`` (ProtoNet) or ``"leaky_relu"`` (slope ``negative_slope``, FAM Sec. V-B).
        negative_slope: slope of the LeakyReLU.
    """

    def __init__(
        self,
        in_channels: int = 3,
        hidden_channels: int = 64,
        out_channels: int = 64,
        num_blocks: int = 4,
        activation: Literal["relu", "leaky_relu"] = "relu",
        negative_slope: float = 0.1,
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        blocks = []
        for i in range(num_blocks):
            cin = in_channels if i == 0 else hidden_channels
            cout = out_channels if i == num_blocks - 1 else hidden_channels
            blocks.append(nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                make_activation(activation, negative_slope),
                nn.MaxPool2d(2),
            ))
        super().__init__(blocks, out_channels, "relu")
