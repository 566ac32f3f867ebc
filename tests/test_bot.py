"""BoT's pieces of the re-ID model (Luo et al., CVPR-W 2019) against their definitions written out here:
the batch-hard triplet term, the BNNeck, label smoothing, the centre loss and its update, the
multi-step schedule."""

import math

import pytest
import torch

from cama.losses import center_loss, center_loss_step
from cama.models import CAMA
from cama.models.heads import CAMHead
from cama.models.reid_loss import ReIDLoss
from cama.models.schedules import two_phase_lambdas


def naive_batch_hard(features: torch.Tensor, labels: list[int], margin: float) -> float:
    """Per anchor: the farthest other image of its identity, the nearest image of another identity,
    ``max(0, d_ap - d_an + margin)`` with the Euclidean distance; the mean over the anchors."""
    rows = features.double().tolist()

    def dist(a, b):
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(rows[a], rows[b])))

    hinges = []
    for a in range(len(rows)):
        positives = [dist(a, p) for p in range(len(rows)) if p != a and labels[p] == labels[a]]
        negatives = [dist(a, n) for n in range(len(rows)) if labels[n] != labels[a]]
        if positives and negatives:
            hinges.append(max(0.0, max(positives) - min(negatives) + margin))
    return sum(hinges) / len(hinges)


def naive_center_loss(features: torch.Tensor, centers: torch.Tensor, labels: list[int]) -> torch.Tensor:
    """``(1/B) sum_j ||f_j - c_{y_j}||^2``, one sample at a time (differentiable in the centres)."""
    terms = [((features[j] - centers[y]) ** 2).sum() for j, y in enumerate(labels)]
    return sum(terms) / len(terms)


def identity_heads(num_branches: int, channels: int, num_classes: int) -> list[CAMHead]:
    """Heads whose BN is the identity up to its eps (eval mode, zero mean, unit variance)."""
    return [CAMHead(channels, num_classes).eval() for _ in range(num_branches)]


