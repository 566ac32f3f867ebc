"""The main job's explanation callbacks end to end: ``train.py fit`` on a tiny synthetic set.

The run's TensorBoard event file, read back with TensorBoard's own reader, holds an image per
enabled method (and the ranking lists) and the ``loc/...`` and ``faith/...`` scalars for every
validation epoch, the baselines and thresholds as text (not as scalar curves), ``hp_metric`` = the
best monitored value, the hyperparameters of this data set only and a custom-scalars layout that
names logged tags; two processes give the localization (and deletion / insertion) numbers of one.
Subprocesses as in ``test_train_cli.py``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "cama_synthetic.yaml"
TINY = [  # the overrides of test_train_cli.py
    "--trainer.check_val_every_n_epoch",
    "1",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--model.init_args.backbone",
    "resnet10",
    "--model.init_args.lr_step",
    "1",
    "--data.init_args.image_size",
    "[64, 32]",
    "--data.init_args.p",
    "4",
    "--data.init_args.k",
    "2",
    "--data.init_args.eval_batch_size",
    "32",
    "--data.init_args.num_workers",
    "0",
    "--data.init_args.synthetic.num_train_ids",
    "10",
    "--data.init_args.val_ids",
    "2",
    "--data.init_args.synthetic.num_test_ids",
    "8",
    "--data.init_args.synthetic.num_distractors",
    "6",
    "--data.init_args.synthetic.num_junk",
    "4",
]
METHODS = ("dist_cam", "ram", "fam")  # what configs/cama_synthetic.yaml enables
EPOCHS = 2

pytestmark = pytest.mark.slow


def run_cli(workdir: Path, *args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        result.returncode == 0
    ), f"train.py {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def metrics_json(workdir: Path, command: str) -> dict[str, float]:
    files = sorted((workdir / "runs").rglob(f"{command}_metrics.json"), key=os.path.getmtime)
    assert files, f"no {command}_metrics.json under {workdir}"
    return json.loads(files[-1].read_text())


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("explained")
    run_cli(
        workdir,
        "fit",
        "--config",
        str(CONFIG),
        *TINY,
        "--trainer.max_epochs",
        str(EPOCHS),
        "--test_after_fit",
        "false",
    )
    return workdir


def test_event_file_holds_images_and_localization_scalars_of_every_validation_epoch(fitted):
    run = fitted / "runs" / "cama_synthetic" / "version_0"
    # the scalars' run (the logger's), the pictures' (callbacks.event_file), the best-so-far line's and
    # one per method (callbacks.tensorboard_summary), one file each
    assert sorted(p.relative_to(run).parent.as_posix() for p in run.rglob("events.out.tfevents.*")) == [
        ".", "best", "dist_cam", "explanations", "fam", "ram"
    ]
    scalars = EventAccumulator(str(run), size_guidance={"scalars": 0})
    scalars.Reload()
    validation_steps = [event.step for event in scalars.Scalars("Val/mAP")]
    assert not scalars.Tags()["images"]
    accumulator = EventAccumulator(str(run / "explanations"), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert len(validation_steps) == EPOCHS  # the sanity check logs nothing
    expected_images = [f"explanations/{m}" for m in METHODS] + [
        "explanations/ranking/query_0",
        "explanations/ranking/query_1",
    ]
    for tag in expected_images:
        assert tag in tags["images"], f"{tag} missing from {tags['images']}"
        images = accumulator.Images(tag)
        assert [image.step for image in images] == validation_steps, tag
        assert (
            images[-1].width > 64
            and images[-1].height > 64
            and images[-1].encoded_image_string[:4] == b"\x89PNG"
        )
    names = [
        "box_iou",
        "box_acc",
        "top1_loc_err",
        "max_box_acc",
        "energy",
        "otsu_miou",
        "otsu_precision",
        "otsu_recall",
        "otsu_micro_f1",
        "ad",
        "ic",
        "center_box_acc",
    ]
    expected_scalars = [f"loc/{m}/{n}" for m in METHODS for n in names] + ["loc/branch_overlap_iou"]
    curves = ("deletion_auc", "insertion_auc", "deletion_ap_auc", "insertion_rr_auc")
    expected_scalars += [f"faith/{m}/{n}" for m in (*METHODS, "random", "center_prior") for n in curves]
    for tag in expected_scalars:
        assert tag in scalars.Tags()["scalars"], f"{tag} missing"
        values = scalars.Scalars(tag)
        assert [v.step for v in values] == validation_steps, tag
        assert all(v.value == v.value for v in values), f"{tag} is NaN"  # noqa: PLR0124


def test_two_processes_give_the_localization_numbers_of_one(fitted, tmp_path):
    expected = {k: v for k, v in metrics_json(fitted, "fit").items() if k.startswith(("loc/", "faith/"))}
    assert len(expected) > 40 and any(k.startswith("faith/") for k in expected)
    checkpoint = fitted / "runs" / "cama_synthetic" / "version_0" / "checkpoints" / "last.ckpt"
    run_cli(
        tmp_path,
        "validate",
        "--config",
        str(CONFIG),
        *TINY,
        "--ckpt_path",
        str(checkpoint),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
    )
    got = metrics_json(tmp_path, "validate")
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-4), key


def accumulator_of(workdir: Path) -> EventAccumulator:
    """The logger's run (scalars and text; the pictures are in its ``explanations`` run)."""
    run = workdir / "runs" / "cama_synthetic" / "version_0"
    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_baselines_and_thresholds_are_text_not_curves(fitted):
    accumulator = accumulator_of(fitted)
    scalars = accumulator.Tags()["scalars"]
    constants = [t for t in scalars if "baseline" in t or t.endswith("max_box_acc_tau")]
    assert constants == []
    baselines = accumulator.Tensors("loc/baselines/text_summary")  # add_text appends /text_summary
    assert len(baselines) == 1  # once, although the run validated EPOCHS times
    text = baselines[0].tensor_proto.string_val[0].decode()
    fit = metrics_json(fitted, "fit")  # ... and still in the metrics code reads
    for name in ("loc/center_baseline/box_iou", "loc/center_baseline/box_acc", "loc/uniform_baseline/energy"):
        assert f"`{name}` | {fit[name]:.4f}" in text, name
    thresholds = accumulator.Tensors("loc/thresholds/text_summary")
    assert len(thresholds) == EPOCHS
    last = thresholds[-1].tensor_proto.string_val[0].decode()
    for method in METHODS:
        assert f"`loc/{method}/max_box_acc_tau` | {fit[f'loc/{method}/max_box_acc_tau']:.4f}" in last


