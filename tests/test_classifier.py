"""ImageClassifier (ResNet -> GAP -> FC) and ClassificationDataModule (train / held-out test images of the
same synthetic classes): CAM written out, the logged accuracy against a hand count, the splits disjoint;
and the two halves of gradient_cam (record_gradients, gradient_layer_maps) the ltgrad-cam sweep uses."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from cama.explain import (
    class_activation_map,
    fullgrad_layers,
    gradient_cam,
    gradient_layer_maps,
    logit_score,
    minmax_normalize,
    postprocess,
    record_gradients,
)
from cama.models import ImageClassifier
from cama.protocols import EmbeddingModel, HasBranchLayers, HasClassifier
from cama.viz import ModelExplainer
from datamodules import ClassificationDataModule

SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dm() -> ClassificationDataModule:
    dm = ClassificationDataModule(image_size=(SIZE, SIZE),
                                  synthetic=dict(height=SIZE, width=SIZE, num_classes=4, images_per_class=5),
                                  train_images_per_class=3, m_per_class=2,
                                  batch_size=8, eval_batch_size=3, padding=2)
    dm.setup("fit")
    return dm


def small_model(**kwargs) -> ImageClassifier:
    torch.manual_seed(0)
    args = dict(num_classes=4, backbone="resnet10", width=8, last_stride=1, lr=1e-2, weight_decay=0.0)
    args.update(kwargs)
    return ImageClassifier(**args).eval()


def test_splits_hold_other_images_of_the_same_classes(dm) -> None:
    train, test = dm.datasets["train"], dm.datasets["test"]
    assert dm.num_classes == 4 and len(train) == 4 * 3 and len(test) == 4 * 2
    assert sorted(set(train.labels)) == sorted(set(test.labels)) == [0, 1, 2, 3]
    # the images themselves: no test image is a training image (the generator draws (seed, class, index))
    train_images = {bytes(dm.datasets["train_eval"][i]["image"].numpy()) for i in range(len(train))}
    test_images = {bytes(test[i]["image"].numpy()) for i in range(len(test))}
    assert len(train_images) == len(train) and len(test_images) == len(test)
    assert not train_images & test_images
    raw_train, raw_test = dm._raw_datasets()["train"], dm._raw_datasets()["test"]
    assert not set(raw_train.positions) & set(raw_test.positions)
    assert {p % 5 for p in raw_train.positions} == {0, 1, 2} and {p % 5 for p in raw_test.positions} == {3, 4}


def test_loaders_give_boxes_and_masks_for_evaluation(dm) -> None:
    train_batch = next(iter(dm.train_dataloader()))
    assert train_batch["image"].shape == (8, 3, SIZE, SIZE) and "box" not in train_batch
    for split, count in (("test", 8), ("train", 12)):
        batches = list(dm.eval_dataloader(split))
        assert sum(len(b["label"]) for b in batches) == count
        batch = batches[0]
        assert batch["box"].shape == (3, 4) and batch["mask"].shape == (3, 1, SIZE, SIZE)
        assert batch["mask"].dtype == torch.bool and bool(batch["mask"].any())
    with pytest.raises(ValueError, match="split"):
        dm.eval_dataloader("val")
    with pytest.raises(ValueError, match="test split needs images"):
        ClassificationDataModule(synthetic=dict(images_per_class=5), train_images_per_class=5)


def test_protocols_and_cam_equals_the_weighted_sum_written_out() -> None:
    model = small_model()
    assert all(isinstance(model, p) for p in (EmbeddingModel, HasClassifier, HasBranchLayers))
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        maps = model.feature_maps(images)[0]
        logits = model(images)
    weight = model.classifier_weights()[0]
    assert weight.shape == (4, maps.shape[1])
    torch.testing.assert_close(logits, maps.mean(dim=(2, 3)) @ weight.T)  # GAP -> bias-free FC
    predicted = logits.argmax(1)
    naive = torch.zeros(3, *maps.shape[-2:])
    for b in range(3):
        for k in range(maps.shape[1]):
            naive[b] += weight[predicted[b], k] * maps[b, k]
    torch.testing.assert_close(class_activation_map(maps, weight, predicted), naive, rtol=1e-5, atol=1e-5)
    explainer = ModelExplainer(model)  # the ModelExplainer's CAM: the same maps, the top logit's class
    features = explainer.features(images)
    torch.testing.assert_close(explainer.explain("cam", features, features.embedding)[:, 0],
                               postprocess(naive[:, None], (SIZE, SIZE))[:, 0], rtol=1e-5, atol=1e-5)
    assert model.stage_names() == [f"backbone.layer{i}" for i in range(1, 5)]
    assert all(isinstance(model.get_submodule(n), torch.nn.Module) for n in model.stage_names())


def test_logged_accuracy_equals_a_hand_count(dm) -> None:
    model = small_model().train()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert {"Val/acc", "val/loss", "train/loss"} <= set(logged)
    model.eval()
    with torch.no_grad():
        batches = list(dm.val_dataloader())
        correct = torch.cat([model(b["image"]).argmax(1) == b["label"] for b in batches])
    assert logged["Val/acc"] == pytest.approx(correct.float().mean().item(), abs=1e-6)
    trainer.test(model, datamodule=dm, verbose=False)
    accuracy = correct.float().mean().item()
    assert float(trainer.callback_metrics["test/acc"]) == pytest.approx(accuracy, abs=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "layercam", "fullgrad"])
def test_one_record_gives_gradient_cam_of_every_layer_subset_and_truncation(method) -> None:
    model = small_model().double()
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    score = logit_score([1, 2])
    layers = fullgrad_layers(model.backbone) if method == "fullgrad" else model.stage_names()
    record = record_gradients(model, images, score, layers, inputs=method == "fullgrad")
    assert record.size == (SIZE, SIZE) and len(record.activations) == len(layers)
    for truncation in (None, 30.0):
        for chosen in ([len(layers) - 1], list(range(len(layers)))):
            maps = gradient_layer_maps(record.select(chosen), method, truncation)
            assert len(maps) == len(chosen) + (method == "fullgrad")  # FullGrad's input term last
            expected = gradient_cam(model, images, score, [layers[i] for i in chosen], method, truncation)
            total = maps[0]
            for m in maps[1:]:
                total = total + m
            torch.testing.assert_close(minmax_normalize(total), expected)
    with pytest.raises(ValueError, match="input term"):
        gradient_layer_maps(record_gradients(model, images, score, layers[:1]), "fullgrad")
