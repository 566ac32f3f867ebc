"""The CUDA path: the same numbers on the GPU as on the CPU (skipped without a GPU; bench/gpu_check.sh)."""

from __future__ import annotations

import pytest
import torch

from cama.backbones import TransformerOptions
from cama.metrics import ReIDRankMetric
from cama.models import CAMA
from cama.viz.model_explainer import METHODS, ModelExplainer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
VIT = TransformerOptions(image_size=(64, 32), patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _models() -> list[CAMA]:
    torch.manual_seed(0)
    return [
        CAMA(num_classes=6, backbone="resnet10", width=16, num_branches=2).eval(),
        CAMA(num_classes=6, backbone="vit_tiny_patch16_224", num_branches=2, transformer=VIT).eval(),
    ]


@pytest.mark.parametrize("index", [0, 1], ids=["resnet", "vit"])
def test_every_map_on_the_gpu_equals_the_cpu(index: int) -> None:
    model = _models()[index]
    images = torch.randn(3, 3, 64, 32)
    cpu = ModelExplainer(model)
    features = cpu.features(images)
    expected = {m: cpu.explain(m, features, features.embedding) for m in METHODS}
    gpu = ModelExplainer(model.cuda())
    features = gpu.features(images.cuda())
    for method in METHODS:
        got = gpu.explain(method, features, features.embedding)
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), expected[method], atol=2e-3, rtol=0, msg=method)


def test_rank_metric_on_the_gpu_equals_the_cpu() -> None:
    torch.manual_seed(0)
    n = 300
    embeddings, pids = torch.randn(n, 16), torch.randint(0, 30, (n,))
    camids, is_query = torch.randint(0, 4, (n,)), torch.arange(n) < 60
    results = []
    for device in ("cpu", "cuda"):
        metric = ReIDRankMetric(max_rank=10).to(device)
        metric.update(*(t.to(device) for t in (embeddings, pids, camids, is_query, torch.arange(n))))
        results.append({k: float(v) for k, v in metric.compute().items()})
    for key, value in results[0].items():
        assert results[1][key] == pytest.approx(value, abs=1e-5), key


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_mixed_precision_training_step_on_the_gpu(dtype: torch.dtype) -> None:
    for model in _models():
        model = model.cuda().train()
        images, pids = torch.randn(8, 3, 64, 32, device="cuda"), torch.arange(8, device="cuda") % 6
        with torch.autocast("cuda", dtype=dtype):
            losses = model.compute_losses(images, pids)
        losses["loss"].backward()
        # the float32 step's loss on the same weights, within the precision of the half type
        with torch.no_grad():
            reference = model.compute_losses(images, pids)["loss"]
        assert torch.isfinite(losses["loss"]) and abs(float(losses["loss"]) - float(reference)) < 0.05 * float(reference)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
