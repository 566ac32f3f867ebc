"""CAMA building blocks against independent computations (cama-ram Eq. 3-8)."""

import math

import pytest
import torch
from torch import nn

from cama.backbones import MultiBranchResNet, PretrainedWeightsNotFound, build_resnet
from cama.losses import overlapped_activation_penalty, resolve_topk
from cama.models.heads import CAMHead, PooledBatchNorm2d
from cama.models.schedules import two_phase_lambdas


def naive_oap(cams: torch.Tensor, k: int) -> float:
    """Eq. 5-6 written out per sample, per branch and per pixel."""
    n_branches, batch, h, w = cams.shape
    total = 0.0
    for b in range(batch):
        sigmas = []
        for i in range(n_branches):
            values = sorted(cams[i, b].flatten().tolist(), reverse=True)
            sigmas.append(values[k - 1])
        overlap = 0.0
        for y in range(h):
            for x in range(w):
                product = 1.0
                for i in range(n_branches):
                    product *= 1.0 / (1.0 + math.exp(-(cams[i, b, y, x].item() - sigmas[i])))
                overlap += product
        total += overlap / n_branches
    return total / batch


def test_oap_hand_worked_example():
    # Two branches, one sample, a 1x2 grid, k = 1: sigma^1 = 3, sigma^2 = 2.
    # a^1 = [sigmoid(0), sigmoid(-2)], a^2 = [sigmoid(-2), sigmoid(0)]
    # L = (1/2) * (0.5 * s(-2) + s(-2) * 0.5) = 0.5 * s(-2)
    cams = torch.tensor([[[[3.0, 1.0]]], [[[0.0, 2.0]]]])
    expected = 0.5 * (1.0 / (1.0 + math.exp(2.0)))
    assert overlapped_activation_penalty(cams, topk=1).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("topk", [1, 3, 0.2, 0.5])
def test_oap_matches_naive_equation(topk):
    torch.manual_seed(0)
    cams = torch.randn(3, 4, 4, 3, dtype=torch.float64)
    k = resolve_topk(topk, 12)
    assert overlapped_activation_penalty(cams, topk).item() == pytest.approx(naive_oap(cams, k), rel=1e-9)


def test_oap_lower_for_disjoint_activations():
    h, w = 6, 4
    top = torch.zeros(h, w)
    top[:2] = 5.0
    bottom = torch.zeros(h, w)
    bottom[-2:] = 5.0
    same = torch.stack([top, top])[:, None]
    disjoint = torch.stack([top, bottom])[:, None]
    assert overlapped_activation_penalty(disjoint, 8) < overlapped_activation_penalty(same, 8)


def test_resolve_topk():
    assert resolve_topk(0.2, 128) == 26  # the paper's 26 of 128 cells
    assert resolve_topk(5, 128) == 5
    assert resolve_topk(0.001, 10) == 1
    with pytest.raises(ValueError):
        resolve_topk(0, 10)


