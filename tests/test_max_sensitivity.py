"""Max-sensitivity (Yeh et al. 2019, SENS_MAX): the Monte-Carlo estimate against its definition written
out as a loop, against the exact maximum of a linear map over the L-inf ball, its chunk invariance,
the Metric's mean and interval, and the sanity-check callback's logged value on a tiny re-ID run."""

from __future__ import annotations

import itertools
import math
import statistics
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from callbacks.sanity_checks import SanityChecks, sanity_maps
from cama.explain import max_sensitivity
from cama.metrics import MaxSensitivity
from cama.models import CAMA
from datamodules import ReIDDataModule
from tests.test_sanity import TINY_DATA

pytestmark = pytest.mark.usefixtures("one_thread")


def naive_max_sensitivity(explain, images, radius, samples, seed, mean=None, std=None, normalise=True):
    """The definition, one sample and one image at a time: the noise ``U[-r, r]`` drawn per sample as one
    ``images``-shaped draw, added to the ``[0, 1]`` picture when ``mean`` / ``std`` are given."""
    generator = torch.Generator().manual_seed(seed)
    count = images.shape[0]
    best = [0.0] * count
    base = [explain(images[b : b + 1], torch.tensor([b]))[0] for b in range(count)]
    for _ in range(samples):
        u = (2 * torch.rand(images.shape, generator=generator) - 1) * radius
        for b in range(count):
            if std is None:
                y = images[b] + u[b]
            else:
                m, s = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
                y = ((images[b] * s + m) + u[b] - m) / s  # noise on the picture, normalised again
            change = math.sqrt(float(((explain(y[None], torch.tensor([b]))[0] - base[b]) ** 2).sum()))
            if normalise:
                change /= math.sqrt(float((base[b] ** 2).sum()))
            best[b] = max(best[b], change)
    return torch.tensor(best)


def squares(y, rows):
    return y.sum(dim=1) ** 2  # [N, H, W]: a non-linear map of the input


# --------------------------------------------------------------------------------------------------
# the pure function
# --------------------------------------------------------------------------------------------------
def test_matches_the_definition_written_out():
    images = torch.rand(3, 2, 4, 5, generator=torch.Generator().manual_seed(0))
    weights = torch.tensor([1.0, -2.0, 0.5])

    def per_image(y, rows):  # uses `rows`: each image its own weight
        return squares(y, rows) * weights[rows].view(-1, 1, 1)

    for explain in (squares, per_image):
        for normalise in (True, False):
            expected = naive_max_sensitivity(explain, images, 0.05, 6, seed=3, normalise=normalise)
            got = max_sensitivity(explain, images, 0.05, 6, torch.Generator().manual_seed(3),
                                  normalise=normalise, chunk_size=4)
            assert got.tolist() == pytest.approx(expected.tolist(), rel=1e-5)
            assert bool((got > 0).all())
    # with std: the radius is on the [0, 1] picture scale
    mean, std = [0.4, 0.6], [0.2, 0.5]
    expected = naive_max_sensitivity(squares, images, 0.02, 5, seed=1, mean=mean, std=std)
    got = max_sensitivity(squares, images, 0.02, 5, torch.Generator().manual_seed(1), std=std)
    assert got.tolist() == pytest.approx(expected.tolist(), rel=1e-5)


