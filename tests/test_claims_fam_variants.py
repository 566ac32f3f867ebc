"""The FAM claims bench's measures beyond the papers' tables (bench/claims_fam_variants.py) and its
descriptive rows (``holds`` ``n/a``, bench/claims_common.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import pytest
import torch

from claims_common import row  # noqa: E402
from claims_fam_variants import EPSILONS, dist_cam_raw, eps_sweep, signed_feature_maps  # noqa: E402
from cama.explain import dist_cam  # noqa: E402
from cama.models.retrieval import RetrievalModel  # noqa: E402


def test_a_descriptive_row_says_n_a() -> None:
    assert row("3", "claim", "paper", "ours", "n/a")["holds"] == "n/a"
    with pytest.raises(ValueError):
        row("3", "claim", "paper", "ours", "maybe")


def test_signed_maps_are_the_last_blocks_maps_before_its_relu() -> None:
    torch.manual_seed(0)
    model = RetrievalModel(backbone="resnet10", width=8, last_stride=1, embedding_size=16,
                           pretrained=None).eval()
    images = torch.randn(3, 3, 32, 32)
    maps, signed = signed_feature_maps(model, images)
    with torch.no_grad():
        assert torch.allclose(maps, model.feature_maps(images)[0])
    assert torch.equal(signed.relu(), maps)
    assert (signed < 0).any()  # signed: not the post-ReLU maps again


def test_dist_cam_variants_and_the_eps_sweep() -> None:
    torch.manual_seed(0)
    maps, reference = torch.rand(4, 8, 5, 5), torch.rand(4, 8)
    assert torch.allclose(dist_cam_raw("dist_cam_smoothed", maps, reference),
                          dist_cam(maps, reference, smoothing="mean"))
    assert torch.allclose(dist_cam_raw("dist_cam", maps, reference, eps=1e-2),
                          dist_cam(maps, reference, eps=1e-2))
    with pytest.raises(ValueError):
        dist_cam_raw("fam", maps, reference)
    boxes = torch.tensor([[2.0, 2.0, 12.0, 12.0]]).expand(4, 4)
    out = eps_sweep(maps, reference, boxes, (20, 20))
    assert list(out) == [f"{e:g}" for e in EPSILONS] + ["smoothed"]
    assert out["1e-06"]["change"] == 0.0
    assert all(0.0 <= v["energy"] <= 1.0 and 1.0 <= v["channels"] <= 8.0 for v in out.values())
