"""ONNX export of every task's embedding model: ONNX Runtime's output equals PyTorch's (skipped
without onnxruntime: ``pip install -e '.[export]'``)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from cama.models import CAMA, ProtoNet, RetrievalModel

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from export import check_onnx, export_onnx, main  # noqa: E402


@pytest.mark.parametrize(
    "build, size",
    [
        (lambda: CAMA(num_classes=6, backbone="resnet10", num_branches=2), (64, 32)),
        (lambda: ProtoNet(num_classes=4), (32, 32)),
        (lambda: RetrievalModel(num_classes=6, backbone="resnet10", embedding_size=16), (48, 48)),
    ],
    ids=["cama", "protonet", "retrieval"],
)
def test_onnx_embeddings_equal_pytorch_for_any_batch_size(build, size, tmp_path):
    torch.manual_seed(0)
    model = build().eval()
    path = export_onnx(model, size, tmp_path / "model.onnx")
    for batch in (1, 5):  # exported with a batch of 2: the batch axis is dynamic
        assert check_onnx(model, path, size, batch=batch) < 1e-4


def test_export_command_reads_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = RetrievalModel(num_classes=6, backbone="resnet10", embedding_size=16)
    checkpoint = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": pl.__version__, "datamodule_hyper_parameters": {"image_size": [40, 40]}},
               checkpoint)
    path = main(["--checkpoint", str(checkpoint), "--model_class", "cama.models.RetrievalModel",
                 "--output", str(tmp_path / "out" / "retrieval.onnx")])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 40, 40]  # the checkpoint's input size
    assert check_onnx(model, path, (40, 40)) < 1e-4
