"""The tiny network and inputs of the CAM-family tests (``test_cam_family.py``: the formulas,
``test_cam_family_wiring.py``: safety and wiring), written once as plain builders; this folder's
``conftest.py`` makes them the tests' fixtures ``net``, ``images`` and ``reference``."""

from __future__ import annotations

import torch
from torch import nn

SIZE = (8, 8)
NEW = ("hirescam", "xgradcam", "scorecam", "ablationcam", "eigencam")
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
CLASSES = [0, 2, 1]  # the target class of each of the three images


class Tiny(nn.Module):
    """conv -> batch norm -> ReLU -> strided conv -> ReLU -> GAP -> linear (4 outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1, stride=2)  # 4 x 4 maps: upsampled to 8 x 8
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu2(self.conv2(self.relu1(self.bn1(self.conv1(x))))).mean(dim=(2, 3)))


def tiny() -> Tiny:
    """A seeded float64 :class:`Tiny` in eval mode, its batch norm's statistics and biases moved off
    their defaults."""
    torch.manual_seed(0)
    net = Tiny().double()
    with torch.no_grad():
        net.bn1.running_mean.normal_(0.0, 0.2)
        net.bn1.running_var.uniform_(0.5, 2.0)
        net.conv2.bias.add_(0.2)  # most channels of relu2 alive
    return net.eval()


def tiny_images() -> torch.Tensor:
    """Three seeded float64 images ``[3, 3, *SIZE]``."""
    return torch.randn(3, 3, *SIZE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def tiny_reference() -> torch.Tensor:
    """A seeded float64 reference embedding ``[3, 4]`` per image."""
    return torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
