"""``FaithfulnessBudget``: the period of the perturbed forwards, worked out by hand."""

from __future__ import annotations

import pytest
import torch

from callbacks.faithfulness_budget import FaithfulnessBudget


def pattern(budget: FaithfulnessBudget, forwards: int, images: int, epochs: int) -> list[int]:
    return [i for i in range(epochs) if budget.due(forwards, images)]


def test_the_period_is_the_smallest_that_keeps_the_average_within_the_budget():
    # 316 forwards against 743 images: 42.5%; 5% allows 37.15 a epoch: 316 / 8 = 39.5 > 37.15, 316 / 9 = 35.1
    said: list[str] = []
    budget = FaithfulnessBudget(0.05)
    assert budget.due(316, 743, said.append) and budget.period == 9
    assert [i + 1 for i in range(20) if budget.due(316, 743)] == [9, 18]  # epochs 0, 9, 18 run
    assert len(said) == 1 and "once every 9 scored epochs" in said[0] and "743" in said[0]
    # exactly at the budget: 100 forwards, 1000 images, 10% -> every epoch; 101 -> every second
    assert pattern(FaithfulnessBudget(0.1), 100, 1000, 4) == [0, 1, 2, 3]
    assert pattern(FaithfulnessBudget(0.1), 101, 1000, 4) == [0, 2]


def test_no_budget_or_no_forwards_is_every_epoch_and_silent():
    said: list[str] = []
    assert pattern(FaithfulnessBudget(None), 10_000, 10, 5) == [0, 1, 2, 3, 4]
    budget = FaithfulnessBudget(0.01)
    assert [budget.due(0, 10, said.append) for _ in range(3)] == [True] * 3 and not said


def test_the_period_is_fixed_at_the_first_epoch_and_a_resumed_run_keeps_the_rhythm():
    budget = FaithfulnessBudget(0.05)
    first = [budget.due(316, 743) for _ in range(4)]
    resumed = FaithfulnessBudget(0.05)
    resumed.load_state_dict(budget.state_dict())
    # the resumed one sees a bigger validation, but keeps period 9 and the count
    assert first + [resumed.due(316, 100_000) for _ in range(14)] == [i % 9 == 0 for i in range(18)]
    fresh = FaithfulnessBudget(0.05)
    fresh.load_state_dict({})  # an older checkpoint: the period is fixed at the next epoch
    assert fresh.period == 0 and fresh.due(316, 100_000) and fresh.period == 1


@pytest.mark.parametrize("bad", [0, -0.1, "0.1", float("nan")])
def test_a_budget_must_be_positive(bad):
    with pytest.raises(ValueError, match="faithfulness_budget"):
        FaithfulnessBudget(bad)


def test_the_callback_logs_ad_ic_and_curves_on_the_budget_s_epochs_under_its_own_prefix(tmp_path):
    """A budget that the tiny validation's perturbed forwards exceed by between 1 and 2 times: AD / IC and
    the curves on the first and third of three validations, the other scores on all three; a second
    prefix puts the curves under ``<prefix>/faith``."""
    from cama.models import CAMA
    from callbacks.localization_metrics import LocalizationMetrics
    from datamodules import ReIDDataModule
    from tests.test_callbacks import TINY_DATA, validate

    datamodule = ReIDDataModule(**TINY_DATA)
    datamodule.setup("fit")
    torch.manual_seed(0)
    model = CAMA(num_classes=datamodule.num_classes, backbone="resnet10", num_branches=2).eval()
    images = len(datamodule.eval_dataset)
    forwards = 2 * 2 + 1 * (1 + 2 * 4 * 1)  # AD / IC: 2 probes x 2 methods; curves: 1 probe, 4 maps, 2 steps
    callback = LocalizationMetrics(
        methods=["ram", "fam"], num_samples=4, num_faithfulness_samples=2, deletion_samples=1,
        deletion_steps=2,
        prefix="mine", faithfulness_budget=forwards / images / 1.5,
    )
    assert callback.scorer.perturbed_forwards(4) == forwards
    logged = []
    for _ in range(3):
        validate(model, datamodule, [callback], tmp_path)
        logged.append(set(callback.last_results))
    assert callback.budget.period == 2
    faithful = {
        "mine/ram/ad", "mine/fam/ic", "mine/faith/ram/deletion_auc", "mine/faith/random/insertion_ap_auc"
    }
    assert faithful <= logged[0] and faithful <= logged[2] and not faithful & logged[1]
    perturbed = {k for k in logged[0] if k.endswith(("/ad", "/ic", "_ci95")) or "/faith/" in k}
    assert logged[0] - logged[1] == perturbed
    assert not any(k.startswith("faith/") for k in logged[0])


def test_the_few_shot_scorer_skips_ad_ic_and_curves_off_budget_and_counts_them():
    """``EpisodeScorer``: with ``faithfulness=False`` no masked forward and no AD / IC or curve logged; its
    ``perturbed_forwards`` is the count the forwards written out give (150 x 2 + 8 x (1 + 2 x 4 x 3))."""
    from cama.map_scoring import CurveOptions, EpisodeScorer

    scorer = EpisodeScorer(["dist_cam", "fam"], 150, curves=CurveOptions(samples=8, steps=4))
    assert scorer.perturbed_forwards() == 150 * 2 + 8 * (1 + 2 * 4 * 3) == 500
    scorer.start_epoch(faithfulness=False)
    assert scorer.faithfulness_left == 0 and scorer.curves_done == scorer.curves.samples
    scorer.start_epoch()
    assert scorer.faithfulness_left == 150 and scorer.curves_done == 0