def test_chunk_size_does_not_change_the_result():
    images = torch.rand(5, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    weights = torch.arange(1.0, 6.0)

    def both(y, rows):
        return {"squares": squares(y, rows), "scaled": y * weights[rows].view(-1, 1, 1, 1)}

    results = [
        max_sensitivity(both, images, 0.1, 7, torch.Generator().manual_seed(2), chunk_size=chunk)
        for chunk in (1, 2, 3, 5, 7, 11, 64)
    ]
    for result in results[1:]:
        assert result.keys() == {"squares", "scaled"}
        for name in result:
            assert torch.equal(result[name], results[0][name])


def test_linear_map_stays_below_the_exact_maximum_and_approaches_it():
    """For Phi(x) = A x, max_{||d||_inf <= r} ||A d||_2 is attained at a vertex d in {-r, r}^n (a convex
    function on a polytope): r * max_v ||A v||, enumerated over the 16 vertices of a 4-element input."""
    g = torch.Generator().manual_seed(1)
    matrix = torch.randn(3, 4, generator=g)
    images = torch.rand(5, 1, 2, 2, generator=g)
    radius = 0.1

    def linear(y, rows):
        return y.flatten(1) @ matrix.T

    vertices = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=4)))
    exact = radius * float(torch.linalg.vector_norm(vertices @ matrix.T, dim=1).max())
    few = max_sensitivity(linear, images, radius, 10, torch.Generator().manual_seed(0), normalise=False)
    many = max_sensitivity(linear, images, radius, 4000, torch.Generator().manual_seed(0), normalise=False)
    assert bool((many <= exact * (1 + 1e-5)).all())
    assert bool((many >= few).all())  # the first 10 draws are the same: more samples never lower it
    assert bool((many >= 0.9 * exact).all())
    assert float(few.min()) < 0.9 * exact  # ... and a few samples do not reach it yet
    # normalised: the same maxima divided by ||A x||
    relative = max_sensitivity(linear, images, radius, 4000, torch.Generator().manual_seed(0))
    norms = torch.linalg.vector_norm(linear(images, None), dim=1)
    assert relative.tolist() == pytest.approx((many / norms).tolist())


def test_a_constant_map_has_zero_sensitivity_and_a_zero_map_that_moves_none():
    images = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    for value in (0.0, 2.5):
        for normalise in (True, False):
            got = max_sensitivity(lambda y, rows: torch.full((y.shape[0], 6, 6), value), images, 0.3, 4,
                                  torch.Generator().manual_seed(0), normalise=normalise)
            assert got.tolist() == [0.0] * 4
    # the map is zero on the images and moves with the noise: no relative change is defined
    moved = max_sensitivity(lambda y, rows: y - images[rows], images, 0.3, 4,
                            torch.Generator().manual_seed(0), chunk_size=3)
    assert bool(moved.isnan().all())
    # a zero radius moves nothing
    still = max_sensitivity(squares, images, 0.0, 3, torch.Generator().manual_seed(0))
    assert still.tolist() == [0.0] * 4


