"""Conv4, the four-block backbone of Matching / Prototypical Networks (Vinyals et al.; Snell et al.).

Each block is ``conv3x3 (64 channels) -> BatchNorm -> ReLU -> 2x2 max-pool``; an 84x84 image gives
``[64, 5, 5]`` feature maps (84 -> 42 -> 21 -> 10 -> 5), a 28x28 Omniglot character ``[64, 1, 1]``.
The FAM paper (Sec. V-B) uses LeakyReLU (slope 0.1) in all its few-shot backbones: ``activation``.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

__all__ = ["Conv4", "make_activation"]


def make_activation(name: str, negative_slope: float = 0.1) -> nn.Module:
    """``"relu"`` or ``"leaky_relu"`` (with ``negative_slope``) as an in-place module."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope, inplace=True)
    raise ValueError(f"activation must be 'relu' or 'leaky_relu', got {name!r}")


class Conv4(nn.Module):
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
        super().__init__()
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
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = out_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages_top_down(self) -> list[tuple[str, nn.Module]]:
        """``block<n>`` .. ``block1``: the blocks of the cascading randomization (Adebayo et al. 2018,
        :mod:`cama.explain.sanity`), top first."""
        return [(f"block{i + 1}", block) for i, block in enumerate(self.blocks)][::-1]

    def forward(self, images: Tensor) -> Tensor:
        return self.blocks(images)
