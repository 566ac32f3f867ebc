"""gradient_cam (Grad-CAM, Grad-CAM++, Layer-CAM, FullGrad, layerization, truncation) and its safety.

The references compute the activations and gradients without hooks, by running the pieces of a
torchvision ResNet-18 by hand and calling ``torch.autograd.grad``, and then write the equations
of ltgrad-cam (Eq. 2-11) as loops over samples, channels and pixels.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cama.explain import (
    fullgrad_layers,
    gradient_cam,
    gradient_cam_layer_map,
    logit_score,
    similarity_score,
    truncate_gradients,
)

SIZE = (64, 48)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10).double().eval()
    with torch.no_grad():  # batch norms that look trained, so that their effective biases are not 0
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
    return net


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.fixture
def reference() -> torch.Tensor:
    return torch.randn(2, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# reference computation, no hooks
# --------------------------------------------------------------------------------------------------
def manual_forward(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """ResNet-18 run piece by piece, keeping the tensors whose gradients the references need."""
    a = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    a3 = net.layer3(net.layer2(net.layer1(a)))
    a40 = net.layer4[0](a3)
    block = net.layer4[1]
    z = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(a40)))))  # output of layer4.1.bn2
    a4 = block.relu(z + a40)
    out = net.fc(torch.flatten(net.avgpool(a4), 1))
    return {"x": x, "layer3": a3, "layer4.1.bn2": z, "layer4": a4, "out": out}


def reference_gradients(net, images, score_fn, names):
    x = images.clone().requires_grad_(True)
    tensors = manual_forward(net, x)
    grads = torch.autograd.grad(score_fn(tensors["out"]).sum(), [tensors[n] for n in names])
    return [tensors[n].detach() for n in names], [g.detach() for g in grads]


def naive_percentile_truncation(grad: torch.Tensor, percentile: float) -> torch.Tensor:
    """Eq. 9: keep g >= delta, delta the percentile (linear interpolation) of each sample's positive g."""
    out = torch.zeros_like(grad)
    for b in range(grad.shape[0]):
        values = grad[b].flatten().tolist()
        positive = sorted(v for v in values if v > 0)
        if not positive:
            continue
        rank = percentile / 100 * (len(positive) - 1)
        low, high = math.floor(rank), math.ceil(rank)
        delta = positive[low] + (positive[high] - positive[low]) * (rank - low)
        kept = [v if v >= delta else 0.0 for v in values]
        out[b] = torch.tensor(kept, dtype=grad.dtype).reshape(grad[b].shape)
    return out


def naive_layer_map(act: torch.Tensor, grad: torch.Tensor, method: str, bias: list[float] | None = None):
    B, K, h, w = act.shape
    A, G = act.tolist(), grad.tolist()
    out = torch.zeros(B, h, w, dtype=torch.float64)
    for b in range(B):
        if method == "fullgrad":
            values = [
                [[abs(G[b][k][y][x] * (bias[k] if bias is not None else A[b][k][y][x])) for x in range(w)]
                 for y in range(h)]
                for k in range(K)
            ]
            flat = [v for plane in values for row in plane for v in row]
            low, high = min(flat), max(flat)
            for y in range(h):
                for x in range(w):
                    out[b, y, x] = sum((values[k][y][x] - low) / (high - low) for k in range(K))
            continue
        weights = []
        for k in range(K):
            if method == "gradcam":  # Eq. 2
                weights.append(sum(G[b][k][y][x] for y in range(h) for x in range(w)) / (h * w))
            elif method == "gradcam++":
                total_a = sum(A[b][k][y][x] for y in range(h) for x in range(w))
                weight = 0.0
                for y in range(h):
                    for x in range(w):
                        g = G[b][k][y][x]
                        denominator = 2 * g**2 + total_a * g**3
                        alpha = g**2 / denominator if denominator != 0 else 0.0
                        weight += alpha * max(g, 0.0)
                weights.append(weight)
        for y in range(h):
            for x in range(w):
                if method == "layercam":  # Eq. 4-5
                    out[b, y, x] = sum(max(G[b][k][y][x], 0.0) * A[b][k][y][x] for k in range(K))
                else:  # Eq. 3
                    out[b, y, x] = sum(weights[k] * A[b][k][y][x] for k in range(K))
    return out


def naive_postprocess(raw: torch.Tensor) -> torch.Tensor:
    up = F.interpolate(raw.clamp_min(0)[:, None], size=SIZE, mode="bilinear", align_corners=False)[:, 0]
    out = torch.zeros_like(up)
    for b in range(up.shape[0]):
        low, high = float(up[b].min()), float(up[b].max())
        if high > low:
            out[b] = (up[b] - low) / (high - low)
    return out


