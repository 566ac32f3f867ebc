"""RetrievalModel: the logged Recall@1 / MAP@R against brute force, losses and miners chosen by spec,
proxy / classification parameters in the optimizer, the model protocol and FAM's Eq. 16-18."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners, reducers

from cama.explain import fam_channel_contributions
from cama.models.retrieval import RetrievalModel, build_pml_object, pool_maps
from datamodules.retrieval import RetrievalDataModule

SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dm() -> RetrievalDataModule:
    dm = RetrievalDataModule("synthetic", validate_on_test=True, image_size=(SIZE, SIZE),
                             synthetic=dict(height=SIZE, width=SIZE, num_classes=12, images_per_class=6),
                             m_per_class=3, batch_size=12, eval_batch_size=10,
                             num_workers=0)
    dm.setup("fit")
    return dm


def small_model(**kwargs) -> RetrievalModel:
    args = dict(num_classes=6, backbone="resnet10", embedding_size=32, lr=1e-3, weight_decay=0.0, knn="torch")
    args.update(kwargs)
    return RetrievalModel(**args)


def trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)


def brute_force_recall_at_1_and_map_at_r(emb: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    d = torch.cdist(emb.double(), emb.double())
    d.fill_diagonal_(float("inf"))
    order = d.argsort(dim=1, stable=True)[:, :-1]
    same = labels[order] == labels[:, None]
    r = same.sum(1)
    recall1 = same[:, 0].double().mean().item()
    precision = same.double().cumsum(1) / torch.arange(1, same.shape[1] + 1)
    ranks = torch.arange(same.shape[1])[None, :]
    map_r = ((precision * same * (ranks < r[:, None])).sum(1) / r).mean().item()
    return recall1, map_r


def test_logged_recall_at_1_equals_brute_force_nearest_neighbour(dm):
    torch.manual_seed(0)
    model = small_model()
    t = trainer(max_epochs=1, limit_train_batches=3, num_sanity_val_steps=0)
    t.fit(model, datamodule=dm)  # three steps: an embedding that is neither random nor perfect
    logged = {k: float(v) for k, v in t.callback_metrics.items()}
    model.eval()
    with torch.no_grad():
        batches = list(dm.val_dataloader())  # 36 test images in 4 batches: the metric accumulates
        emb = torch.cat([model(b["image"]) for b in batches])
        labels = torch.cat([b["label"] for b in batches])
    recall1, map_r = brute_force_recall_at_1_and_map_at_r(emb, labels)
    assert 0.0 < recall1 < 1.0, recall1  # neither degenerate (e.g. the query as its own neighbour) nor perfect
    assert logged["Val/recall@1"] == pytest.approx(recall1, abs=1e-6)
    assert logged["Val/map@r"] == pytest.approx(map_r, abs=1e-6)
    assert {"val/recall@2", "val/recall@4", "val/recall@8", "train/loss", "train/mined_tuples"} <= set(logged)
    t.test(model, datamodule=dm)
    assert float(t.callback_metrics["test/recall@1"]) == pytest.approx(recall1, abs=1e-6)


LOSS_SPECS = {
    "multi_similarity": ("MultiSimilarityLoss", "MultiSimilarityMiner"),
    "triplet": ({"name": "TripletMarginLoss", "margin": 0.1}, {"name": "TripletMarginMiner", "margin": 0.2}),
    "arcface": ({"class_path": "pytorch_metric_learning.losses.ArcFaceLoss", "init_args": {"scale": 16}}, None),
}


@pytest.mark.parametrize("which", list(LOSS_SPECS))
def test_one_training_step_with_each_loss(dm, which):
    loss, miner = LOSS_SPECS[which]
    torch.manual_seed(1)
    model = small_model(loss=loss, miner=miner)
    expected = {"multi_similarity": losses.MultiSimilarityLoss, "triplet": losses.TripletMarginLoss,
                "arcface": losses.ArcFaceLoss}[which]
    assert type(model.loss_fn) is expected
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    t = trainer(max_steps=1, limit_val_batches=0, num_sanity_val_steps=0)
    t.fit(model, datamodule=dm)
    assert torch.isfinite(t.callback_metrics["train/loss"])
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "backbone.0.weight" in changed and "projection.weight" in changed
    groups = {g["name"]: g for g in t.optimizers[0].param_groups}
    if which == "arcface":
        # the class weights W [embedding_size, num_classes] are trained, in a group of their own
        assert model.loss_fn.W.shape == (32, dm.num_classes)
        assert "loss_fn.W" in changed
        assert any(p is model.loss_fn.W for p in groups["loss"]["params"])
        assert groups["loss"]["lr"] == pytest.approx(100 * 1e-3)
    else:
        assert "loss" not in groups


def test_loss_parameters_have_their_own_learning_rate():
    model = small_model(loss={"name": "ProxyAnchorLoss", "margin": 0.1}, miner=None, loss_lr=0.05, loss_weight_decay=0.0)
    optimizer = model.configure_optimizers()
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"backbone", "head", "loss"}
    assert groups["loss"]["lr"] == 0.05 and groups["backbone"]["lr"] == 1e-3
    assert model.loss_fn.proxies.shape == (6, 32)
    n_params = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n_params == len(list(model.parameters()))  # every parameter in exactly one group


def test_pml_specs_and_their_errors():
    loss = build_pml_object({"name": "MultiSimilarityLoss", "alpha": 3.0, "reducer": "SumReducer"}, "loss")
    assert loss.alpha == 3.0 and isinstance(loss.reducer, reducers.SumReducer)
    miner = build_pml_object({"class_path": "pytorch_metric_learning.miners.MultiSimilarityMiner",
                              "init_args": {"epsilon": 0.2}}, "miner")
    assert isinstance(miner, miners.MultiSimilarityMiner) and miner.epsilon == 0.2
    margin = build_pml_object({"name": "MarginLoss", "learn_beta": True, "num_classes": "auto"}, "loss", num_classes=5)
    assert margin.beta.shape == (5,)
    arcface = build_pml_object("ArcFaceLoss", "loss", num_classes=4, embedding_size=8)
    assert arcface.W.shape == (8, 4)
    with pytest.raises(ValueError, match="unknown loss 'MultiSimilarLoss'.*MultiSimilarityLoss"):
        build_pml_object("MultiSimilarLoss", "loss")
    with pytest.raises(ValueError, match="names no class"):
        build_pml_object({"alpha": 2}, "loss")
    with pytest.raises(ValueError, match="cannot build the loss TripletMarginLoss"):
        build_pml_object({"name": "TripletMarginLoss", "margine": 0.1}, "loss")
    with pytest.raises(ValueError, match="ArcFaceLoss needs num_classes"):
        build_pml_object("ArcFaceLoss", "loss", num_classes=None, embedding_size=8)
    with pytest.raises(ValueError, match="unexpected keys"):
        build_pml_object({"class_path": "TripletMarginLoss", "margin": 0.1}, "loss")


def test_model_protocol_and_embedding():
    torch.manual_seed(2)
    model = small_model(last_stride=1).eval()
    images = torch.randn(3, 3, SIZE, SIZE)
    maps = model.feature_maps(images)
    assert len(maps) == 1 and maps[0].shape == (3, 512, 2, 2)
    emb = model.embed_maps(maps)
    assert emb.shape == (3, 32)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    expected = F.normalize(maps[0].mean(dim=(2, 3)) @ model.embedding_projection().T, dim=1)
    assert torch.allclose(emb, expected, atol=1e-5)
    assert torch.allclose(model(images), emb, atol=1e-6)
    bare = small_model(embedding_size=None).eval()
    assert bare.embedding_projection() is None and bare(images).shape == (3, 512)


def test_fam_uses_the_projection_and_keeps_the_total_contribution():
    """fam Eq. 16-18: with e = W GAP(Q), the channel contributions sum to the cosine similarity that
    ranks the two images (Eq. 17) -- true only if the model's embedding is exactly W GAP(Q)."""
    torch.manual_seed(3)
    model = small_model().eval()
    query, reference = torch.randn(4, 3, SIZE, SIZE), torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        maps = model.feature_maps(query)[0]
        e_q, e_r = model(query), model(reference)
        c = fam_channel_contributions(maps.mean(dim=(2, 3)), e_r, projection=model.embedding_projection())
        assert torch.allclose(c.sum(dim=1), (e_q * e_r).sum(dim=1), atol=1e-5)
        assert model.embedding_projection().shape == (model.embedding_dim, maps.shape[1])


def test_pooling_and_frozen_bn():
    maps = torch.rand(2, 5, 3, 4)
    assert torch.allclose(pool_maps(maps, "avg"), maps.mean(dim=(2, 3)))
    assert torch.allclose(pool_maps(maps, "max"), maps.flatten(2).max(dim=2).values)
    assert torch.allclose(pool_maps(maps, "gem", 1.0), maps.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(pool_maps(maps, "gem", 3.0), maps.pow(3).mean(dim=(2, 3)).pow(1 / 3), atol=1e-6)
    gem = small_model(pooling="gem")
    assert any(p is gem.gem_p for g in gem.configure_optimizers().param_groups for p in g["params"])
    frozen = small_model(frozen_bn=True).train()
    bns = [m for m in frozen.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and frozen.training
    running = bns[0].running_mean.clone()
    frozen.compute_losses(torch.randn(6, 3, SIZE, SIZE), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(bns[0].running_mean, running)
    with pytest.raises(ValueError, match="backbone"):
        small_model(backbone="vgg16")
    with pytest.raises(ValueError, match="pooling"):
        small_model(pooling="median")
