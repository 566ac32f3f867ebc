"""HiResCAM, XGrad-CAM, Score-CAM, Ablation-CAM and EigenCAM (``gradient_cam(..., method=...)``).

The references run a tiny network piece by piece, without hooks: its activations and gradients
come from ``torch.autograd.grad`` on the pieces, Score-CAM's and Ablation-CAM's scores from one
forward of the model per image and channel (the masked image; the network with the channel set to
0 by hand), EigenCAM's projection from numpy's SVD of one image; the weights and maps are the
papers' formulas written out as loops. Safety and wiring: ``tests/test_cam_family_wiring.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cama.backbones import TokenGrid
from cama.explain import gradient_cam, gradient_cam_layer_map, logit_score, similarity_score
from tests.cam_family.fixtures import CLASSES, MEAN, NEW, SIZE, STD, Tiny
from tests.test_explain_gradient import naive_percentile_truncation


# --------------------------------------------------------------------------------------------------
# the reference computations
# --------------------------------------------------------------------------------------------------
def pieces(net: Tiny, x: torch.Tensor, ablate: tuple[str, int] | None = None) -> dict[str, torch.Tensor]:
    """The network by hand; ``ablate=(name, k)`` sets channel k of that piece's output to 0."""
    out: dict[str, torch.Tensor] = {}

    def keep(name: str, value: torch.Tensor) -> torch.Tensor:
        if ablate is not None and ablate[0] == name:
            value = value.clone()
            value[:, ablate[1]] = 0.0
        out[name] = value
        return value

    h = keep("bn1", net.bn1(net.conv1(x)))
    h = keep("conv2", net.conv2(net.relu1(h)))
    h = keep("relu2", net.relu2(h))
    out["out"] = net.fc(h.mean(dim=(2, 3)))
    return out


def activations_and_gradients(net, images, naive_score, name):
    """A ``[B, K, h, w]`` and dy/dA of each image's own score, one image at a time."""
    acts, grads = [], []
    for b in range(images.shape[0]):
        x = images[b: b + 1].clone().requires_grad_(True)
        tensors = pieces(net, x)
        (grad,) = torch.autograd.grad(score_tensor(tensors["out"], naive_score, b), [tensors[name]])
        acts.append(tensors[name].detach())
        grads.append(grad)
    return torch.cat(acts), torch.cat(grads)


def score_tensor(out: torch.Tensor, naive_score, b: int) -> torch.Tensor:
    """The naive score as a differentiable tensor: the class logit or the cosine, written out."""
    if naive_score.__name__ == "class_score":
        return out[0, CLASSES[b]]
    reference = naive_score.reference[b]
    return (out[0] @ reference) / (out[0].norm() * reference.norm())


def naive_minmax(plane: torch.Tensor) -> torch.Tensor:
    low, high = float(plane.min()), float(plane.max())
    return (plane - low) / (high - low) if high > low else torch.zeros_like(plane)


def upsample(plane: torch.Tensor) -> torch.Tensor:
    return F.interpolate(plane[None, None], size=SIZE, mode="bilinear", align_corners=False)[0, 0]