def naive_gradient_cam(net, images, score_fn, names, method, truncation=None, biases=None):
    acts, grads = reference_gradients(net, images, score_fn, names)
    total = torch.zeros(images.shape[0], *SIZE, dtype=torch.float64)
    for i, (act, grad) in enumerate(zip(acts, grads)):
        if truncation is not None:
            grad = naive_percentile_truncation(grad, truncation)
        bias = None if biases is None else biases[i]
        total += naive_postprocess(naive_layer_map(act, grad, method, bias))
    return naive_postprocess(total)  # the sum is >= 0: this is the final min-max


# --------------------------------------------------------------------------------------------------
# equality with the naive equations
# --------------------------------------------------------------------------------------------------
def test_gradcam_single_layer_equals_autograd_weights(model, images, reference) -> None:
    score_fn = similarity_score(reference)
    out = gradient_cam(model, images, score_fn, [model.layer4], method="gradcam")
    assert out.shape == (2, *SIZE) and float(out.min()) >= 0.0 and float(out.max()) == 1.0
    torch.testing.assert_close(out, naive_gradient_cam(model, images, score_fn, ["layer4"], "gradcam"))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_layerized_methods_match_loops(model, images, method) -> None:
    score_fn = logit_score(torch.tensor([3, 7]))
    out = gradient_cam(model, images, score_fn, ["layer3", "layer4"], method=method)  # names
    expected = naive_gradient_cam(model, images, score_fn, ["layer3", "layer4"], method)
    torch.testing.assert_close(out, expected)


def test_fullgrad_matches_loops(model, images, reference) -> None:
    score_fn = similarity_score(reference, metric="dot")
    bn = model.layer4[1].bn2
    effective_bias = (bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps)).tolist()
    out = gradient_cam(model, images, score_fn, ["layer4.1.bn2", "layer4"], method="fullgrad")
    # bias term for the batch norm, gradient-times-activation for the stage, input term dy/dx * x
    expected = naive_gradient_cam(
        model, images, score_fn, ["layer4.1.bn2", "layer4", "x"], "fullgrad",
        biases=[effective_bias, None, None],
    )
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "fullgrad"])
def test_raw_layer_maps_match_loops(model, images, reference, method) -> None:
    """The raw per-layer map keeps its magnitude (no normalisation hides a wrong scale)."""
    acts, grads = reference_gradients(model, images, similarity_score(reference), ["layer4"])
    raw = gradient_cam_layer_map(acts[0], grads[0], method)
    torch.testing.assert_close(raw, naive_layer_map(acts[0], grads[0], method))


def test_truncated_gradcam_matches_loops(model, images, reference) -> None:
    score_fn = similarity_score(reference)
    out = gradient_cam(model, images, score_fn, ["layer3", "layer4"], method="gradcam", truncation=30)
    expected = naive_gradient_cam(model, images, score_fn, ["layer3", "layer4"], "gradcam", truncation=30)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, gradient_cam(model, images, score_fn, ["layer3", "layer4"]))


def test_truncation_delta_zero_keeps_exactly_the_positive_gradients() -> None:
    grads = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(3))
    grads[2] = -grads[2].abs()  # a sample without positive gradients keeps nothing
    for per_channel in (False, True):
        truncated = truncate_gradients(grads, 0.0, per_channel=per_channel)
        assert torch.equal(truncated, torch.where(grads > 0, grads, torch.zeros_like(grads)))


@pytest.mark.parametrize("percentile", [20.0, 50.0, 90.0, 100.0])
def test_truncation_percentile_matches_loops(percentile: float) -> None:
    grads = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected = naive_percentile_truncation(grads, percentile)
    torch.testing.assert_close(truncate_gradients(grads, percentile), expected)
    per_channel = truncate_gradients(grads, percentile, per_channel=True)
    for k in range(4):
        torch.testing.assert_close(per_channel[:, k], naive_percentile_truncation(grads[:, k], percentile))


def test_fullgrad_layers_lists_bias_carrying_layers(model) -> None:
    layers = fullgrad_layers(model)
    assert len(layers) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    small = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    out = gradient_cam(model, small, logit_score([0]), layers, "fullgrad")
    assert out.shape == (1, 32, 32) and torch.isfinite(out).all() and float(out.max()) == 1.0


# --------------------------------------------------------------------------------------------------
# safety: hooks, modes, gradients, inference mode
# --------------------------------------------------------------------------------------------------
def hook_counts(net: nn.Module) -> list[int]:
    return [
        len(m._forward_hooks) + len(m._forward_pre_hooks)
        + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in net.modules()
    ]


