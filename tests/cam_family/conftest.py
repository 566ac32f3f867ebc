"""The CAM-family tests' fixtures (``test_cam_family.py``: the formulas, ``test_cam_family_wiring.py``:
safety and wiring), from the builders of :mod:`tests.cam_family.fixtures`, written once for both."""

from __future__ import annotations

import pytest
import torch

from tests.cam_family.fixtures import Tiny, tiny, tiny_images, tiny_reference


@pytest.fixture(scope="module")
def net() -> Tiny:
    return tiny()


@pytest.fixture
def images() -> torch.Tensor:
    return tiny_images()


@pytest.fixture
def reference() -> torch.Tensor:
    return tiny_reference()