def naive_postprocess(raw: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """ReLU, bilinear upsampling, per-map min-max, one map at a time."""
    out = torch.stack([upsample(plane.clamp_min(0)) for plane in raw])
    return torch.stack([naive_minmax(plane) for plane in out]) if normalize else out


def weighted_sum(weights: list[list[float]], acts: torch.Tensor) -> torch.Tensor:
    B, K, h, w = acts.shape
    out = torch.zeros(B, h, w, dtype=torch.float64)
    for b in range(B):
        for k in range(K):
            out[b] += weights[b][k] * acts[b, k]
    return out


def naive_gradient_map(acts, grads, method) -> torch.Tensor:
    B, K, h, w = acts.shape
    A, G = acts.tolist(), grads.tolist()
    if method == "hirescam":  # sum_k g^k * A^k, no ReLU on g
        out = torch.zeros(B, h, w, dtype=torch.float64)
        for b in range(B):
            for y in range(h):
                for x in range(w):
                    out[b, y, x] = sum(G[b][k][y][x] * A[b][k][y][x] for k in range(K))
        return out
    weights = []  # XGrad-CAM: w_k = sum_ij A_ij / (sum_ab A_ab) g_ij, 0 where the sum is 0
    for b in range(B):
        row = []
        for k in range(K):
            total = sum(A[b][k][y][x] for y in range(h) for x in range(w))
            row.append(0.0 if total == 0 else sum(
                A[b][k][y][x] / total * G[b][k][y][x] for y in range(h) for x in range(w)))
        weights.append(row)
    return weighted_sum(weights, acts)


def layer_activations(net, images, name) -> torch.Tensor:
    with torch.no_grad():
        return pieces(net, images)[name]


def naive_score_cam(net, images, naive_score, name, mean=None, std=None) -> torch.Tensor:
    """Score-CAM: one forward per image and channel of the image masked by the channel's min-max map."""
    acts = layer_activations(net, images, name)
    weights = []
    for b in range(images.shape[0]):
        scores = []
        for k in range(acts.shape[1]):
            mask = naive_minmax(upsample(acts[b, k]))
            if mean is None:
                masked = images[b] * mask
            else:
                m = torch.tensor(mean, dtype=torch.float64)[:, None, None]
                s = torch.tensor(std, dtype=torch.float64)[:, None, None]
                masked = ((images[b] * s + m) * mask - m) / s
            with torch.no_grad():
                scores.append(naive_score(net(masked[None]), b))
        exps = [math.exp(v - max(scores)) for v in scores]
        weights.append([e / sum(exps) for e in exps])
    return weighted_sum(weights, acts)


def naive_ablation_cam(net, images, naive_score, name) -> torch.Tensor:
    """Ablation-CAM: (y - y_k) / y, y_k from the network with channel k of ``name`` set to 0."""
    acts = layer_activations(net, images, name)
    weights = []
    with torch.no_grad():
        for b in range(images.shape[0]):
            x = images[b: b + 1]
            y = naive_score(pieces(net, x)["out"], b)
            row = []
            for k in range(acts.shape[1]):
                y_k = naive_score(pieces(net, x, ablate=(name, k))["out"], b)
                row.append((y - y_k) / y if y != 0 else y - y_k)
            weights.append(row)
    return weighted_sum(weights, acts)


def naive_eigen_cam(acts: torch.Tensor) -> torch.Tensor:
    """EigenCAM of each image with numpy: O [h w, K] projected on its first right singular vector, the
    sign that correlates positively with the channel sum."""
    B, K, h, w = acts.shape
    out = []
    for b in range(B):
        matrix = acts[b].numpy().reshape(K, h * w).T
        _, _, vt = np.linalg.svd(matrix, full_matrices=False)
        projection = matrix @ vt[0]
        if np.corrcoef(projection, matrix.sum(axis=1))[0, 1] < 0:
            projection = -projection
        out.append(torch.from_numpy(projection.reshape(h, w).copy()))
    return torch.stack(out)


def naive_raw(net, images, target, name, method, reference, truncation=None) -> torch.Tensor:
    naive_score = naive_scores(reference)[target]
    if method in ("hirescam", "xgradcam"):
        acts, grads = activations_and_gradients(net, images, naive_score, name)
        if truncation is not None:
            grads = naive_percentile_truncation(grads, truncation)
        return naive_gradient_map(acts, grads, method)
    if method == "scorecam":
        return naive_score_cam(net, images, naive_score, name)
    if method == "ablationcam":
        return naive_ablation_cam(net, images, naive_score, name)
    return naive_eigen_cam(layer_activations(net, images, name))


def naive_scores(reference: torch.Tensor) -> dict:
    def class_score(out, b):
        return float(out[0, CLASSES[b]])

    def similarity(out, b):
        return float((out[0] @ reference[b]) / (out[0].norm() * reference[b].norm()))

    similarity.reference = reference
    return {"class": class_score, "similarity": similarity}


def score_fn(target: str, reference: torch.Tensor):
    return logit_score(CLASSES) if target == "class" else similarity_score(reference)


# --------------------------------------------------------------------------------------------------
# each method against its formula
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["class", "similarity"])
@pytest.mark.parametrize("method", NEW)
def test_each_method_matches_its_formula_on_one_layer(net, images, reference, method, target) -> None:
    got = gradient_cam(net, images, score_fn(target, reference), ["relu2"], method=method,
                       forward_batch_size=4)
    expected = naive_postprocess(naive_raw(net, images, target, "relu2", method, reference))
    assert got.shape == (3, *SIZE) and float(got.max()) == 1.0
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", NEW)
def test_layerized_over_a_signed_and_a_rectified_layer(net, images, reference, method) -> None:
    """Two layers (the batch norm's signed output, 8 x 8, and relu2, 4 x 4): the normalised sum of the
    normalised layer maps (layer_norm="minmax")."""
    got = gradient_cam(net, images, similarity_score(reference), ["bn1", net.relu2], method=method,
                       forward_batch_size=7)
    total = sum(naive_postprocess(naive_raw(net, images, "similarity", name, method, reference))
                for name in ("bn1", "relu2"))
    torch.testing.assert_close(got, naive_postprocess(total), atol=1e-5, rtol=1e-5)


