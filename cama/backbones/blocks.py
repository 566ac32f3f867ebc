"""What the few-shot backbones share: their activation, and a chain of blocks with its
initialisation and the stages the sanity checks randomize.

>>> import torch
>>> from torch import nn
>>> stack = BlockStack([nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)], out_channels=4)
>>> stack(torch.zeros(2, 3, 5, 5)).shape, [name for name, _ in stack.stages_top_down()]
(torch.Size([2, 4, 5, 5]), ['block2', 'block1'])
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["make_activation", "BlockStack"]


def make_activation(name: str, negative_slope: float = 0.1) -> nn.Module:
    """``"relu"`` or ``"leaky_relu"`` (with ``negative_slope``) as an in-place module."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope, inplace=True)
    raise ValueError(f"activation must be 'relu' or 'leaky_relu', got {name!r}")


class BlockStack(nn.Module):
    """A backbone that is a chain of ``blocks``: ``[B, C, H, W] -> [B, out_channels, h, w]``.

    Its convolutions are Kaiming-normal initialised (fan-out, for ``nonlinearity``), its batch norms
    at weight 1 and bias 0; :meth:`stages_top_down` names the blocks for the cascading randomization
    (Adebayo et al. 2018, :mod:`cama.explain.sanity`).
    """

    def __init__(self, blocks: Sequence[nn.Module], out_channels: int, nonlinearity: str = "relu") -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = out_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=nonlinearity)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages_top_down(self) -> list[tuple[str, nn.Module]]:
        """``block<n>`` .. ``block1``: the blocks of the cascading randomization, top first."""
        return [(f"block{i + 1}", block) for i, block in enumerate(self.blocks)][::-1]

    def forward(self, images: Tensor) -> Tensor:
        return self.blocks(images)