def test_bad_input_is_named():
    images = torch.rand(2, 3, 4, 4)
    for kwargs, name in (
        (dict(radius=-0.1), "radius"), (dict(radius=float("nan")), "radius"), (dict(samples=0), "samples"),
        (dict(chunk_size=0), "chunk_size"), (dict(std=[0.5, 0.5]), "std"), (dict(std=[0.5, 0.0, 1.0]), "std"),
    ):
        arguments = dict(radius=0.1, samples=2) | kwargs
        with pytest.raises(ValueError, match=name):
            max_sensitivity(squares, images, **arguments)
    with pytest.raises(ValueError, match="maps"):
        max_sensitivity(lambda y, rows: y[:1], images, 0.1, 2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_the_gpu_chunks_do_not_change_the_result_and_the_definition_holds():
    """CUDA's generator draws by offsets: the per-sample draw order still makes the chunks irrelevant."""
    images = torch.rand(5, 2, 3, 3, generator=torch.Generator().manual_seed(1)).cuda()
    results = [
        max_sensitivity(squares, images, 0.1, 7, torch.Generator(device="cuda").manual_seed(2), chunk_size=c)
        for c in (1, 3, 64)
    ]
    assert results[0].device.type == "cuda"
    for result in results[1:]:
        assert torch.equal(result, results[0])
    generator = torch.Generator(device="cuda").manual_seed(2)
    base = squares(images, None)
    expected = torch.zeros(5, device="cuda")
    for _ in range(7):
        y = images + (2 * torch.rand(images.shape, generator=generator, device="cuda") - 1) * 0.1
        change = torch.linalg.vector_norm((squares(y, None) - base).flatten(1), dim=1)
        expected = torch.maximum(expected, change / torch.linalg.vector_norm(base.flatten(1), dim=1))
    torch.testing.assert_close(results[0], expected)


# --------------------------------------------------------------------------------------------------
# the Metric
# --------------------------------------------------------------------------------------------------
def test_metric_mean_and_interval():
    first, second = [0.2, 0.5, float("nan")], [0.1, 0.9]
    metric = MaxSensitivity()
    metric.update(torch.tensor(first))
    metric.update(torch.tensor(second))
    values = [0.2, 0.5, 0.1, 0.9]  # NaN left out
    out = metric.compute()
    assert float(out["max_sensitivity"]) == pytest.approx(statistics.mean(values))
    assert float(out["max_sensitivity_ci95"]) == pytest.approx(1.96 * statistics.stdev(values) / 2.0)
    single = MaxSensitivity()
    single.update(torch.tensor([0.3]))
    assert float(single.compute()["max_sensitivity_ci95"]) == 0.0


# --------------------------------------------------------------------------------------------------
# the callback
# --------------------------------------------------------------------------------------------------


class EpochQueries(Callback):
    """Placed after ``checks``: this epoch's query and reference images, chosen again by ``checks``'s
    own :meth:`SanityChecks.queries` from the epoch's provider and gallery (the same inputs the check
    had, the model restored by then)."""

    def __init__(self, checks: SanityChecks) -> None:
        self.checks = checks
        self.pairs = None

    def on_validation_epoch_end(self, trainer, pl_module):
        inputs = self.checks.probes.epoch_inputs(trainer, pl_module, warnings.warn)
        self.pairs = self.checks.queries(pl_module, *inputs)


def test_callback_logs_the_max_sensitivity_of_each_method(tmp_path):
    datamodule = ReIDDataModule(**TINY_DATA)
    datamodule.setup("fit")
    torch.manual_seed(0)
    model = CAMA(num_classes=datamodule.num_classes, backbone="resnet10", num_branches=2, width=8).eval()
    methods = ("dist_cam", "ram", "gradcam")
    callback = SanityChecks(methods=methods, every_n_epochs=1, num_samples=4, seed=5,
                            sensitivity_radius=0.05, sensitivity_samples=3, sensitivity_chunk_size=5)
    queries = EpochQueries(callback)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, callbacks=[callback, queries], default_root_dir=tmp_path,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(model, datamodule=datamodule, verbose=False)
    images, references = queries.pairs
    count = images.shape[0]
    assert count >= 2

    def explain(perturbed, rows):  # each method's map against the fixed reference (re-forwarded here)
        return sanity_maps(model, perturbed, references[rows], methods)

    expected = max_sensitivity(explain, images, 0.05, 3, torch.Generator().manual_seed(5), std=datamodule.std)
    for method in methods:
        values = expected[method].tolist()
        logged = float(trainer.callback_metrics[f"sanity/{method}/max_sensitivity"])
        interval = float(trainer.callback_metrics[f"sanity/{method}/max_sensitivity_ci95"])
        assert logged == pytest.approx(statistics.mean(values), rel=1e-3)
        half_width = 1.96 * statistics.stdev(values) / math.sqrt(count)
        assert interval == pytest.approx(half_width, rel=1e-2, abs=1e-6)
        assert logged > 0
    assert "sanity/ram/spearman_conv1" in trainer.callback_metrics  # the randomization test still runs


def test_callback_sensitivity_off_and_bad_options():
    assert SanityChecks().sensitivity_samples == 8 and SanityChecks().sensitivity_radius == 0.02
    off = SanityChecks(sensitivity_samples=0)
    assert off.sensitivity(None, torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), None) == {}
    bad = (dict(sensitivity_radius=-1.0), dict(sensitivity_samples=-1), dict(sensitivity_chunk_size=0))
    for kwargs in bad:
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            SanityChecks(**kwargs)