def test_layer_norm_none_sums_the_raw_layer_maps(net, images, reference) -> None:
    got = gradient_cam(net, images, logit_score(CLASSES), ["bn1", "conv2"], method="scorecam",
                       layer_norm="none")
    raws = [naive_raw(net, images, "class", name, "scorecam", reference) for name in ("bn1", "conv2")]
    total = sum(naive_postprocess(raw, normalize=False) for raw in raws)
    torch.testing.assert_close(got, naive_postprocess(total), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["hirescam", "xgradcam"])
def test_truncation_applies_to_the_new_gradient_methods(net, images, reference, method) -> None:
    got = gradient_cam(net, images, logit_score(CLASSES), ["conv2"], method=method, truncation=40.0)
    raw = naive_raw(net, images, "class", "conv2", method, reference, truncation=40.0)
    torch.testing.assert_close(got, naive_postprocess(raw), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got, gradient_cam(net, images, logit_score(CLASSES), ["conv2"], method=method))


def test_score_cam_masks_the_picture_with_mean_and_std(net, images, reference) -> None:
    got = gradient_cam(net, images, similarity_score(reference), ["relu2"], method="scorecam",
                       mean=MEAN, std=STD)
    raw = naive_score_cam(net, images, naive_scores(reference)["similarity"], "relu2", MEAN, STD)
    torch.testing.assert_close(got, naive_postprocess(raw), atol=1e-5, rtol=1e-5)
    plain = gradient_cam(net, images, similarity_score(reference), ["relu2"], method="scorecam")
    assert not torch.allclose(got, plain)  # the picture, not the network input, is masked


def test_hand_worked_layer_maps_of_hirescam_and_xgradcam() -> None:
    # channel 0: A = [1, 3], g = [-2, 4]; channel 1: A = [1, -1] (sum 0: XGrad-CAM weight 0), g = [5, 3]
    acts = torch.tensor([[[[1.0, 3.0]], [[1.0, -1.0]]]])
    grads = torch.tensor([[[[-2.0, 4.0]], [[5.0, 3.0]]]])
    # HiResCAM: sum_k g * A = [-2 + 5, 12 - 3] = [3, 9] (the negative gradient kept; Layer-CAM: [5, 9])
    assert gradient_cam_layer_map(acts, grads, "hirescam").tolist() == [[[3.0, 9.0]]]
    # XGrad-CAM: w_0 = 1/4 * -2 + 3/4 * 4 = 2.5, w_1 = 0 -> 2.5 * [1, 3] = [2.5, 7.5]
    assert gradient_cam_layer_map(acts, grads, "xgradcam").tolist() == [[[2.5, 7.5]]]


