"""The CAM family's safety and wiring: HiResCAM, XGrad-CAM, Score-CAM, Ablation-CAM and EigenCAM leave
no trace on the model, run under inference mode and autocast, refuse bad input early, and reach the
method names, the ModelExplainer and a callback (the formulas: ``tests/test_cam_family.py``)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from cama.explain import gradient_cam, logit_score, similarity_score
from cama.viz import ModelExplainer, check_methods
from tests.cam_family.fixtures import CLASSES, MEAN, NEW, STD, tiny


# --------------------------------------------------------------------------------------------------
# no trace on the model, inference mode, errors
# --------------------------------------------------------------------------------------------------
def hook_counts(model: nn.Module) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]


@pytest.mark.parametrize("method", NEW)
def test_leaves_the_model_as_it_was(images, reference, method) -> None:
    model = tiny()
    model.train()
    model.conv2.eval()  # mixed modes come back per module
    model.conv1.requires_grad_(False)
    model.fc.weight.grad = torch.randn_like(model.fc.weight)
    modes = [m.training for m in model.modules()]
    grads = [p.grad for p in model.parameters()]
    grad_values = [None if g is None else g.clone() for g in grads]
    flags = [p.requires_grad for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    parameters = [p.detach().clone() for p in model.parameters()]
    hooks = hook_counts(model)
    seen_modes: list[bool] = []
    counter = model.register_forward_pre_hook(lambda module, args: seen_modes.append(module.bn1.training))
    out = gradient_cam(model, images, similarity_score(reference), ["bn1", "relu2"], method=method,
                       forward_batch_size=4)
    counter.remove()
    assert torch.isfinite(out).all()
    # one recording forward, then ceil(3 images * K / 4) masked / ablated forwards per layer (K = 4, 5)
    forwards = {"scorecam": 1 + 3 + 4, "ablationcam": 1 + 3 + 4}.get(method, 1)
    assert len(seen_modes) == forwards and not any(seen_modes)  # every forward in eval mode
    assert hook_counts(model) == hooks
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    for parameter, grad, value in zip(model.parameters(), grads, grad_values):
        assert parameter.grad is grad and (value is None or torch.equal(parameter.grad, value))
    assert all(torch.equal(b, before) for b, before in zip(model.buffers(), buffers))
    assert all(torch.equal(p, before) for p, before in zip(model.parameters(), parameters))


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_cleans_up_when_the_score_raises(images, method) -> None:
    model = tiny().train()
    hooks = hook_counts(model)
    calls = []

    class Failing:  # a RowScore whose masked / ablated rows fail
        def __call__(self, output):
            return output[:, 0]

        def rows(self, index):
            calls.append(index)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        gradient_cam(model, images, Failing(), ["relu2"], method=method)
    assert calls and hook_counts(model) == hooks and all(m.training for m in model.modules())


@pytest.mark.parametrize("method", NEW)
def test_under_inference_mode_like_outside(net, images, reference, method) -> None:
    expected = gradient_cam(net, images, similarity_score(reference), ["relu2"], method=method)
    with torch.inference_mode():
        inference_images, inference_reference = images.clone(), reference.clone()
        got = gradient_cam(net, inference_images, similarity_score(inference_reference), ["relu2"],
                           method=method)
    torch.testing.assert_close(got, expected)


def test_under_bfloat16_autocast_the_maps_are_float32(images, reference) -> None:
    model = tiny().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for method in ("scorecam", "ablationcam", "eigencam"):
            out = gradient_cam(model, images.float(), similarity_score(reference.float()), ["bn1", "relu2"],
                               method=method)
            assert out.dtype == torch.float32 and torch.isfinite(out).all() and float(out.max()) == 1.0


def test_bad_input_is_refused_early(net, images, reference) -> None:
    with pytest.raises(ValueError, match="method must be one of .*scorecam.*eigencam"):
        gradient_cam(net, images, logit_score(CLASSES), ["relu2"], method="rise")
    for method in ("scorecam", "ablationcam", "eigencam"):
        with pytest.raises(ValueError, match="truncation applies to the gradient methods"):
            gradient_cam(net, images, logit_score(CLASSES), ["relu2"], method=method, truncation=10.0)
        with pytest.raises(ValueError, match="truncation applies"):
            gradient_cam(net, images, logit_score(CLASSES), ["relu2"], method=method,
                         truncation_per_channel=True)
        with pytest.raises(ValueError, match="forward_batch_size"):
            gradient_cam(net, images, logit_score(CLASSES), ["relu2"], method=method, forward_batch_size=0)
    for method in ("scorecam", "ablationcam"):  # a plain function cannot score the flattened rows
        with pytest.raises(ValueError, match="RowScore"):
            gradient_cam(net, images, lambda out: out[:, 0], ["relu2"], method=method)
    with pytest.raises(ValueError, match="score_fn is required"):
        gradient_cam(net, images, None, ["relu2"], method="hirescam")
    with pytest.raises(ValueError, match="images must be"):
        gradient_cam(net, images[0], None, ["relu2"], method="eigencam")
    # EigenCAM needs no target: None and any score give the same map
    torch.testing.assert_close(gradient_cam(net, images, None, ["relu2"], method="eigencam"),
                               gradient_cam(net, images, logit_score(CLASSES), ["relu2"], method="eigencam"))


# --------------------------------------------------------------------------------------------------
# the names, the ModelExplainer, a callback
# --------------------------------------------------------------------------------------------------
def test_method_names_and_aliases() -> None:
    names = ["HiResCAM", "XGrad-CAM", "Score-CAM", "ablation_cam", "EigenCAM", "scorecam"]
    assert check_methods(names) == NEW
    with pytest.raises(ValueError, match="unknown explanation method"):
        check_methods(["rise"])


@pytest.fixture(scope="module")
def cama():
    from cama.models import CAMA

    torch.manual_seed(0)
    return CAMA(num_classes=4, backbone="resnet10", width=4, num_branches=2).eval()


class Embedder(nn.Module):
    """images -> embed_maps(feature_maps(images)): the protocol model as one module."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed_maps(self.model.feature_maps(images))


