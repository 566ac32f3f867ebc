"""The re-ID explanation callbacks on a retrieval model: every image a query against all the others."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from callbacks.explanation_images import ExplanationImages
from callbacks.localization_metrics import LocalizationMetrics
from cama.references import RetrievalReferences
from cama.viz import ModelExplainer
from cama.metrics.retrieval import RetrievalMetric
from cama.models.retrieval import RetrievalModel
from datamodules.retrieval import RetrievalDataModule


@pytest.fixture(scope="module")
def datamodule() -> RetrievalDataModule:
    dm = RetrievalDataModule(
        dataset="synthetic",
        validate_on_test=True,
        image_size=(64, 64),
        synthetic=dict(height=64, width=64, num_classes=8, images_per_class=6),
        m_per_class=2,
        batch_size=8,
        eval_batch_size=16,
        num_workers=0,
    )
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def model(datamodule) -> RetrievalModel:
    torch.manual_seed(0)
    return RetrievalModel(
        num_classes=datamodule.num_classes, backbone="resnet10", pretrained=None, embedding_size=32
    ).eval()


def test_every_image_is_a_query_and_its_reference_is_its_nearest_other_image(model, datamodule):
    dataset = datamodule.val_dataloader().dataset
    references = model.reference_provider(dataset)
    assert isinstance(references, RetrievalReferences)
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([it["image"] for it in items])
    labels = torch.tensor([int(it["label"]) for it in items])
    with torch.no_grad():
        embeddings = model(images)
    metric = RetrievalMetric()
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(1))  # any order
    metric.update(embeddings[order], labels[order], order)
    gallery = metric.embedding_set()
    found, matches = references.rank(gallery, embeddings, torch.arange(len(items)), k=2)
    # brute force: the two nearest other images of each image
    distances = torch.cdist(embeddings, embeddings)
    distances.fill_diagonal_(float("inf"))
    nearest = distances.topk(2, largest=False).indices
    assert torch.equal(found, nearest)
    assert torch.equal(matches, labels[nearest] == labels[:, None])
    # every image whose class has another image has a true match
    assert references.probe_candidates().tolist() == list(range(len(items)))


def test_fam_through_the_projection_matches_the_equations_written_out(model, datamodule):
    dataset = datamodule.val_dataloader().dataset
    images = torch.stack([dataset[i]["image"] for i in (0, 7, 13)])
    explainer = ModelExplainer(model)
    features = explainer.features(images)
    assert features.slices is None  # a 32-d projection of 512 channels
    reference = features.embedding.roll(1, dims=0)
    raw = explainer.raw_maps("fam", features, reference)[:, 0]
    maps = features.maps[0]
    weight = model.projection.weight.detach()  # [D, K]
    for b in range(3):  # fam Eq. 11, 16-18, 12-13 one sample at a time
        g = maps[b].mean(dim=(1, 2))
        e = weight @ g
        c = e * reference[b] / (e.norm() * reference[b].norm())  # contributions of the embedding dims
        channel = torch.stack([(c * weight[:, k] * g[k] / e).sum() for k in range(g.numel())])
        assert channel.sum() == pytest.approx(float(c.sum()), rel=1e-3, abs=1e-5)  # Eq. 17: the total is kept
        alpha = (channel - channel.min()) / (channel.max() - channel.min())
        expected = (alpha[:, None, None] * maps[b]).sum(0)
        assert torch.allclose(raw[b], expected, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="embedding_projection"):
        explainer.raw_maps("dist_cam", features, reference)


def test_callbacks_draw_and_score_a_retrieval_model(model, datamodule, tmp_path):
    images = ExplanationImages(
        methods=["fam", "gradcam"], num_probes=3, num_ranking_queries=1, top_k=4, ranking_method="fam"
    )
    scores = LocalizationMetrics(methods=["fam"], num_samples=10, num_faithfulness_samples=4)
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="csv"),
        callbacks=[images, scores],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(model, datamodule=datamodule, verbose=False)
    folder = Path(trainer.log_dir) / "explanations" / "epoch_000"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == [
        "fam.png",
        "gradcam.png",
        "ranking/query_0.png",
    ]
    for name in ("box_iou", "max_box_acc", "energy", "otsu_miou", "ad", "ic"):
        assert f"loc/fam/{name}" in scores.last_results
    # a constant map's energy in the box is the box's share of the image (fam Eq. 19), per sample
    dataset = datamodule.val_dataloader().dataset
    boxes = torch.stack([torch.as_tensor(dataset[i]["box"]).float() for i in scores.probes.indices])
    height, width = dataset[0]["image"].shape[-2:]
    shares = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (height * width)
    assert scores.last_results["loc/uniform_baseline/energy"] == pytest.approx(float(shares.mean()), rel=1e-5)
    assert "loc/branch_overlap_iou" not in scores.last_results  # one branch


def test_maps_captured_under_bfloat16_autocast_explain_like_their_float32_values(model, datamodule):
    """bf16-mixed (issue 10): maps captured in the validation step are bfloat16; outside autocast
    they must meet the float32 projection, and explain exactly like the same values in float32."""
    images = torch.stack([datamodule.val_dataloader().dataset[i]["image"] for i in range(4)])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        maps = model.feature_maps(images)
    assert maps[0].dtype == torch.bfloat16
    explainer = ModelExplainer(model)
    captured = explainer.features_from_maps(images, maps)
    upcast = explainer.features_from_maps(images, [m.float() for m in maps])
    assert captured.embedding.dtype == torch.float32
    torch.testing.assert_close(captured.embedding, upcast.embedding, rtol=0, atol=0)
    target = upcast.embedding.flip(0)
    for method in ("fam", "gradcam"):
        got = explainer.explain(method, captured, target)
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        if method == "fam":
            torch.testing.assert_close(got, explainer.explain(method, upcast, target), rtol=0, atol=0)
