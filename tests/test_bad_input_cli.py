"""Bad input through ``train.py``: the last lines say what is wrong, the exit status is 2, and smoke
runs (``fast_dev_run``, no logger) leave nothing loose in the working directory (subprocesses, CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cama.models import ProtoNet
from datamodules import write_reid_layout
from tests.test_train_cli import CONFIG, REPO, TINY

pytestmark = pytest.mark.slow


def train_py(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **env)
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=workdir, env=full_env,
                          capture_output=True, text=True, timeout=300)


def last_lines(result: subprocess.CompletedProcess, n: int = 3) -> str:
    return "\n".join([line for line in result.stderr.splitlines() if line.strip()][-n:])


def test_corrupt_ckpt_path_stops_before_lightning_reads_it(tmp_path):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"PK\x03\x04" + os.urandom(2000))  # a zip cut short
    result = train_py(tmp_path, "validate", "--config", str(CONFIG), *TINY, "--ckpt_path", str(bad))
    assert result.returncode == 2, result.stderr[-3000:]
    tail = last_lines(result)
    assert tail.startswith("train.py: error: CheckpointFileError: validate --ckpt_path") and str(bad) in tail
    assert "truncated" in tail and "weights_only" not in result.stderr


def test_missing_imagenet_weights_message_is_last(tmp_path):
    hub = tmp_path / "empty_hub"
    result = train_py(tmp_path, "fit", "--config", str(CONFIG), *TINY, "--model.init_args.backbone",
                      "resnet18", "--model.init_args.pretrained", "imagenet", TORCH_HOME=str(hub))
    assert result.returncode == 2, result.stderr[-3000:]
    tail = last_lines(result, 1)
    assert str(hub / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in tail
    assert "`pretrained: null`" in tail and "Union" not in tail


def test_init_from_of_another_model_stops_with_the_counts(tmp_path):
    other = tmp_path / "protonet.pt"
    torch.save(ProtoNet(num_classes=5).state_dict(), other)
    result = train_py(tmp_path, "fit", "--config", str(CONFIG), *TINY, "--trainer.max_epochs", "1",
                      "--model.init_args.init_from", str(other))
    assert result.returncode == 2, result.stderr[-3000:]
    tail = last_lines(result, 1)
    assert tail.startswith("train.py: error: InitFromMismatchError: init_from " + str(other))
    assert "0 of its" in tail and "the file holds" in tail and "init_from_min_match: 0" in tail


def test_zero_byte_gallery_image_stops_fit_at_setup(tmp_path):
    root = write_reid_layout(tmp_path / "Market", "market1501", seed=1, progress=False, num_train_ids=4,
                             num_test_ids=3, num_cameras=2, cameras_per_id=(2, 2), images_per_camera=(1, 1),
                             query_cameras=1, num_distractors=2, num_junk=1)
    bad = sorted((root / "bounding_box_test").glob("*.jpg"))[0]
    bad.write_bytes(b"")
    result = train_py(tmp_path, "fit", "--config", str(CONFIG), *TINY, "--data.init_args.dataset", "market1501",
                      "--data.init_args.root", str(root))
    assert result.returncode == 2, result.stderr[-3000:]
    tail = last_lines(result, 4)
    assert "train.py: error: UnreadableImageError: 1 of the" in tail and f"{bad}: empty file (0 bytes)" in tail
    assert "check_images: false" in tail
    assert "Epoch 0" not in result.stdout + result.stderr


def _loose(workdir: Path, before: set[str]) -> list[str]:
    """New entries of ``workdir`` that the repository's .gitignore does not cover."""
    new = sorted(set(os.listdir(workdir)) - before)
    names = [f"{n}/" if (workdir / n).is_dir() else n for n in new]
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", "--stdin"],
                             input="\n".join(names), capture_output=True, text=True).stdout.split()
    return [n for n in names if n not in ignored]


@pytest.mark.parametrize("mode", [
    ["--trainer.fast_dev_run", "true"],
    # no logger: LearningRateMonitor needs one, so the config's callbacks are dropped too
    ["--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.max_epochs", "1",
     "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"],
], ids=["fast_dev_run", "no_logger"])
def test_smoke_runs_leave_nothing_loose_in_the_working_directory(tmp_path, mode):
    before = set(os.listdir(tmp_path))
    result = train_py(tmp_path, "fit", "--config", str(CONFIG), *TINY, *mode)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _loose(tmp_path, before) == []
    assert not list(tmp_path.glob("*.json")) and not (tmp_path / "explanations").exists()
    assert list((tmp_path / "runs").rglob("test_metrics.json")), "the metrics go under runs/"


@pytest.mark.parametrize("items, message", [
    (["synthetic=null", "synthetic.seed=2"], "sets a field of 'synthetic', which an earlier item set to None"),
    (["synthetic.=3"], "has an empty name between its dots"),
])
def test_explain_data_overrides_that_cannot_nest_are_named(items, message):
    import explain

    with pytest.raises(explain.ExplainError, match=message):
        explain.parse_data_overrides(items)


def test_an_older_config_with_flat_synthetic_options_is_told_their_nested_names(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  class_path: datamodules.ReIDDataModule\n  init_args:\n    dataset: synthetic\n"
                   "    synthetic_train_ids: 8\n    synthetic_size: 32\n")
    result = train_py(tmp_path, "fit", "--config", str(CONFIG), "--config", str(old), *TINY)
    assert result.returncode == 2, result.stderr[-3000:]
    assert last_lines(result, 1) == (
        f"train.py: error: ConfigError: {old}: the data option synthetic_train_ids is now synthetic.num_train_ids; "
        "synthetic_size is now synthetic.height and synthetic.width (the synthetic generator's options are one "
        "nested mapping, docs/data.md)")
