"""The main job's explanation callbacks end to end: ``train.py fit`` on a tiny synthetic set.

The run's TensorBoard event file, read back with TensorBoard's own reader, holds an image per
enabled method (and the ranking lists) and the ``loc/...`` scalars for every validation epoch, the
baselines and thresholds as text (not as scalar curves), ``hp_metric`` = the best monitored value, the
hyperparameters of this data set only and a custom-scalars layout that names logged tags; two
processes give the localization numbers of one. Subprocesses as in ``test_train_cli.py``.
"""

from __future__ import annotations

import json
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
    # two runs: the scalars' (the logger's) and the pictures' (callbacks.event_file), one file each
    assert sorted(p.relative_to(run).parent.as_posix() for p in run.rglob("events.out.tfevents.*")) == [
        ".", "explanations"
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
    for tag in expected_scalars:
        assert tag in scalars.Tags()["scalars"], f"{tag} missing"
        values = scalars.Scalars(tag)
        assert [v.step for v in values] == validation_steps, tag
        assert all(v.value == v.value for v in values), f"{tag} is NaN"  # noqa: PLR0124


def test_two_processes_give_the_localization_numbers_of_one(fitted, tmp_path):
    expected = {k: v for k, v in metrics_json(fitted, "fit").items() if k.startswith("loc/")}
    assert len(expected) > 40
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
    session, content = hparams_session(fitted)
    names = set(session.hparams)
    assert {"dataset", "synthetic/num_train_ids", "num_branches", "oap_weight"} <= names
    assert session.hparams["dataset"].string_value == "synthetic"
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
        matched = [t for t in scalars if any(re.search(p, t) for p in patterns)]
        assert matched, f"chart {title} matches no logged tag"
    energy = [t for t in scalars if any(re.search(p, t) for p in charts["loc/*/energy"])]
    assert sorted(energy) == sorted(f"loc/{m}/energy" for m in METHODS)  # each method's main score