def test_eigen_cam_of_a_rank_one_layer_is_its_spatial_factor_with_the_channel_sums_sign() -> None:
    from cama.explain.gradient_free import eigen_cam_layer_map

    u = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float64)  # the positions' factor
    for v in ([1.0, 2.0, -0.5], [-1.0, -2.0, 0.5]):  # channel sums of both signs
        v = torch.tensor(v, dtype=torch.float64)
        acts = (v[:, None, None] * u)[None]  # A^k = v_k u: rank one
        expected = u * v.norm() * torch.sign(v.sum())  # correlates positively with sum_k A^k = u sum(v)
        torch.testing.assert_close(eigen_cam_layer_map(acts)[0], expected)


def test_ablation_cam_guards_a_zero_score() -> None:
    from cama.explain.gradient_free import ablation_cam_weights

    scores = torch.tensor([2.0, 0.0, -1.0])
    ablated = torch.tensor([[1.0, 3.0], [-1.0, 0.5], [-2.0, 0.0]])
    expected = torch.tensor([[0.5, -0.5], [1.0, -0.5], [-1.0, 1.0]])  # (y - y_k) / y; y - y_k where y = 0
    torch.testing.assert_close(ablation_cam_weights(scores, ablated), expected)


# --------------------------------------------------------------------------------------------------
# batches, token layers
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", NEW)
def test_the_batch_equals_the_images_one_by_one(net, images, reference, method) -> None:
    layers = ["bn1", "relu2"]
    batch = gradient_cam(net, images, similarity_score(reference), layers, method=method,
                         forward_batch_size=3)
    alone = torch.cat([
        gradient_cam(net, images[b: b + 1], similarity_score(reference[b: b + 1]), layers, method=method)
        for b in range(3)
    ])
    torch.testing.assert_close(batch, alone, atol=1e-6, rtol=1e-6)


class Tokens(nn.Module):
    """Patches -> tokens (a class token first) -> ``layer`` -> head; ``zero=k`` sets feature k of the
    layer's patch tokens to 0 (by hand)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3 * 4 * 4, 6)
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.layer = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, images: torch.Tensor, zero: int | None = None) -> torch.Tensor:
        patches = F.unfold(images, kernel_size=4, stride=4).transpose(1, 2)
        out = self.layer(torch.cat([self.cls.expand(len(images), -1, -1), self.embed(patches)], dim=1))
        if zero is not None:
            out = out.clone()
            out[:, 1:, zero] = 0.0
        return self.head(out[:, 1:].mean(1) + out[:, 0])


def test_ablation_cam_of_token_layers_ablates_the_patch_tokens_feature() -> None:
    torch.manual_seed(3)
    model = Tokens().double().eval()
    images = torch.randn(2, 3, 12, 8, dtype=torch.float64)  # a 3 x 2 grid of patches
    grid = TokenGrid(prefix=1, grid=(3, 2))
    got = gradient_cam(model, images, logit_score([1, 2]), [model.layer], method="ablationcam", reshape=grid,
                       forward_batch_size=5)
    with torch.no_grad():
        patches = F.unfold(images, kernel_size=4, stride=4).transpose(1, 2)
        tokens = model.layer(torch.cat([model.cls.expand(2, -1, -1), model.embed(patches)], dim=1))
        acts = grid(tokens)
        weights = []
        for b, c in enumerate([1, 2]):
            y = float(model(images[b: b + 1])[0, c])
            weights.append([(y - float(model(images[b: b + 1], zero=k)[0, c])) / y for k in range(6)])
    expected = F.interpolate(weighted_sum(weights, acts).clamp_min(0)[:, None], size=(12, 8), mode="bilinear",
                             align_corners=False)[:, 0]
    torch.testing.assert_close(got, torch.stack([naive_minmax(p) for p in expected]), atol=1e-6, rtol=1e-6)