def as_maps(features: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` features as ``[B, K, 2, 1]`` maps whose GAP they are."""
    offsets = torch.tensor([0.5, -0.5])[None, None, :, None]
    return features[:, :, None, None] + offsets


# ---------------------------------------------------------------------------------- the triplet term
def test_triplet_hand_worked_example():
    # 1-D features; identity 0 at 0 and 1, identity 1 at 1.2 and 3. Anchor 0: d_ap 1, d_an 1.2 ->
    # 1 - 1.2 + 0.3 = 0.1; anchor 1: d_ap 1, d_an 0.2 -> 1.1; anchor 2: d_ap 1.8, d_an 0.2 -> 1.9;
    # anchor 3: d_ap 1.8, d_an 2 -> 0.1. Mean 0.8; with margin 0 anchors 0 and 3 are satisfied (0) and
    # still count: (0.8 + 1.6) / 4 = 0.6.
    labels = torch.tensor([0, 0, 1, 1])
    maps = as_maps(torch.tensor([[0.0], [1.0], [1.2], [3.0]]))
    heads = identity_heads(1, 1, 2)
    for margin, expected in ((0.3, 0.8), (0.0, 0.6)):
        loss = ReIDLoss(1, 2, 1, triplet_weight=1.0, triplet_margin=margin).eval()
        assert loss(heads, [maps], labels)["triplet"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("margin", [0.3, 2.0])
def test_triplet_per_branch_is_batch_hard_written_out_and_summed(margin):
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3])
    features = [torch.randn(12, 5), 3 * torch.randn(12, 5)]
    heads = identity_heads(2, 5, 4)
    loss = ReIDLoss(2, 4, 5, triplet_weight=0.5, triplet_margin=margin).eval()
    out = loss(heads, [as_maps(f) for f in features], labels)
    expected = [naive_batch_hard(f, labels.tolist(), margin) for f in features]
    assert expected[0] != pytest.approx(expected[1], rel=1e-3)
    assert out["triplet_branch1"].item() == pytest.approx(expected[0], rel=1e-5)
    assert out["triplet_branch2"].item() == pytest.approx(expected[1], rel=1e-5)
    assert out["triplet"].item() == pytest.approx(sum(expected), rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["id_loss"].item() + 0.5 * sum(expected), rel=1e-5)


# ---------------------------------------------------------------------------------- the BNNeck
def bnneck_model(bnneck: bool, seed: int = 0) -> CAMA:
    torch.manual_seed(seed)
    model = CAMA(num_classes=4, backbone="resnet10", width=8, num_branches=1, oap_weight=0.0,
                 triplet_weight=1.0, triplet_margin=0.3, bnneck=bnneck)
    with torch.no_grad():  # a BN far from the identity, so that before and after it differ
        model.heads[0].bn.weight.uniform_(0.2, 3.0)
        model.heads[0].bn.bias.uniform_(-2.0, 2.0)
    return model.train()


def test_bnneck_triplet_reads_the_pooled_features_before_the_bn():
    images = torch.randn(8, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    for bnneck in (True, False):
        model = bnneck_model(bnneck)
        with torch.no_grad():
            before = model.backbone(images)[0].mean(dim=(2, 3))  # GAP(T), [B, K]
            bn = model.heads[0].bn  # training mode: the batch statistics of GAP(T)
            after = (before - before.mean(0)) / torch.sqrt(before.var(0, unbiased=False) + bn.eps)
            after = after * bn.weight + bn.bias
            triplet = model.compute_losses(images, labels)["triplet"].item()
        on_before = naive_batch_hard(before, labels.tolist(), 0.3)
        on_after = naive_batch_hard(after, labels.tolist(), 0.3)
        assert on_before != pytest.approx(on_after, rel=1e-2)
        assert triplet == pytest.approx(on_before if bnneck else on_after, rel=1e-4)


def test_feature_maps_are_the_heads_bn_of_the_backbone_maps():
    """What the training loss reads (backbone_maps) and what is explained and ranked (feature_maps)
    come from the same backbone forward."""
    model = bnneck_model(True).eval()
    images = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        raw, maps = model.backbone_maps(images), model.feature_maps(images)
        torch.testing.assert_close(maps[0], model.heads[0].bn(raw[0]))
        embedding = torch.nn.functional.normalize(maps[0].mean(dim=(2, 3)), dim=1)  # the post-BN feature
        torch.testing.assert_close(model(images), embedding)


def test_frozen_bn_bias_stays_zero():
    torch.manual_seed(0)
    model = CAMA(num_classes=3, backbone="resnet10", width=8, num_branches=1, oap_weight=0.0,
                 triplet_weight=1.0, freeze_bn_bias=True, weight_decay=5e-4, warmup_epochs=0)
    optimizer = model.configure_optimizers()["optimizer"]
    losses = model.compute_losses(torch.randn(6, 3, 64, 32), torch.tensor([0, 0, 1, 1, 2, 2]))
    losses["loss"].backward()
    optimizer.step()
    assert model.heads[0].bn.bias.grad is None
    assert torch.count_nonzero(model.heads[0].bn.bias) == 0
    assert model.heads[0].bn.weight.grad is not None


# ---------------------------------------------------------------------------------- label smoothing
def naive_smoothed_cross_entropy(logits: torch.Tensor, labels: list[int], eps: float) -> float:
    """``-sum_k q_k log p_k`` with ``q_y = 1 - eps + eps / C`` and ``q_k = eps / C`` otherwise, averaged."""
    total = 0.0
    for row, y in zip(logits.double().tolist(), labels):
        norm = math.log(sum(math.exp(v) for v in row))
        classes = len(row)
        total -= sum(((1 - eps) * (k == y) + eps / classes) * (v - norm) for k, v in enumerate(row))
    return total / len(labels)


def test_label_smoothing_hand_worked():
    # two classes, logits (ln 3, 0): p = (0.75, 0.25); eps 0.1: q = (0.95, 0.05)
    expected = -(0.95 * math.log(0.75) + 0.05 * math.log(0.25))
    logits = torch.tensor([[math.log(3.0), 0.0]])
    assert naive_smoothed_cross_entropy(logits, [0], 0.1) == pytest.approx(expected)
    heads = identity_heads(1, 2, 2)
    with torch.no_grad():
        heads[0].classifier.weight.copy_(torch.eye(2) * math.sqrt(1 + heads[0].bn.eps))  # undo the BN's eps
    loss = ReIDLoss(1, 2, 2, label_smoothing=0.1).eval()
    out = loss(heads, [as_maps(logits)], torch.tensor([0]))
    assert out["id_loss"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_label_smoothing_per_branch_against_its_definition(eps):
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    features = [torch.randn(7, 6), torch.randn(7, 6)]
    heads = identity_heads(2, 6, 5)
    for head in heads:
        torch.nn.init.normal_(head.classifier.weight)
    out = ReIDLoss(2, 5, 6, label_smoothing=eps).eval()(heads, [as_maps(f) for f in features], labels)
    for i, (head, f) in enumerate(zip(heads, features), start=1):
        logits = (f / math.sqrt(1 + head.bn.eps)) @ head.classifier.weight.detach().T
        expected = naive_smoothed_cross_entropy(logits, labels.tolist(), eps)
        assert out[f"id_loss_branch{i}"].item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------- the centre loss
def test_center_loss_hand_worked():
    # class 0 at 1 and 3 with centre 0, class 1's centre 5 untouched: L = (1 + 9) / 2 = 5;
    # dL/dc_0 = -(2/2) * (1 + 3) = -4, so one step of lr 0.5 moves c_0 to 2
    features, centers = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [5.0]])
    labels = torch.tensor([0, 0])
    assert center_loss(features, centers, labels).item() == pytest.approx(5.0)
    assert center_loss_step(features, centers, labels, 0.5).tolist() == [[2.0], [5.0]]


def test_center_loss_and_its_step_against_the_definition_and_autograd():
    torch.manual_seed(0)
    labels = [2, 0, 2, 2, 4, 0]
    features, centers = torch.randn(6, 3), torch.randn(5, 3)
    assert center_loss(features, centers, torch.tensor(labels)).item() == pytest.approx(
        naive_center_loss(features, centers, labels).item(), rel=1e-6)
    leaf = centers.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(naive_center_loss(features, leaf, labels), leaf)
    stepped = center_loss_step(features, centers, torch.tensor(labels), 0.5)
    torch.testing.assert_close(stepped, centers - 0.5 * grad)
    assert torch.equal(stepped[[1, 3]], centers[[1, 3]])  # no sample: the centre stays
    with pytest.raises(ValueError, match="labels must be"):
        center_loss(features, centers, torch.tensor([0, 1]))


def test_center_term_per_branch_and_update_in_training_only():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    features = [torch.randn(6, 4), torch.randn(6, 4)]
    heads = identity_heads(2, 4, 3)
    loss = ReIDLoss(2, 3, 4, center_weight=5e-4, center_lr=0.5)
    start = loss.centers.clone()
    expected = [naive_center_loss(f, c, labels.tolist()).item() for f, c in zip(features, start)]
    out = loss.eval()(heads, [as_maps(f) for f in features], labels)
    assert torch.equal(loss.centers, start)  # evaluation leaves the centres
    assert out["center_branch1"].item() == pytest.approx(expected[0], rel=1e-6)
    assert out["center"].item() == pytest.approx(sum(expected), rel=1e-6)
    assert out["loss"].item() == pytest.approx(out["id_loss"].item() + 5e-4 * sum(expected), rel=1e-6)
    loss.train()(heads, [as_maps(f) for f in features], labels)
    for f, c, moved in zip(features, start, loss.centers):
        leaf = c.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(naive_center_loss(f, leaf, labels.tolist()), leaf)
        torch.testing.assert_close(moved, c - 0.5 * grad)


def test_center_loss_gives_the_features_a_gradient_towards_their_centre():
    heads = identity_heads(1, 2, 2)
    loss = ReIDLoss(1, 2, 2, center_weight=1.0).eval()
    with torch.no_grad():
        loss.centers.zero_()
    features = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], requires_grad=True)
    out = loss(heads, [as_maps(features)], torch.tensor([0, 1]))
    (grad,) = torch.autograd.grad(out["center"], features)
    torch.testing.assert_close(grad, features.detach())  # d/df (1/2) sum ||f||^2 = f


# ---------------------------------------------------------------------------------- the schedule
def test_bot_multistep_schedule_hand_computed():
    base = 3.5e-4
    head, backbone = two_phase_lambdas(base, 10, 3.5e-5, 20, 0.1, False, milestones=[40, 70])
    expected = {0: 3.5e-5, 1: 7e-5, 4: 1.75e-4, 9: 3.5e-4, 10: 3.5e-4, 39: 3.5e-4, 40: 3.5e-5, 69: 3.5e-5,
                70: 3.5e-6, 119: 3.5e-6}
    assert {e: base * head(e) for e in expected} == pytest.approx(expected)
    assert all(backbone(e) == head(e) for e in range(120))


def test_bot_schedule_through_the_model_optimizer():
    model = CAMA(num_classes=3, backbone="resnet10", width=8, num_branches=1, oap_weight=0.0, lr=3.5e-4,
                 warmup_epochs=10, warmup_start_lr=3.5e-5, freeze_backbone_during_warmup=False,
                 lr_schedule="multistep", lr_milestones=[40, 70], lr_gamma=0.1)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(120):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx([3.5e-5, 3.5e-5])
    assert seen[5] == pytest.approx([2.1e-4, 2.1e-4])  # 3.5e-4 * 6 / 10
    assert [seen[e][0] for e in (9, 39, 40, 69, 70, 119)] == pytest.approx([3.5e-4, 3.5e-4, 3.5e-5, 3.5e-5,
                                                                             3.5e-6, 3.5e-6])


@pytest.mark.parametrize("kwargs, match", [
    ({"lr_schedule": "multistep", "lr_milestones": [5, 40]}, "inside the warm-up"),
    ({"lr_schedule": "multistep", "lr_milestones": [70, 40]}, "strictly increasing"),
    ({"lr_schedule": "multistep"}, "lr_milestones is empty"),
    ({"lr_schedule": "step", "lr_milestones": [40, 70]}, "need lr_schedule 'multistep'"),
    ({"triplet_weight": -1.0}, "triplet_weight must be >= 0"),
    ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CAMA(num_classes=3, backbone="resnet10", width=8, num_branches=1, warmup_epochs=10, **kwargs)