def test_model_explainer_maps_per_branch_and_summed(cama) -> None:
    explainer = ModelExplainer(cama, truncation=30.0, forward_batch_size=16, mean=MEAN, std=STD)
    features = explainer.features(torch.rand(2, 3, 32, 16, generator=torch.Generator().manual_seed(4)))
    target = features.embedding.flip(0)
    layers = [cama.get_submodule("backbone.branches.0"), cama.get_submodule("backbone.branches.1")]
    for method in ("xgradcam", "scorecam", "ablationcam", "eigencam"):
        maps = explainer.explain(method, features, target)  # the truncation only where it applies
        assert maps.shape == (2, 3, 32, 16)
        options = {"truncation": 30.0} if method == "xgradcam" else {"mean": MEAN, "std": STD}
        embedder = Embedder(cama)
        summed = gradient_cam(embedder, features.images, similarity_score(target), layers, method, **options)
        torch.testing.assert_close(maps[:, 2], summed)
        width = features.maps[0].shape[1]
        branch = similarity_score(target[:, :width], embed=lambda e: e[:, :width])
        first = gradient_cam(embedder, features.images, branch, layers[:1], method, **options)
        torch.testing.assert_close(maps[:, 0], first)
    with pytest.raises(ValueError, match="forward_batch_size"):
        ModelExplainer(cama, forward_batch_size=0)
    with pytest.raises(ValueError, match="mean and std"):
        ModelExplainer(cama, mean=MEAN)


def test_a_localization_callback_scores_score_cam(tmp_path) -> None:
    import lightning.pytorch as pl

    from callbacks.localization_metrics import LocalizationMetrics
    from cama.models import CAMA
    from datamodules import ReIDDataModule

    datamodule = ReIDDataModule(
        dataset="synthetic", validate_on_test=True, image_size=(32, 16), p=4, k=2, eval_batch_size=64,
        num_workers=0, synthetic=dict(num_train_ids=6, num_test_ids=4, num_distractors=2, num_junk=1),
    )
    datamodule.setup("fit")
    torch.manual_seed(0)
    model = CAMA(num_classes=datamodule.num_classes, backbone="resnet10", width=4, num_branches=2).eval()
    callback = LocalizationMetrics(methods=["score-cam", "eigencam"], num_samples=2,
                                   num_faithfulness_samples=1, num_gradient_samples=1)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                         default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(model, datamodule=datamodule, verbose=False)
    results = callback.last_results
    assert {"loc/scorecam/box_acc", "loc/scorecam/ad", "loc/eigencam/box_acc"} <= results.keys()
    assert all(math.isfinite(float(results[k])) for k in ("loc/scorecam/box_acc", "loc/scorecam/ad"))
    # the deletion / insertion curves count the gradient-free CAMs among the layer methods: their
    # probes are the first min(deletion_samples, num_gradient_samples) = 1, scored all the same
    curves = ("faith/scorecam/deletion_auc", "faith/eigencam/insertion_auc", "faith/random/deletion_auc")
    assert all(math.isfinite(float(results[k])) for k in curves)
