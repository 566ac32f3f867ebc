"""The explanation callbacks' state: one name for the probes (``probe_indices``), the keys of older
checkpoints still read, the state keys unchanged, the schedule's epochs counted."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest

from callbacks.base import EpochSchedule
from callbacks.explanation_images import ExplanationImages
from callbacks.fewshot_explanations import FewShotExplanations
from callbacks.localization_metrics import LocalizationMetrics
from callbacks.sanity_checks import SanityChecks


@pytest.mark.parametrize("make", [LocalizationMetrics, SanityChecks, ExplanationImages])
def test_the_probes_are_kept_as_probe_indices(make):
    callback = make()
    callback.probes.indices = [4, 1, 7]
    state = callback.state_dict()
    budget = {"faithfulness_period": 0, "faithfulness_epochs": 0} if make is LocalizationMetrics else {}
    assert state == {"validation_epochs": 0, "probe_indices": [4, 1, 7], **budget}
    restored = make()
    restored.load_state_dict(state)
    assert restored.probes.indices == [4, 1, 7]


@pytest.mark.parametrize("make", [LocalizationMetrics, SanityChecks])
def test_a_state_written_under_the_old_name_loads(make):
    """LocalizationMetrics and SanityChecks wrote ``sample_indices`` before: such a checkpoint still
    gives the same probes and the same rhythm."""
    old = {"validation_epochs": 3, "sample_indices": [9, 2, 5]}
    callback = make()
    callback.load_state_dict(old)
    assert callback.probes.indices == [9, 2, 5]
    assert callback.schedule.validation_epochs == 3
    budget = {"faithfulness_period": 0, "faithfulness_epochs": 0} if make is LocalizationMetrics else {}
    assert callback.state_dict() == {"validation_epochs": 3, "probe_indices": [9, 2, 5], **budget}


def test_the_state_keys_are_those_older_checkpoints_hold():
    assert LocalizationMetrics().state_key == "LocalizationMetrics{'prefix': 'loc'}"
    assert SanityChecks().state_key == "SanityChecks{'prefix': 'sanity'}"
    assert ExplanationImages().state_key == "ExplanationImages{'tag_prefix': 'explanations'}"
    assert FewShotExplanations().state_key == "FewShotExplanations{'prefix': 'loc', 'tag_prefix': 'explanations'}"
    assert FewShotExplanations().state_dict() == {
        "validation_epochs": 0, "faithfulness_period": 0, "faithfulness_epochs": 0
    }


def test_a_schedule_of_zero_is_never_due_and_still_counts_the_epochs():
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    never, every_other = EpochSchedule(0), EpochSchedule(2)
    worked = [(never.end_epoch(trainer), every_other.end_epoch(trainer)) for _ in range(4)]
    assert worked == [(False, True), (False, False), (False, True), (False, False)]
    assert never.validation_epochs == every_other.validation_epochs == 4
    with pytest.raises(ValueError, match="every_n_epochs"):
        EpochSchedule(-1)


@pytest.mark.parametrize("make", [LocalizationMetrics, ExplanationImages, FewShotExplanations])
def test_the_callbacks_that_always_run_need_a_positive_rhythm(make):
    with pytest.raises(ValueError, match="every_n_epochs must be >= 1"):
        make(every_n_epochs=0)