def test_leaves_model_as_it_was(images, reference) -> None:
    torch.manual_seed(5)
    net = torchvision.models.resnet18(weights=None, num_classes=10).double()
    net.train()
    net.layer2.eval()  # mixed modes must come back per module
    net.layer1.requires_grad_(False)  # frozen part
    for i, parameter in enumerate(net.parameters()):
        if parameter.requires_grad and i % 2 == 0:
            parameter.grad = torch.randn_like(parameter)
    modes = [m.training for m in net.modules()]
    grads = [p.grad for p in net.parameters()]
    grad_values = [None if g is None else g.clone() for g in grads]
    flags = [p.requires_grad for p in net.parameters()]
    buffers = [b.clone() for b in net.buffers()]
    hooks = hook_counts(net)
    seen_modes = []

    def score_fn(output: torch.Tensor) -> torch.Tensor:
        seen_modes.append(net.training)
        return similarity_score(reference)(output)

    forward_calls = []
    counter = net.register_forward_pre_hook(lambda module, args: forward_calls.append(1))
    out = gradient_cam(net, images, score_fn, ["layer2", "layer4"], method="gradcam++", truncation=10)
    counter.remove()
    assert len(forward_calls) == 1 and seen_modes == [False]  # one forward, in eval mode
    assert torch.isfinite(out).all()
    assert hook_counts(net) == hooks
    assert [m.training for m in net.modules()] == modes
    assert [p.requires_grad for p in net.parameters()] == flags
    for parameter, grad, value in zip(net.parameters(), grads, grad_values):
        assert parameter.grad is grad
        if value is not None:
            assert torch.equal(parameter.grad, value)
    assert all(torch.equal(b, before) for b, before in zip(net.buffers(), buffers))  # eval-mode BN


class Pair(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class First(nn.Module):
    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return pair[0]


def test_cleans_up_when_it_raises(model, images) -> None:
    model.train()
    model.fc.eval()
    modes = [m.training for m in model.modules()]
    hooks = hook_counts(model)
    try:
        def failing(output: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            gradient_cam(model, images, failing, ["layer3", model.layer4])
        with pytest.raises(ValueError):  # a score per sample is required
            gradient_cam(model, images, lambda output: output.sum(), ["layer4"])
        pair = Pair()
        wrapped = nn.Sequential(model, pair, First())
        with pytest.raises(TypeError):  # a layer that returns a non-tensor
            gradient_cam(wrapped, images, logit_score([0, 1]), [model.layer4, pair])
        with pytest.raises(RuntimeError, match="ran 0 times"):  # a layer outside the forward
            gradient_cam(model, images, logit_score([0, 1]), [model.layer4, nn.Conv2d(1, 1, 1)])
        assert hook_counts(model) == hooks and hook_counts(pair) == [0]
        assert [m.training for m in model.modules()] == modes
    finally:
        model.eval()


def test_works_under_inference_mode_and_no_grad(model, reference) -> None:
    generator = torch.Generator().manual_seed(6)
    plain_images = torch.randn(2, 3, *SIZE, generator=generator, dtype=torch.float64)
    expected = gradient_cam(model, plain_images, similarity_score(reference), ["layer4"])
    with torch.inference_mode():
        images = plain_images.clone()  # an inference tensor, like a validation batch
        ref = reference.clone()
        assert images.is_inference()
        out = gradient_cam(model, images, similarity_score(ref), ["layer4"])
    torch.testing.assert_close(out, expected)
    with torch.no_grad():
        out = gradient_cam(model, plain_images, similarity_score(reference), ["layer4"])
    torch.testing.assert_close(out, expected)


def test_under_bfloat16_autocast(images, reference) -> None:
    torch.manual_seed(7)
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        score_fn = similarity_score(reference.float())
        out = gradient_cam(net, images.float(), score_fn, ["layer3", "layer4"], "gradcam++", 10)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


@pytest.mark.filterwarnings("ignore:.*LeafSpec")
def test_inside_a_lightning_validation_loop() -> None:
    lightning = pytest.importorskip("lightning.pytorch")

    class Tiny(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
            )
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
            self.maps: list[torch.Tensor] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x))

        def validation_step(self, batch, batch_idx):
            (x,) = batch
            assert torch.is_inference_mode_enabled()
            with torch.inference_mode(False):
                reference = self(x.clone()).detach().roll(1, 0)
            score_fn = similarity_score(reference)
            self.maps.append(gradient_cam(self, x, score_fn, ["features.1"], "layercam", truncation=0))

    module = Tiny()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 3, 8, 8)), batch_size=4)
    trainer = lightning.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.validate(module, data, verbose=False)
    assert len(module.maps) == 1 and module.maps[0].shape == (4, 8, 8)
    assert torch.isfinite(module.maps[0]).all() and float(module.maps[0].max()) == 1.0
    assert all(len(m._forward_hooks) == 0 for m in module.modules())
    assert all(p.grad is None for p in module.parameters())
