"""The BoT configs: BoT's settings (Luo et al., CVPR-W 2019, Sec. 2-3) in the YAML files, the synthetic one
through train.py's LightningCLI (in-process, no training) with its training step's terms named, and the
Market-1501 one on a generated Market-1501 tree."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from datamodules import write_reid_layout
from train import CLI

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

REPO = Path(__file__).resolve().parents[1]
REAL = {"market1501": "market1501", "dukemtmc": "dukemtmc", "msmt17": "msmt17"}
# the paper's settings, as it states them (Sec. 2 and 3.1-3.6)
BOT_MODEL = {
    "backbone": "resnet50", "pretrained": "imagenet", "last_stride": 1, "num_branches": 1, "oap_weight": 0.0,
    "lr": 3.5e-4, "weight_decay": 5e-4, "warmup_epochs": 10, "warmup_start_lr": 3.5e-5,
    "freeze_backbone_during_warmup": False, "lr_schedule": "multistep", "lr_milestones": [40, 70],
    "lr_gamma": 0.1, "label_smoothing": 0.1, "triplet_weight": 1.0, "triplet_margin": 0.3, "bnneck": True,
    "center_weight": 5e-4, "center_lr": 0.5,
}
BOT_DATA = {"image_size": [256, 128], "p": 16, "k": 4, "padding": 10, "flip_prob": 0.5, "random_erasing": 0.5}
TINY = [
    "--trainer.max_epochs", "1",
    "--trainer.enable_progress_bar", "false",
    "--data.init_args.image_size", "[64, 32]",
    "--data.init_args.p", "4",
    "--data.init_args.k", "2",
    "--data.init_args.num_workers", "0",
    "--data.init_args.synthetic.num_train_ids", "6", "--data.init_args.val_ids", "2",
    "--data.init_args.synthetic.num_test_ids", "4",
    "--data.init_args.synthetic.num_distractors", "2",
    "--data.init_args.synthetic.num_junk", "2",
]


def instantiate(config: Path, *args: str) -> CLI:
    return CLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
               args=["--config", str(config), *TINY, *args], run=False)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_configs_hold_the_papers_settings(name):
    config = yaml.safe_load((REPO / "configs" / f"bot_{name}.yaml").read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert config["model"]["class_path"] == "cama.models.CAMA"
    assert {k: model[k] for k in BOT_MODEL} == BOT_MODEL
    assert {k: data[k] for k in BOT_DATA} == BOT_DATA
    assert data["dataset"] == REAL[name] and data["root"]
    assert config["trainer"]["max_epochs"] == 120
    assert config["trainer"]["logger"]["init_args"]["name"] == f"bot_{name}"


def test_synthetic_config_builds_bot_and_names_its_loss_terms():
    cli = instantiate(REPO / "configs" / "bot_synthetic.yaml")
    model, data = cli.model, cli.datamodule
    hp = model.hparams
    assert (hp.num_branches, hp.oap_weight, hp.label_smoothing, hp.triplet_margin, hp.center_weight) == (
        1, 0.0, 0.1, 0.3, 5e-4)
    assert data.random_erasing == 0.5
    # the synthetic jobs' shared schedule and budget, as configs/ide_bn_synthetic.yaml has them
    ide_bn = yaml.safe_load((REPO / "configs" / "ide_bn_synthetic.yaml").read_text())
    bot = yaml.safe_load((REPO / "configs" / "bot_synthetic.yaml").read_text())
    shared = ("backbone", "width", "lr", "weight_decay", "warmup_epochs", "warmup_start_lr", "lr_schedule")
    assert ({k: bot["model"]["init_args"][k] for k in shared}
            == {k: ide_bn["model"]["init_args"][k] for k in shared})
    assert bot["trainer"]["max_epochs"] == ide_bn["trainer"]["max_epochs"]
    assert bot["data"]["init_args"]["p"] == ide_bn["data"]["init_args"]["p"]
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    outputs = model.train().training_step(batch, 0)
    assert {"loss", "id_loss", "triplet", "triplet_branch1", "center", "center_branch1"} <= set(outputs)
    assert torch.isfinite(outputs["loss"])


def test_market_config_instantiates_on_a_market_tree(tmp_path):
    root = write_reid_layout(tmp_path / "Market", "market1501", seed=1, progress=False, num_train_ids=4,
                             num_test_ids=3, num_distractors=2, num_junk=2, height=32, width=16)
    cli = CLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
              args=["--config", str(REPO / "configs" / "bot_market1501.yaml"),
                    "--model.init_args.pretrained", "null", "--model.init_args.backbone", "resnet10",
                    "--data.init_args.root", str(root), "--data.init_args.num_workers", "0",
                    "--data.init_args.val_ids", "1"], run=False)
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes == 3  # 4 identities, 1 held out
    assert tuple(cli.model.criterion.centers.shape) == (1, 3, cli.model.backbone.out_channels)
