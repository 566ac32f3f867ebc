"""The main job's explanation callbacks end to end: ``train.py fit`` on a tiny synthetic set.

The run's TensorBoard event file, read back with TensorBoard's own reader, holds an image per
enabled method (and the ranking lists) and the ``val/loc/...`` scalars for every validation epoch;
two processes give the localization numbers of one. Subprocesses as in ``test_train_cli.py``.
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
    "--data.init_args.synthetic_train_ids",
    "10",
    "--data.init_args.synthetic_test_ids",
    "8",
    "--data.init_args.synthetic_distractors",
    "6",
    "--data.init_args.synthetic_junk",
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
    events = sorted((fitted / "runs" / "cama_synthetic").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = EventAccumulator(str(events[0]), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    validation_steps = [event.step for event in accumulator.Scalars("val/mAP")]
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
    expected_scalars = [f"val/loc/{m}/{n}" for m in METHODS for n in names] + [
        "val/loc/center_baseline/box_acc",
        "val/loc/uniform_baseline/energy",
        "val/loc/branch_overlap_iou",
    ]
    for tag in expected_scalars:
        assert tag in tags["scalars"], f"{tag} missing"
        values = accumulator.Scalars(tag)
        assert [v.step for v in values] == validation_steps, tag
        assert all(v.value == v.value for v in values), f"{tag} is NaN"  # noqa: PLR0124


def test_two_processes_give_the_localization_numbers_of_one(fitted, tmp_path):
    expected = {k: v for k, v in metrics_json(fitted, "fit").items() if k.startswith("val/loc/")}
    assert len(expected) > 40
    checkpoint = fitted / "runs" / "cama_synthetic" / "checkpoints" / "last.ckpt"
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
