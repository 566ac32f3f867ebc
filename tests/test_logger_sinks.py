"""The pictures reach Weights & Biases and MLflow, read back from their local offline stores."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, WandbLogger
from torchvision.io import decode_png

from callbacks.image_sink import ImageSink
from callbacks.logger_sinks import MLflowImages, WandbImages, sinks_for


def picture() -> torch.Tensor:
    return torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_each_logger_type_gets_its_sink_and_the_others_none(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the local file store, as the tests use it
    loggers = [CSVLogger(tmp_path), MLFlowLogger(tracking_uri=f"file:{tmp_path / 'mlruns'}")]
    assert [type(s) for s in sinks_for(loggers)] == [MLflowImages]


def test_wandb_offline_run_holds_the_picture(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="cama-test")
    sinks = sinks_for([logger])
    assert [type(s) for s in sinks] == [WandbImages]
    image = picture()
    ImageSink([], None, others=sinks).write("dist_cam", image, step=7, epoch=3)
    logger.experiment.finish()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    (png,) = (run / "files" / "media" / "images" / "explanations").glob("dist_cam_*.png")
    assert torch.equal(decode_png(torch.frombuffer(bytearray(png.read_bytes()), dtype=torch.uint8)), image)


def test_mlflow_file_store_holds_the_picture(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{tmp_path / 'mlruns'}"
    logger = MLFlowLogger(experiment_name="cama-test", tracking_uri=uri)
    image = picture()
    ImageSink([], None, others=sinks_for([logger])).write("ranking/query_0", image, step=7, epoch=3)
    local = MlflowClient(tracking_uri=uri).download_artifacts(
        logger.run_id, "explanations/epoch_003/ranking/query_0.png", str(tmp_path / "back"))
    decoded = decode_png(torch.frombuffer(bytearray(Path(local).read_bytes()), dtype=torch.uint8))
    assert torch.equal(decoded, image)


def test_pngs_without_a_picture_taking_logger(tmp_path):
    sink = ImageSink([], tmp_path / "explanations", others=[])
    (path,) = sink.write("ram", picture(), step=1, epoch=2)
    assert path.endswith("epoch_002/ram.png")
