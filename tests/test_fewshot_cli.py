"""End to end: ``train.py fit`` on a tiny protonet_synthetic configuration (a subprocess, CPU), then test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "protonet_synthetic.yaml"
TINY = [
    "--trainer.max_epochs", "2",
    "--trainer.check_val_every_n_epoch", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--data.init_args.image_size", "[32, 32]",
    "--data.init_args.synthetic.height", "32", "--data.init_args.synthetic.width", "32",
    "--data.init_args.synthetic.num_classes", "15",
    "--data.init_args.synthetic.few_shot_splits", "[5, 5, 5]",
    "--data.init_args.synthetic.images_per_class", "6",
    "--data.init_args.train_way", "5",
    "--data.init_args.train_shot", "1",
    "--data.init_args.train_query", "2",
    "--data.init_args.eval_query", "3",
    "--data.init_args.train_episodes", "3",
    "--data.init_args.val_episodes", "4",
    "--data.init_args.test_episodes", "6",
    "--data.init_args.num_workers", "0",
    "--data.init_args.padding", "2",
    "--model.init_args.pretrain_epochs", "1",
    "--model.init_args.classifier_weight", "0.5",
]

pytestmark = pytest.mark.slow


def test_fit_logs_episode_accuracy_with_interval_then_tests_best_checkpoint(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "fit", "--config", str(CONFIG), *TINY],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"train.py fit failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    runs = tmp_path / "runs" / "protonet_synthetic"
    fit = json.loads(next(runs.rglob("fit_metrics.json")).read_text())
    test = json.loads(next(runs.rglob("test_metrics.json")).read_text())
    for key in ("Val/acc", "Val/acc_ci95", "val/loss", "train/loss", "train/episode_loss", "train/class_loss"):
        assert key in fit, f"{key} missing from {sorted(fit)}"
    assert fit["val/episodes"] == 4 and test["test/episodes"] == 6
    # 5-way episodes of 3 queries per class: the accuracy is a count of right answers over 15 * E
    for acc, episodes in ((fit["Val/acc"], 4), (test["test/acc"], 6)):
        right = acc * 15 * episodes
        assert right == pytest.approx(round(right), abs=1e-3) and 0 <= round(right) <= 15 * episodes
    checkpoints = runs / "version_0" / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    assert any(p.name.startswith("best-epoch") for p in checkpoints.iterdir())
    assert list(runs.rglob("events.out.tfevents.*"))
