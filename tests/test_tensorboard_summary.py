"""The HPARAMS order and metrics and the per-method runs' values, without a training run."""

from __future__ import annotations

import torch

from callbacks.tensorboard_summary import (
    TensorBoardSummary,
    custom_scalars_layout,
    hparams_metrics,
    reading_order,
)


def test_a_sort_by_name_gives_the_readers_order_model_first_then_data():
    model = {"backbone": "conv4", "metric": "euclidean", "lr": 1e-3, "scale": None, "_class_path": "x"}
    data = {"dataset": "synthetic", "eval_shot": 1, "eval_way": 5, "padding": 8, "split": (1, 2)}
    ranked = reading_order(model, data)
    names = [name.split(" ", 1)[1] for name in sorted(ranked)]  # what TensorBoard's HPARAMS shows
    assert names == ["lr", "backbone", "metric", "eval_way", "eval_shot", "dataset", "scale", "padding", "split"]
    assert ranked["07 scale"] == "None" and ranked["09 split"] == "(1, 2)" and ranked["01 lr"] == 1e-3


def test_hparams_metrics_are_the_headline_their_test_values_and_hp_metric():
    assert hparams_metrics(["Val/acc", "Val/acc_ci95"]) == ["Val/acc", "Val/acc_ci95", "test/acc", "test/acc_ci95",
                                                           "hp_metric"]


def test_each_methods_scores_go_to_its_run_and_the_baselines_to_none():
    metrics = {"loc/ram/energy": 0.5, "loc/ram/box_acc": 0.25, "loc/fam/energy": 0.75, "loc/ram/ic": 3.0,
               "loc/center_baseline/energy": 0.1, "Val/mAP": 0.4}
    assert TensorBoardSummary().method_scores(metrics) == {
        "ram": {"Val_loc/energy": 0.5, "Val_loc/box_acc": 0.25}, "fam": {"Val_loc/energy": 0.75}}
    charts = custom_scalars_layout("CAMA", ["Val/mAP"], "loc", ["energy"])["CAMA"]
    assert charts["Val_loc/energy (one line per method)"] == ["Multiline", ["^Val_loc/energy$"]]
    assert "hp_metric" not in charts  # a one-series chart: TensorBoard would trim its first and last points


def test_nested_options_are_listed_by_their_outer_slash_inner_names():
    data = {"dataset": "synthetic", "synthetic": {"num_train_ids": 7, "size": {"height": 64}}}
    ranked = reading_order({"lr": 0.1}, data)
    assert {name.split(" ", 1)[1]: value for name, value in ranked.items()} == {
        "lr": 0.1, "dataset": "synthetic", "synthetic/num_train_ids": 7, "synthetic/size/height": 64}


def _validation(summary: TensorBoardSummary, map_value: float, rank1: float) -> None:
    """One validation end of a run monitoring Val/mAP (no logger: only the callback's own record)."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.trainer.states import TrainerFn

    trainer = SimpleNamespace(
        sanity_checking=False, is_global_zero=True, loggers=[], global_step=10,
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        checkpoint_callbacks=[ModelCheckpoint(monitor="Val/mAP", mode="max")],
        callback_metrics={"Val/mAP": torch.tensor(map_value, dtype=torch.float64),
                          "Val/rank1": torch.tensor(rank1, dtype=torch.float64)},
    )
    model = SimpleNamespace(headline_metrics=lambda: ["Val/mAP", "Val/rank1"])
    summary.on_validation_end(trainer, model)


def test_a_resumed_run_keeps_its_best_so_far_line():
    before = TensorBoardSummary()
    _validation(before, 0.5, 0.6)
    resumed = TensorBoardSummary()
    resumed.load_state_dict(before.state_dict())
    _validation(resumed, 0.4, 0.7)  # worse than the best before the resume: the line stays at 0.5
    assert resumed.best_values == {"Val/mAP": 0.5, "Val/rank1": 0.6}
    fresh = TensorBoardSummary()
    _validation(fresh, 0.4, 0.7)
    assert fresh.best_values == {"Val/mAP": 0.4, "Val/rank1": 0.7}