@pytest.mark.parametrize("training", [True, False])
def test_pooled_batchnorm_equals_batchnorm_of_gap(training):
    """Eq. 3: GAP(BN(T)) == BN1d(GAP(T)), with the same running statistics as BatchNorm1d."""
    torch.manual_seed(0)
    ours, reference = PooledBatchNorm2d(5), nn.BatchNorm1d(5)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 2)
        reference.bias.uniform_(-1, 1)
        reference.running_mean.uniform_(-1, 1)
        reference.running_var.uniform_(0.5, 2)
    ours.load_state_dict(reference.state_dict())
    ours.train(training)
    reference.train(training)
    maps = torch.randn(6, 5, 4, 3) * 3 + 1
    out = ours(maps)
    assert out.shape == maps.shape
    torch.testing.assert_close(out.mean(dim=(2, 3)), reference(maps.mean(dim=(2, 3))))
    torch.testing.assert_close(ours.running_mean, reference.running_mean)
    torch.testing.assert_close(ours.running_var, reference.running_var)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pooled_batchnorm_of_half_maps_keeps_float32_statistics(dtype):
    """Mixed precision (issue 10): half maps update the float32 running statistics with the
    statistics of the same values in float32 (the in-place lerp raised on a dtype mismatch)."""
    torch.manual_seed(0)
    ours, reference = PooledBatchNorm2d(5), PooledBatchNorm2d(5)
    maps = (torch.randn(6, 5, 4, 3) * 3 + 1).to(dtype)
    out = ours(maps)
    expected = reference(maps.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    assert ours.running_mean.dtype == torch.float32
    torch.testing.assert_close(ours.running_mean, reference.running_mean)
    torch.testing.assert_close(ours.running_var, reference.running_var)


def test_cam_head_logits_are_gap_of_cams():
    """Eq. 4: S_c = GAP(M_c) with M_c(x, y) = sum_k W_ck F_k(x, y)."""
    torch.manual_seed(0)
    head = CAMHead(6, 4).eval()
    maps = head.features(torch.randn(3, 6, 5, 2))
    logits = head.logits(maps)
    classes = torch.tensor([0, 3, 1])
    cams = head.target_cam(maps, classes)
    weight = head.classifier.weight
    for b in range(3):
        for y in range(5):
            for x in range(2):
                expected = sum(weight[classes[b], k] * maps[b, k, y, x] for k in range(6))
                assert cams[b, y, x].item() == pytest.approx(expected.item(), abs=1e-5)
    torch.testing.assert_close(cams.mean(dim=(1, 2)), logits[torch.arange(3), classes])


@pytest.mark.parametrize("name", ["resnet10", "resnet18", "resnet50"])
def test_backbone_last_stride_one_and_independent_branches(name):
    net = MultiBranchResNet(name, num_branches=2, last_stride=1)
    maps = net(torch.randn(1, 3, 64, 32))
    assert len(maps) == 2
    assert maps[0].shape[-2:] == (4, 2)  # stride 16 instead of 32
    assert maps[0].shape[1] == net.out_channels
    # branches start equal (copies of conv5) but are separate parameters
    torch.testing.assert_close(maps[0], maps[1])
    assert net.branches[0][0].conv1.weight.data_ptr() != net.branches[1][0].conv1.weight.data_ptr()


def test_pretrained_missing_gives_instructions(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(PretrainedWeightsNotFound, match="torch hub cache"):
        build_resnet("resnet18", pretrained="imagenet")
    with pytest.raises(PretrainedWeightsNotFound, match="not found"):
        build_resnet("resnet18", pretrained=str(tmp_path / "nope.pth"))


def test_pretrained_from_file(tmp_path):
    source = build_resnet("resnet18", last_stride=2)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    loaded = build_resnet("resnet18", pretrained=str(path))
    torch.testing.assert_close(loaded.conv1.weight, source.conv1.weight)
    assert loaded.layer4[0].conv1.stride == (1, 1)


def test_two_phase_schedule():
    head, backbone = two_phase_lambdas(3e-4, 10, 3e-6, 20, 0.1, True)
    assert head(0) * 3e-4 == pytest.approx(3e-6)
    assert head(9) == pytest.approx(1.0)
    assert all(head(e) < head(e + 1) for e in range(9))
    assert backbone(5) == 0.0 and backbone(10) == 1.0
    assert head(29) == pytest.approx(1.0) and head(30) == pytest.approx(0.1) and head(50) == pytest.approx(0.01)
    head, backbone = two_phase_lambdas(3e-4, 2, 3e-6, 20, 0.1, False)
    assert backbone(0) == head(0) > 0


def test_cosine_schedule_hand_worked():
    # warm-up of 1 epoch, then a half cosine over epochs 1..4 of a 5-epoch run
    head, backbone = two_phase_lambdas(1e-3, 1, 1e-4, 7, 0.1, False, cosine_epochs=5)
    assert [head(e) for e in range(5)] == pytest.approx([1.0, 1.0, (1 + 2**-0.5) / 2, 0.5, (1 - 2**-0.5) / 2])
    assert backbone(3) == head(3)
    # a run of the warm-up's length (max_epochs 1 of a quick try) is all warm-up, and trains
    head, _ = two_phase_lambdas(1e-3, 1, 1e-4, 7, 0.1, False, cosine_epochs=1)
    assert head(0) == 1.0


@pytest.mark.parametrize("name", ["resnet10", "resnet50"])
def test_narrow_backbone_scales_every_channel_of_torchvision_layout(name):
    """width=32: every parameter has torchvision's shape with each channel count halved (the
    image's 3 input channels and the classifier's 1000 outputs excepted)."""
    wide, narrow = build_resnet(name).state_dict(), build_resnet(name, width=32).state_dict()
    assert list(wide) == list(narrow)
    for key, value in wide.items():
        if value.ndim == 0:  # num_batches_tracked
            continue
        expected = list(value.shape)
        if key == "fc.weight":
            expected[1] //= 2
        elif key != "fc.bias":
            expected[0] //= 2
            if value.ndim == 4 and key != "conv1.weight":
                expected[1] //= 2
        assert list(narrow[key].shape) == expected, key
    net = MultiBranchResNet(name, num_branches=2, last_stride=1, width=32)
    assert net(torch.randn(1, 3, 64, 32))[0].shape == (1, net.out_channels, 4, 2)
    assert net.out_channels == build_resnet(name).fc.in_features // 2
    conv = build_resnet(name, width=32).layer3[0].conv1.weight  # Kaiming normal, fan-out
    fan_out = conv.shape[0] * conv.shape[2] * conv.shape[3]
    assert conv.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)
