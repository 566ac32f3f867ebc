"""Sanity checks for saliency maps (Adebayo et al. 2018): the similarity measures, the cascading
randomization, the whole test on a tiny model, and the callback on a tiny synthetic re-ID run."""

from __future__ import annotations

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from callbacks.sanity_checks import SanityChecks, sanity_maps
from cama.explain import (
    cascading_randomization,
    class_activation_map,
    sanity_check,
    spearman_correlation,
    ssim,
)
from cama.models import CAMA, RetrievalModel
from cama.protocols import HasRandomizationBlocks
from cama.viz import ModelExplainer
from datamodules import ReIDDataModule

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------
# Spearman
# --------------------------------------------------------------------------------------------------
def test_spearman_matches_scipy_per_row_with_and_without_ties():
    g = torch.Generator().manual_seed(0)
    continuous = torch.randn(5, 7, 6, generator=g), torch.randn(5, 7, 6, generator=g)
    tied = torch.randint(0, 4, (2, 5, 30), generator=g).float().unbind(0)
    relu = F.relu(torch.randn(4, 9, 5, generator=g)), F.relu(torch.randn(4, 9, 5, generator=g))  # many zeros
    for a, b in (continuous, tied, relu):
        expected = [spearmanr(x.flatten().numpy(), y.flatten().numpy()).statistic for x, y in zip(a, b)]
        assert spearman_correlation(a, b).tolist() == pytest.approx(expected, abs=1e-6)


def test_spearman_hand_example_and_edge_cases():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    b = torch.tensor([[5.0, 6.0, 7.0, 8.0, 7.0]])  # ranks 1, 2, 3.5, 5, 3.5
    # d = rank differences 0, 0, -0.5, -1, 1.5 -> Pearson of ranks = 0.8208 (SciPy's value)
    assert spearman_correlation(a, b).item() == pytest.approx(0.82078268, abs=1e-6)
    assert spearman_correlation(a, a.exp()).item() == pytest.approx(1.0)  # monotone: 1
    assert spearman_correlation(a, -a).item() == pytest.approx(-1.0)
    assert math.isnan(spearman_correlation(a, torch.ones_like(a)).item())  # constant: undefined, as SciPy
    with pytest.raises(ValueError):
        spearman_correlation(a, a[:, :3])


# --------------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------------
def naive_ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Wang et al. 2004, Eq. 13-15, pixel by pixel: min-max to [0, 1], Gaussian-weighted local
    statistics over the window's pixels inside the map (weights renormalised), mean over pixels."""
    x = (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else torch.zeros_like(a)
    y = (b - b.min()) / (b.max() - b.min()) if b.max() > b.min() else torch.zeros_like(b)
    x, y = x.double().tolist(), y.double().tolist()
    height, width, half = len(x), len(x[0]), window // 2
    c1, c2 = (0.01 * 1) ** 2, (0.03 * 1) ** 2
    total = 0.0
    for i in range(height):
        for j in range(width):
            w_sum = mx = my = sxx = syy = sxy = 0.0
            for u in range(i - half, i + half + 1):
                for v in range(j - half, j + half + 1):
                    if 0 <= u < height and 0 <= v < width:
                        w = math.exp(-((u - i) ** 2 + (v - j) ** 2) / (2 * sigma**2))
                        w_sum += w
                        mx, my = mx + w * x[u][v], my + w * y[u][v]
                        sxx, syy = sxx + w * x[u][v] ** 2, syy + w * y[u][v] ** 2
                        sxy += w * x[u][v] * y[u][v]
            mx, my, sxx, syy, sxy = (s / w_sum for s in (mx, my, sxx, syy, sxy))
            vx, vy, cov = sxx - mx * mx, syy - my * my, sxy - mx * my
            total += ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return total / (height * width)


@pytest.mark.parametrize("shape, window", [((14, 10), 11), ((8, 4), 11), ((12, 9), 5)])
def test_ssim_matches_a_pixel_loop_of_wang_et_al(shape, window):
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, *shape, generator=g)
    b = 0.6 * a + 0.4 * torch.rand(3, *shape, generator=g)
    got = ssim(a, b, window=window)
    expected = [naive_ssim(x, y, window) for x, y in zip(a, b)]
    assert got.tolist() == pytest.approx(expected, abs=1e-5)


