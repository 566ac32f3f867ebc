"""The retrieval configs through train.py's LightningCLI: YAML -> loss / miner objects (in-process,
no training) and a tiny end-to-end ``fit`` + ``test`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml
from pytorch_metric_learning import losses, miners

from datamodules.reid import DatasetLayoutError
from datamodules.synthetic import write_cub_layout
from train import CLI

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = REPO / "configs" / "retrieval_synthetic.yaml"
CUB = REPO / "configs" / "retrieval_cub200.yaml"
TINY = [
    "--trainer.check_val_every_n_epoch", "1",
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--data.init_args.image_size", "[32, 32]",
    "--data.init_args.synthetic.height", "32", "--data.init_args.synthetic.width", "32",
    "--data.init_args.synthetic.num_classes", "10",   # 5 training classes, 1 held out for validation
    "--data.init_args.val_classes", "1",
    "--data.init_args.synthetic.images_per_class", "5",
    "--data.init_args.m_per_class", "2",
    "--data.init_args.batch_size", "8",
    "--data.init_args.eval_batch_size", "16",
    "--data.init_args.num_workers", "0",
    "--model.init_args.embedding_size", "16",
]


def instantiate(*args: str, config: Path = SYNTHETIC) -> CLI:
    return CLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
               args=["--config", str(config), *TINY, *args], run=False)


def test_synthetic_config_builds_the_ms_loss_and_miner():
    cli = instantiate()
    model = cli.model
    assert type(model.loss_fn) is losses.MultiSimilarityLoss
    assert (model.loss_fn.alpha, model.loss_fn.beta, model.loss_fn.base) == (2.0, 50.0, 0.5)
    assert type(model.miner) is miners.MultiSimilarityMiner and model.miner.epsilon == 0.1
    assert model.hparams.num_classes == cli.datamodule.num_classes == 4  # linked: 5 training classes, 1 held out


@pytest.mark.parametrize("spec, expected", [
    ("{name: TripletMarginLoss, margin: 0.1}", losses.TripletMarginLoss),
    ("MarginLoss", losses.MarginLoss),
    ("{class_path: pytorch_metric_learning.losses.ArcFaceLoss, init_args: {margin: 28.6, scale: 64}}",
     losses.ArcFaceLoss),
])
def test_one_line_loss_change(spec, expected, tmp_path):
    # the change as a YAML file overriding one line of the config, as a user would write it
    override = tmp_path / "loss.yaml"
    override.write_text(f"model:\n  init_args:\n    loss: {spec}\n")
    cli = instantiate("--config", str(override))
    assert type(cli.model.loss_fn) is expected
    if expected is losses.ArcFaceLoss:
        assert cli.model.loss_fn.W.shape == (16, 4)  # embedding_size x training classes, filled in
        groups = {g["name"] for g in cli.model.configure_optimizers()["optimizer"].param_groups}
        assert "loss" in groups


def test_cub_config_instantiates_on_a_cub_tree_and_names_missing_data(tmp_path):
    root = write_cub_layout(tmp_path / "CUB_200_2011", seed=1, num_classes=10, images_per_class=2, height=40, width=48,
                            progress=False)
    common = ["--model.init_args.pretrained", "null", "--data.init_args.num_workers", "0",
              "--data.init_args.val_classes", "1"]
    cli = CLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
              args=["--config", str(CUB), "--data.init_args.root", str(root), *common], run=False)
    model, data = cli.model, cli.datamodule
    assert data.num_classes == 4 and model.hparams.num_classes == 4  # class ids 1-4 train, 5 validates, 6-10 test
    assert model.hparams.backbone == "resnet50" and model.embedding_projection().shape == (512, 2048)
    assert model.hparams.frozen_bn and type(model.loss_fn) is losses.MultiSimilarityLoss
    assert (data.batch_size, data.m_per_class, data.image_size, data.resize_size) == (80, 5, (227, 227), 256)
    assert cli.trainer.max_steps == 3000 and cli.trainer.val_check_interval == 200
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="does not hold CUB-200-2011"):
        CLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
            args=["--config", str(CUB), "--data.init_args.root", str(tmp_path / "empty"), *common], run=False)


@pytest.mark.slow
def test_fit_and_test_end_to_end(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "fit", "--config", str(SYNTHETIC), *TINY,
         "--model.init_args.loss", "{name: TripletMarginLoss, margin: 0.1}",
         "--model.init_args.miner", "null"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    run_dir = tmp_path / "runs" / "retrieval_synthetic"
    fit = json.loads(next(run_dir.rglob("fit_metrics.json")).read_text())
    test = json.loads(next(run_dir.rglob("test_metrics.json")).read_text())
    for metrics, stage in ((fit, "val"), (test, "test")):  # a longer list never finds less
        # validation's recall@1 is a headline metric (group Val/), the others stay in val/
        recalls = [metrics[f"{'Val' if (stage, k) == ('val', 1) else stage}/recall@{k}"] for k in (1, 2, 4, 8)]
        assert recalls == sorted(recalls), recalls
    # 5 images a class: R = 4 other images. A query's MAP@R is 0 unless one of its 4 nearest images
    # is of its class, and at most 1: MAP@R <= recall@4, and > 0 exactly when recall@4 > 0
    assert test["test/map@r"] <= test["test/recall@4"] + 1e-6
    assert (test["test/map@r"] > 0) == (test["test/recall@4"] > 0)
    saved = yaml.safe_load(next(run_dir.rglob("config.yaml")).read_text())
    assert saved["model"]["init_args"]["loss"] == {"name": "TripletMarginLoss", "margin": 0.1}
    assert (run_dir / "version_0" / "checkpoints" / "last.ckpt").is_file()
