"""Layerization as ltgrad-cam Eq. 8 writes it, and the map variants beyond the papers (off by default):
Dist-CAM with a smoothing term in Eq. 5's denominator, FAM without Eq. 12's min-max floor.

The expected values are the formulas written out with loops over samples, channels and pixels.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from callbacks.sanity_checks import SanityChecks, sanity_maps
from cama.explain import (
    dist_cam,
    dist_cam_weights,
    fam,
    fam_channel_contributions,
    fam_importance,
    gradient_cam,
    logit_score,
    postprocess,
    sanity_check,
)
from cama.models import CAMA
from cama.viz import METHODS, ModelExplainer, ProbeAgainst, check_methods
from cama.viz.episodes import FEW_SHOT_METHODS, episode_maps

SIZE = (12, 10)


# --------------------------------------------------------------------------------------------------
# layerization, Eq. 8 literally
# --------------------------------------------------------------------------------------------------
class TwoScales(nn.Module):
    """Two hooked convolutions at different resolutions (12x10, then 6x5), a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.head = nn.Linear(5, 3)
        with torch.no_grad():
            self.b.weight.mul_(6.0)  # the two layers' maps on clearly different scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x).relu()).relu().mean(dim=(2, 3)))


def hand_literal_layerization(net: TwoScales, images: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Grad-CAM of each layer (Eq. 2-3 with its ReLU), upsampled, summed, then min-max of the sum."""
    a = net.a(images)
    b = net.b(a.relu())
    logits = net.head(b.relu().mean(dim=(2, 3)))
    score = sum(logits[i, c] for i, c in enumerate(classes))
    grads = torch.autograd.grad(score, [a, b])
    batch = images.shape[0]
    total = torch.zeros(batch, *SIZE, dtype=images.dtype)
    for act, grad in zip((a.detach(), b.detach()), grads):
        for i in range(batch):
            layer = torch.zeros(act.shape[-2:], dtype=images.dtype)
            for k in range(act.shape[1]):
                weight = sum(grad[i, k, y, x] for y in range(act.shape[2]) for x in range(act.shape[3]))
                layer += weight / (act.shape[2] * act.shape[3]) * act[i, k]
            relu = layer.clamp_min(0)[None, None]
            up = F.interpolate(relu, size=SIZE, mode="bilinear", align_corners=False)
            total[i] += up[0, 0]
    out = torch.empty_like(total)
    for i in range(batch):
        low, high = total[i].min(), total[i].max()
        out[i] = (total[i] - low) / (high - low)
    return out


def test_literal_layerization_is_the_normalised_sum_of_the_raw_upsampled_maps() -> None:
    torch.manual_seed(0)
    net = TwoScales().double().eval()
    images = torch.randn(2, 3, *SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    classes = [0, 2]
    expected = hand_literal_layerization(net, images, classes)
    literal = gradient_cam(net, images, logit_score(classes), ["a", "b"], layer_norm="none")
    torch.testing.assert_close(literal, expected, atol=1e-10, rtol=1e-10)
    # the default normalises each layer first: a different map here (the layers' scales differ)
    default = gradient_cam(net, images, logit_score(classes), ["a", "b"])
    assert (default - literal).abs().max() > 0.05
    with pytest.raises(ValueError, match="layer_norm"):
        gradient_cam(net, images, logit_score(classes), ["a", "b"], layer_norm="sum")


# --------------------------------------------------------------------------------------------------
# Dist-CAM with a smoothing term (beyond the paper)
# --------------------------------------------------------------------------------------------------
def naive_smoothed_weights(q: torch.Tensor, r: torch.Tensor, smoothing, eps: float) -> list[list[float]]:
    out = []
    for b in range(q.shape[0]):
        d = [abs(float(r[b, k]) - float(q[b, k])) for k in range(q.shape[1])]
        s = sum(d) / len(d) if smoothing == "mean" else float(smoothing)
        inverse = [1.0 / (dk + s + eps) for dk in d]
        out.append([v / sum(inverse) for v in inverse])
    return out


@pytest.mark.parametrize("smoothing", ["mean", 0.3])
def test_smoothed_dist_cam_matches_the_formula(smoothing) -> None:
    gen = torch.Generator().manual_seed(3)
    maps = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    reference = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    query = maps.mean(dim=(2, 3))
    expected = torch.tensor(naive_smoothed_weights(query, reference, smoothing, 1e-6), dtype=torch.float64)
    torch.testing.assert_close(dist_cam_weights(query, reference, smoothing=smoothing), expected)
    expected_map = torch.zeros(2, 3, 4, dtype=torch.float64)
    for b in range(2):
        for k in range(5):
            expected_map[b] += expected[b, k] * maps[b, k]
    torch.testing.assert_close(dist_cam(maps, reference, smoothing=smoothing), expected_map)
    assert not torch.allclose(dist_cam(maps, reference), expected_map)  # Eq. 5 itself differs


def test_huge_smoothing_tends_to_equal_channel_weights_and_bad_values_raise() -> None:
    gen = torch.Generator().manual_seed(4)
    query, reference = torch.rand(3, 8, generator=gen), torch.rand(3, 8, generator=gen)
    weights = dist_cam_weights(query, reference, smoothing=1e8)
    torch.testing.assert_close(weights, torch.full((3, 8), 1 / 8), atol=1e-7, rtol=0)
    half = dist_cam_weights(query.bfloat16(), reference.bfloat16(), smoothing="mean")
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    for bad in (-1.0, "median"):
        with pytest.raises(ValueError, match="smoothing"):
            dist_cam_weights(query, reference, smoothing=bad)


# --------------------------------------------------------------------------------------------------
# FAM without the min-max floor (beyond the paper)
# --------------------------------------------------------------------------------------------------
def test_unfloored_fam_matches_the_formula_and_gives_a_silent_channel_zero_weight() -> None:
    gen = torch.Generator().manual_seed(5)
    maps = torch.rand(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    maps[:, 1] = 0.0  # a silent channel (post-ReLU maps)
    reference = torch.tensor([[0.5, 0.7, -0.4, 0.9], [-0.2, 0.3, 0.8, 0.6]], dtype=torch.float64)
    q = maps.mean(dim=(2, 3))
    expected_alpha = torch.zeros(2, 4, dtype=torch.float64)
    for b in range(2):
        norm_q = sum(float(v) ** 2 for v in q[b]) ** 0.5
        norm_s = sum(float(v) ** 2 for v in reference[b]) ** 0.5
        c = [float(q[b, k]) * float(reference[b, k]) / (norm_q * norm_s) for k in range(4)]
        top = max(max(ck, 0.0) for ck in c)
        expected_alpha[b] = torch.tensor([max(ck, 0.0) / top for ck in c], dtype=torch.float64)
    contributions = fam_channel_contributions(q, reference)
    torch.testing.assert_close(fam_importance(contributions, "relu"), expected_alpha)
    expected_map = torch.einsum("bk,bkhw->bhw", expected_alpha, maps)
    torch.testing.assert_close(fam(maps, reference, importance="relu"), expected_map)
    # the silent channel: exactly 0 without the floor, above 0 under Eq. 12's min-max (a negative c)
    assert (fam_importance(contributions, "relu")[:, 1] == 0).all()
    assert (fam_importance(contributions)[:, 1] > 0.1).all()
    with pytest.raises(ValueError, match="euclidean"):
        fam(maps, reference, metric="euclidean", importance="relu")
    with pytest.raises(ValueError, match="importance"):
        fam_importance(contributions, "floor")


# --------------------------------------------------------------------------------------------------
# selectable by name: the explainer, the few-shot maps, the sanity check
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cama() -> CAMA:
    torch.manual_seed(0)
    return CAMA(num_classes=3, backbone="resnet10", num_branches=2, width=4).eval()


def test_variants_are_named_methods_of_the_explainer(cama) -> None:
    assert {"dist_cam_smoothed", "fam_unfloored"} <= set(METHODS) & set(FEW_SHOT_METHODS)
    assert check_methods(["Dist-CAM-smoothed", "fam_unfloored"]) == ("dist_cam_smoothed", "fam_unfloored")
    images = torch.randn(4, 3, 32, 16, generator=torch.Generator().manual_seed(6))
    explainer = ModelExplainer(cama, map_options={"dist_cam": {"eps": 0.5}})
    features = explainer.features(images)
    probes, reference = features.select([0, 1]), features.embedding[2:]
    scaled = probes.scaled_maps()
    targets = [reference[:, a:b] for a, b in probes.slices]
    cases = {
        "dist_cam_smoothed": [dist_cam(m, t, smoothing="mean") for m, t in zip(scaled, targets)],
        "fam_unfloored": [fam(m, t, importance="relu") for m, t in zip(scaled, targets)],
        "dist_cam": [dist_cam(m, t, eps=0.5) for m, t in zip(scaled, targets)],  # map_options reach Eq. 5
    }
    for method, expected in cases.items():
        raw = explainer.raw_maps(method, probes, ProbeAgainst(reference))
        torch.testing.assert_close(raw, torch.stack(expected, dim=1))
    assert not torch.allclose(ModelExplainer(cama).raw_maps("dist_cam", probes, reference), raw)
    with pytest.raises(ValueError, match="map_options"):
        ModelExplainer(cama, map_options={"gradcam": {"eps": 1.0}})
    # the layerization option reaches the gradient maps
    literal = ModelExplainer(cama, layer_norm="none").explain("gradcam", probes, reference, branches=False)
    assert literal.shape == (2, 1, 32, 16)
    with pytest.raises(ValueError, match="layer_norm"):
        ModelExplainer(cama, layer_norm="sum")
    # few-shot: FAM against the supports with the model's metric, here without the floor
    prototype = targets[0]  # the first branch's maps against its slice of the reference
    supports = prototype[:, None]
    maps = episode_maps("fam_unfloored", explainer, probes.images, probes.maps[0], prototype, supports,
                        "cosine", (32, 16))
    expected = fam(probes.maps[0], supports, metric="cosine", importance="relu")
    torch.testing.assert_close(maps, postprocess(expected[:, None], (32, 16))[:, 0])


def test_variants_have_their_sanity_check(cama) -> None:
    images = torch.randn(3, 3, 32, 16, generator=torch.Generator().manual_seed(7))
    methods = ("dist_cam_smoothed", "fam_unfloored")
    maps = sanity_maps(cama, images, images.flip(0), methods, layer_norm="none")
    assert {k: tuple(v.shape) for k, v in maps.items()} == dict.fromkeys(methods, (3, 32, 16))
    names, blocks = zip(*cama.randomization_blocks())
    result = sanity_check(lambda model, x: sanity_maps(model, x, images.flip(0), methods), cama,
                          list(blocks), list(names), images)
    for method in methods:
        assert len(result.spearman[method]) == len(names)
        assert result.spearman[method][-1] < 1.0  # the randomized model's maps differ
    assert SanityChecks(methods=methods, layer_norm="none").layer_norm == "none"
    with pytest.raises(ValueError, match="layer_norm"):
        SanityChecks(layer_norm="sum")