def test_hp_metric_is_the_monitored_value_of_the_best_epoch(fitted):
    accumulator = accumulator_of(fitted)
    monitored = [event.value for event in accumulator.Scalars("Val/mAP")]
    hp_metric = accumulator.Scalars("hp_metric")
    assert -1.0 not in [event.value for event in hp_metric]  # no default_hp_metric
    assert hp_metric[-1].value == pytest.approx(max(monitored), abs=1e-6)
    best = sorted((fitted / "runs" / "cama_synthetic" / "version_0" / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1 and f"mAP{max(monitored):.4f}" in best[0].name


def hparams_session(workdir: Path):
    from tensorboard.plugins.hparams import metadata

    accumulator = accumulator_of(workdir)
    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)
    return metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG]), content


def test_hparams_are_the_runs_own(fitted):
    session, _ = hparams_session(fitted)
    ranked = list(session.hparams)
    names = {name.split(" ", 1)[1] for name in ranked}
    # a sort by name (TensorBoard's HPARAMS) gives the reader's order: the model's main choices first
    order = [name.split(" ", 1)[1] for name in sorted(ranked)]
    assert order[:5] == ["lr", "num_branches", "oap_weight", "width", "backbone"]
    values = {name.split(" ", 1)[1]: value for name, value in session.hparams.items()}
    assert {"dataset", "synthetic/num_train_ids", "num_branches", "oap_weight"} <= names
    assert values["dataset"].string_value == "synthetic"
    # options of the data sets on disk (ReIDDataModule's signature) are not this run's
    assert not names & {"root", "test_dataset", "test_root", "cuhk03_variant", "camera_pattern",
                        "min_train_images", "check_images"}
    assert not any(name.startswith("_") for name in names)


