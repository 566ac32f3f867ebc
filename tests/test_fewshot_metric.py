"""Few-shot accuracy and its 95% confidence interval: formula, Metric vs functional, DDP-style merge."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cama.metrics import FewShotAccuracy, episode_accuracies, few_shot_accuracy_ci


def test_interval_formula_population_and_sample_std():
    acc = [0.6, 0.8, 1.0, 0.4, 0.7]
    mean, ci = few_shot_accuracy_ci(acc)
    assert float(mean) == pytest.approx(np.mean(acc))
    assert float(ci) == pytest.approx(1.96 * np.std(acc) / math.sqrt(5))  # population std (numpy, FEAT)
    _, ci_sample = few_shot_accuracy_ci(acc, unbiased=True)
    assert float(ci_sample) == pytest.approx(1.96 * np.std(acc, ddof=1) / math.sqrt(5))
    _, ci90 = few_shot_accuracy_ci(acc, z=1.645)
    assert float(ci90) == pytest.approx(1.645 * np.std(acc) / math.sqrt(5))
    assert float(few_shot_accuracy_ci([0.5])[1]) == 0.0
    with pytest.raises(ValueError):
        few_shot_accuracy_ci([])


def test_episode_accuracies_from_labels_or_logits():
    preds = torch.tensor([[0, 1, 2, 2], [1, 1, 1, 1]])
    target = torch.tensor([[0, 1, 2, 0], [1, 0, 0, 0]])
    assert episode_accuracies(preds, target).tolist() == [0.75, 0.25]
    logits = torch.nn.functional.one_hot(preds, 3).float()
    assert episode_accuracies(logits, target).tolist() == [0.75, 0.25]
    assert episode_accuracies(preds[0], target[0]).tolist() == [0.75]
    with pytest.raises(ValueError):
        episode_accuracies(preds, target[0])


def test_metric_matches_functional_form_and_merges_like_ddp():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (40, 15), generator=g)
    preds = torch.where(torch.rand(40, 15, generator=g) < 0.7, target, torch.randint(0, 5, (40, 15), generator=g))
    per_episode = (preds == target).double().mean(1)
    mean, ci = few_shot_accuracy_ci(per_episode)
    # independent of the shared formula: numpy's population std
    assert float(mean) == pytest.approx(float(np.mean(per_episode.numpy())), abs=1e-12)
    assert float(ci) == pytest.approx(1.96 * float(np.std(per_episode.numpy())) / math.sqrt(40), abs=1e-12)

    metric = FewShotAccuracy()
    for e in range(40):
        metric.update(preds[e], target[e])
    out = metric.compute()
    assert float(out["acc"]) == pytest.approx(float(mean), abs=1e-12)
    assert float(out["acc_ci95"]) == pytest.approx(float(ci), abs=1e-12)
    assert int(out["episodes"]) == 40
    assert float(out["acc_std"]) == pytest.approx(float(per_episode.std(unbiased=False)), abs=1e-12)

    # two "processes", each with half of the episodes: summing the states gives the same numbers
    halves = [FewShotAccuracy(), FewShotAccuracy()]
    halves[0].update(preds[:25], target[:25])
    halves[1].update(preds[25:], target[25:])
    merged = FewShotAccuracy()
    for name in ("sum_acc", "sum_sq_acc", "num_episodes"):
        setattr(merged, name, getattr(halves[0], name) + getattr(halves[1], name))
    merged._update_count = 1
    assert float(merged.compute()["acc_ci95"]) == pytest.approx(float(ci), abs=1e-12)
    for name, reduce in merged._reductions.items():
        assert reduce.__name__ == "dim_zero_sum", name

    metric.reset()
    assert int(metric.num_episodes) == 0