def test_ssim_is_one_for_identical_maps_and_low_for_a_negated_map():
    g = torch.Generator().manual_seed(2)
    maps = torch.rand(4, 32, 16, generator=g)
    assert ssim(maps, maps).tolist() == pytest.approx([1.0] * 4)
    assert ssim(maps, 3 * maps + 1).tolist() == pytest.approx([1.0] * 4)  # min-max normalised first
    assert (ssim(maps, -maps) < 0).all()
    assert ssim(torch.zeros(1, 8, 4), torch.zeros(1, 8, 4)).item() == pytest.approx(1.0)  # constant: zeros


# --------------------------------------------------------------------------------------------------
# cascading randomization
# --------------------------------------------------------------------------------------------------
class Tiny(nn.Module):
    """conv1 -> BN -> ReLU -> conv2 -> ReLU -> GAP -> fc: a CAM network in miniature."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)
        self.register_buffer("scratch", torch.arange(3.0), persistent=False)

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.bn1(self.conv1(images)))))

    def blocks(self) -> tuple[list[nn.Module], list[str]]:
        return [self.fc, self.conv2, nn.ModuleList([self.conv1, self.bn1])], ["fc", "conv2", "conv1"]


def tiny() -> Tiny:
    torch.manual_seed(123)
    net = Tiny()
    with torch.no_grad():  # "trained" BatchNorm statistics
        net.bn1.running_mean.normal_()
        net.bn1.running_var.uniform_(0.5, 2.0)
        net.bn1.num_batches_tracked.fill_(7)
    return net


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in (*model.named_parameters(), *model.named_buffers())}


def assert_same(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    now = dict((*model.named_parameters(), *model.named_buffers()))
    assert now.keys() == saved.keys()
    assert all(torch.equal(now[k], saved[k]) for k in saved)


def test_randomization_is_cumulative_top_down_and_restores_everything():
    net = tiny().train()
    net.conv2.eval()  # a mixed mode must come back too
    saved, rng = snapshot(net), torch.get_rng_state()
    parameters = [p for p in net.parameters()]
    blocks, names = net.blocks()
    seen = []
    with cascading_randomization(net, blocks, names, seed=5) as steps:
        for name, step in steps:
            seen.append(name)
            for i, weight in enumerate(("fc.weight", "conv2.weight", "conv1.weight")):  # one of each block
                changed = not torch.equal(net.get_parameter(weight), saved[weight])
                assert changed == (i <= step), (name, weight)
            net.eval()
            net.scratch.add_(1.0)  # whatever the caller does to the model in between
    assert seen == names
    assert_same(net, saved)
    assert net.training and not net.conv2.training and net.bn1.training
    assert all(a is b for a, b in zip(parameters, net.parameters()))  # the same tensors, in place
    assert torch.equal(torch.get_rng_state(), rng)


def test_randomization_resets_batchnorm_statistics_and_is_seeded():
    net = tiny()
    blocks, names = net.blocks()
    with cascading_randomization(net, blocks, names, seed=3) as steps:
        values = [snapshot(net) for _ in steps][-1]
    assert torch.equal(values["bn1.running_mean"], torch.zeros(8)) and values["bn1.num_batches_tracked"] == 0
    with cascading_randomization(net, blocks, names, seed=3) as steps:
        again = [snapshot(net) for _ in steps][-1]
    assert all(torch.equal(values[k], again[k]) for k in values)


def test_randomization_restores_after_an_exception():
    net = tiny()
    saved = snapshot(net)
    blocks, names = net.blocks()
    with pytest.raises(RuntimeError, match="boom"):
        with cascading_randomization(net, blocks, names) as steps:
            for _, step in steps:
                if step == 1:
                    raise RuntimeError("boom")
    assert_same(net, saved)


def test_the_models_blocks_cover_every_parameter():
    for model, top in (
        (CAMA(num_classes=3, backbone="resnet10", num_branches=2, width=4), ["head"]),
        (RetrievalModel(num_classes=3, backbone="resnet10", width=4, embedding_size=8, miner=None), ["projection"]),
    ):
        assert isinstance(model, HasRandomizationBlocks)
        named = model.randomization_blocks()
        assert [n for n, _ in named] == [*top, "conv5", "conv4", "conv3", "conv2", "conv1"]
        covered = {id(p) for _, block in named for p in block.parameters()}
        assert covered == {id(p) for p in model.parameters()}


# --------------------------------------------------------------------------------------------------
# the test itself
# --------------------------------------------------------------------------------------------------
def test_sanity_check_passes_a_weight_free_map_and_flags_a_cam():
    net = tiny()
    saved = snapshot(net)
    images = torch.rand(6, 3, 16, 12, generator=torch.Generator().manual_seed(4))

    def explain(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = model.feature_maps(x)
        predicted = model.fc(maps.mean(dim=(2, 3))).argmax(dim=1)
        return {"cam": class_activation_map(maps, model.fc.weight, predicted), "intensity": x.mean(dim=1)}

    blocks, names = net.blocks()
    result = sanity_check(explain, net, blocks, names, images)
    assert result.blocks == names
    # the input's intensity does not depend on the weights: the "explanation" is unchanged (it fails the test)
    for measure in (result.spearman, result.spearman_abs, result.ssim):
        assert measure["intensity"].tolist() == pytest.approx([1.0] * 3)
    # a CAM does: once every block is random it no longer resembles the trained model's
    for measure in (result.spearman, result.spearman_abs, result.ssim):
        assert measure["cam"][-1] < 0.5
    scalars = result.scalars()
    assert scalars["sanity/cam/spearman_conv1"] == pytest.approx(result.spearman["cam"][-1].item())
    assert len(scalars) == 2 * 3 * 3
    assert_same(net, saved)
    assert net.training  # sanity_check runs in eval mode and gives the mode back


# --------------------------------------------------------------------------------------------------
# the callback
# --------------------------------------------------------------------------------------------------
TINY_DATA = dict(
    dataset="synthetic", validate_on_test=True, image_size=(64, 32), p=4, k=2, eval_batch_size=64, num_workers=0,
    synthetic=dict(num_train_ids=10, num_test_ids=6, num_distractors=4, num_junk=2),
)


def test_callback_logs_the_check_and_leaves_the_model_trained(tmp_path):
    datamodule = ReIDDataModule(**TINY_DATA)
    datamodule.setup("fit")
    torch.manual_seed(0)
    model = CAMA(num_classes=datamodule.num_classes, backbone="resnet10", num_branches=2, width=16).eval()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    callback = SanityChecks(methods=("dist_cam", "ram", "fam", "gradcam"), every_n_epochs=1, num_samples=4)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, callbacks=[callback], default_root_dir=tmp_path,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(model, datamodule=datamodule, verbose=False)
    state = model.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    assert callback.last_result is not None
    assert callback.last_result.blocks == ["head", "conv5", "conv4", "conv3", "conv2", "conv1"]
    for method in ("dist_cam", "ram", "fam", "gradcam"):
        for measure in ("spearman", "spearman_abs", "ssim"):
            name = f"sanity/{method}/{measure}_conv1"
            assert float(trainer.callback_metrics[name]) == pytest.approx(callback.last_results[name])
        assert callback.last_results[f"sanity/{method}/spearman_conv1"] < 1.0
    assert len(callback.probes.indices) == 4
    assert callback.state_dict()["probe_indices"] == callback.probes.indices


def test_callback_is_off_by_default_and_sanity_maps_are_image_sized():
    assert not SanityChecks().schedule.due(pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False))
    with pytest.raises(ValueError):
        SanityChecks(every_n_epochs=-1)
    torch.manual_seed(0)
    model = CAMA(num_classes=3, backbone="resnet10", num_branches=2, width=4).eval()
    images = torch.randn(2, 3, 32, 16)
    maps = sanity_maps(model, images, images.flip(0), ("dist_cam", "ram", "fam"))
    shapes = {k: tuple(v.shape) for k, v in maps.items()}
    assert shapes == dict.fromkeys(("dist_cam", "ram", "fam"), (2, 32, 16))
    # the forward-only maps are raw (signed, not min-max normalised): the summed branch maps, upsampled
    explainer = ModelExplainer(model)
    features = explainer.features(torch.cat([images, images.flip(0)]))
    raw = explainer.raw_maps("dist_cam", features.select([0, 1]), features.embedding[2:])
    raw = raw.sum(dim=1, keepdim=True)
    expected = F.interpolate(raw, size=(32, 16), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(maps["dist_cam"], expected, atol=1e-6)