def test_custom_scalars_layout_names_logged_tags(fitted):
    import re

    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    accumulator = accumulator_of(fitted)
    (event,) = accumulator.Tensors(metadata.CONFIG_SUMMARY_TAG)
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    scalars = accumulator.Tags()["scalars"]
    (category,) = layout.category
    charts = {chart.title: list(chart.multiline.tag) for chart in category.chart}
    assert {"Val/mAP", "Val/rank1", "Val/mINP"} <= charts.keys()
    for title, patterns in charts.items():
        if title.startswith("Val_loc/"):
            continue
        matched = [t for t in scalars if any(re.search(p, t) for p in patterns)]
        assert matched, f"chart {title} matches no logged tag"
    # one run per method (TensorBoard colours by run), each with its copy of loc/<method>/energy
    (pattern,) = charts["Val_loc/energy (one line per method)"]
    run = fitted / "runs" / "cama_synthetic" / "version_0"
    for method in METHODS:
        copies = EventAccumulator(str(run / method)).Reload()
        (tag,) = [t for t in copies.Tags()["scalars"] if re.search(pattern, t)]
        assert [e.value for e in copies.Scalars(tag)] == pytest.approx(
            [e.value for e in accumulator.Scalars(f"loc/{method}/energy")])


def test_best_run_holds_the_best_checkpoints_headline_values(fitted):
    """The run ``best`` repeats, at each validation, the headline values of the best epoch so far."""
    accumulator = accumulator_of(fitted)
    best = EventAccumulator(str(fitted / "runs" / "cama_synthetic" / "version_0" / "best")).Reload()
    curve = {tag: [e.value for e in accumulator.Scalars(tag)] for tag in ("Val/mAP", "Val/rank1")}
    expected_index = [max(range(i + 1), key=lambda j: curve["Val/mAP"][j]) for i in range(len(curve["Val/mAP"]))]
    for tag, values in curve.items():
        assert [e.value for e in best.Scalars(tag)] == pytest.approx([values[j] for j in expected_index])
    assert [e.step for e in best.Scalars("Val/mAP")] == [e.step for e in accumulator.Scalars("Val/mAP")]


def test_hparams_metrics_are_the_headline_and_test_metrics(fitted):
    from tensorboard.plugins.hparams import metadata

    content = accumulator_of(fitted).PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    metrics = [info.name.tag for info in experiment.metric_infos]
    assert metrics == ["Val/mAP", "Val/rank1", "Val/mINP", "test/mAP", "test/rank1", "test/mINP", "hp_metric"]


def time_series_y_range(values: list[float]) -> tuple[float, float]:
    """TensorBoard 2.21's TIME SERIES y-range with "Ignore outliers in chart scaling" on (its
    default), transcribed from its line chart: the sorted values of every series of the card, the
    entries ``ceil(0.05 (n - 1))`` and ``floor(0.95 (n - 1))`` (n > 2), widened by 5% on each side
    (before d3's rounding to nice ticks, which only widens it further)."""
    ordered = sorted(values)
    low, high = ordered[0], ordered[-1]
    if len(ordered) > 2:
        low, high = ordered[math.ceil(0.05 * (len(ordered) - 1))], ordered[math.floor(0.95 * (len(ordered) - 1))]
    pad = (high - low) * 0.05
    return low - pad, high + pad


def test_the_curves_first_and_highest_points_stay_in_the_y_range_of_its_chart(fitted):
    """With the ``best`` run's line in the card, the first and the highest Val/mAP points (the last,
    on a curve that ends at its best) are inside the y-range TensorBoard draws at its default
    settings, where the curve alone loses its highest point (and its lowest)."""
    run = fitted / "runs" / "cama_synthetic" / "version_0"
    curve = [e.value for e in accumulator_of(fitted).Scalars("Val/mAP")]
    best = [e.value for e in EventAccumulator(str(run / "best")).Reload().Scalars("Val/mAP")]
    low, high = time_series_y_range(curve + best)
    assert low <= curve[0] <= high and low <= max(curve) <= high
