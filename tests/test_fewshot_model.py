"""ProtoNet: logits against a naive computation, prototypes, episodes, evaluation cache, references, backbones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cama.backbones import Conv4, ResNet12
from cama.models import ProtoNet
from cama.models.fewshot import build_fewshot_backbone, class_prototypes, prototype_logits
from datamodules.episodes import episode_layout


@pytest.fixture(autouse=True, scope="module")
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _naive_logits(q: torch.Tensor, p: torch.Tensor, metric: str, scale: float) -> torch.Tensor:
    out = torch.empty(len(q), len(p), dtype=torch.float64)
    for i in range(len(q)):
        for j in range(len(p)):
            a, b = q[i].double(), p[j].double()
            if metric == "euclidean":
                out[i, j] = -scale * sum((x - y) ** 2 for x, y in zip(a.tolist(), b.tolist()))
            else:
                out[i, j] = scale * float(a @ b) / (float(a.norm()) * float(b.norm()))
    return out


@pytest.mark.parametrize("metric, scale", [("euclidean", 1.0), ("euclidean", 0.25), ("cosine", 10.0)])
def test_logits_match_a_naive_computation(metric, scale):
    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(7, 6, generator=g), torch.randn(4, 6, generator=g)
    got = prototype_logits(q, p, metric, scale)
    assert got.shape == (7, 4)
    torch.testing.assert_close(got.double(), _naive_logits(q, p, metric, scale), rtol=1e-5, atol=1e-5)


def test_prototypes_are_support_means_and_episode_order_does_not_matter():
    g = torch.Generator().manual_seed(1)
    n, k, q, d = 3, 2, 2, 5
    labels, is_query = episode_layout(n, k, q)
    emb = torch.randn(len(labels), d, generator=g)
    protos = class_prototypes(emb[~is_query], labels[~is_query])
    for c in range(n):
        torch.testing.assert_close(protos[c], emb[~is_query][labels[~is_query] == c].mean(0))
    model = ProtoNet(num_classes=4)
    batch = {"episode_labels": labels, "is_query": is_query}
    logits, target = model.episode_logits(emb, batch)
    torch.testing.assert_close(logits.double(), _naive_logits(emb[is_query], protos, "euclidean", 1.0),
                               rtol=1e-5, atol=1e-5)
    assert target.tolist() == labels[is_query].tolist()
    perm = torch.randperm(len(labels), generator=g)
    shuffled, shuffled_target = model.episode_logits(emb[perm], {"episode_labels": labels[perm], "is_query": is_query[perm]})
    order = perm[is_query[perm]]  # the queries in their shuffled order
    row = {int(i): r for r, i in enumerate(is_query.nonzero().squeeze(1))}
    torch.testing.assert_close(shuffled, logits[[row[int(i)] for i in order]])
    with pytest.raises(ValueError, match="needs a support"):
        class_prototypes(emb[:2], torch.tensor([0, 2]))


def test_scale_is_learned_for_cosine_only():
    assert isinstance(ProtoNet(num_classes=4, metric="cosine").scale, nn.Parameter)
    euclid = ProtoNet(num_classes=4)
    assert not isinstance(euclid.scale, nn.Parameter) and float(euclid.scale) == 1.0
    assert "scale" not in euclid.state_dict()
    assert euclid.classifier is None
    with pytest.raises(ValueError):
        ProtoNet(num_classes=4, metric="manhattan")


def _episode_batch(n: int = 3, k: int = 2, q: int = 2, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels, is_query = episode_layout(n, k, q)
    images = torch.randn(len(labels), 3, size, size, generator=g) + labels[:, None, None, None].float()
    return {"image": images, "episode_labels": labels, "is_query": is_query, "label": labels.clone(),
            "index": torch.arange(len(labels)) + 100}


def test_evaluation_cache_gives_the_same_embeddings():
    torch.manual_seed(0)
    model = ProtoNet(num_classes=4).eval()
    batch = _episode_batch()
    # an episode that repeats images of another one (same dataset indices)
    other = {k: v.flip(0) if k in ("image", "index") else v for k, v in batch.items()}
    with torch.no_grad():
        plain = model(batch["image"])
        first, _ = model._eval_embeddings(batch)
        assert len(model._embedding_cache) == len(batch["index"])
        second, _ = model._eval_embeddings(other)
    torch.testing.assert_close(first, plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second, plain.flip(0), rtol=1e-4, atol=1e-5)
    model.on_validation_epoch_start()
    assert not model._embedding_cache


@pytest.mark.parametrize("eval_cache", [True, False])
def test_validation_step_returns_the_maps_of_the_images_it_forwarded(eval_cache):
    """cama.protocols.EvaluationOutputs: with the cache, the maps of the images new to the epoch and
    their ``map_index``; without it, every row's maps."""
    torch.manual_seed(0)
    model = ProtoNet(num_classes=4, eval_cache=eval_cache).eval()
    first = _episode_batch(seed=0)
    fresh = _episode_batch(seed=1)
    # the second episode: rows 0, 2, 4, ... are images of the first, the others new ones
    shared = torch.arange(len(first["index"])) % 2 == 0
    second = {
        **fresh,
        "image": torch.where(shared[:, None, None, None], first["image"], fresh["image"]),
        "index": torch.where(shared, first["index"], fresh["index"] + 1000),
    }
    model.on_validation_epoch_start()
    with torch.no_grad():
        out_first = model.validation_step(first, 0)
        out_second = model.validation_step(second, 1)
        expected_first = model.backbone(first["image"])
        expected_second = model.backbone(second["image"])
    torch.testing.assert_close(out_first["feature_maps"][0], expected_first, rtol=1e-4, atol=1e-5)
    if eval_cache:
        assert out_first["map_index"].tolist() == first["index"].tolist()
        new_rows = (~shared).nonzero().squeeze(1)
        assert out_second["map_index"].tolist() == second["index"][new_rows].tolist()
        torch.testing.assert_close(
            out_second["feature_maps"][0], expected_second[new_rows], rtol=1e-4, atol=1e-5
        )
    else:
        assert "map_index" not in out_second
        torch.testing.assert_close(out_second["feature_maps"][0], expected_second, rtol=1e-4, atol=1e-5)


def test_episode_references_explain_each_query_by_its_predicted_class():
    torch.manual_seed(0)
    model = ProtoNet(num_classes=4).eval()
    batch = _episode_batch(n=3, k=2, q=2)
    with torch.no_grad():
        all_maps = model.feature_maps(batch["image"])
        refs = model.episode_references(batch, all_maps)
    maps = all_maps[0]
    emb = maps.mean(dim=(2, 3))
    labels, is_query = batch["episode_labels"], batch["is_query"]
    assert refs.query_index.tolist() == is_query.nonzero().squeeze(1).tolist()
    assert refs.query_maps.shape == (6, 64, 2, 2)
    for r, pred in enumerate(refs.prediction.tolist()):
        support_index = refs.support_index[r]
        assert all(int(labels[i]) == pred and not bool(is_query[i]) for i in support_index)
        torch.testing.assert_close(refs.supports[r], emb[support_index])
        torch.testing.assert_close(refs.prototype[r], emb[support_index].mean(0))
        # the logits written out: -||q - p_c||^2 against each class's mean support (Eq. 7)
        q = emb[refs.query_index[r]]
        expected = [-(q - emb[(labels == c) & ~is_query].mean(0)).square().sum() for c in range(3)]
        torch.testing.assert_close(refs.logits[r], torch.stack(expected))
    assert refs.prediction.tolist() == refs.logits.argmax(1).tolist()
    assert refs.target.tolist() == labels[is_query].tolist()

def test_training_losses_with_pretraining_and_auxiliary_classifier():
    torch.manual_seed(0)
    batch = _episode_batch()
    pre = ProtoNet(num_classes=3, pretrain_epochs=1)
    losses = pre.compute_losses(batch)  # epoch 0 < pretrain_epochs: classification only
    assert set(losses) == {"class_loss", "class_accuracy", "loss"}
    aux = ProtoNet(num_classes=3, classifier_weight=0.5)
    losses = aux.compute_losses(batch)
    torch.testing.assert_close(losses["loss"], losses["episode_loss"] + 0.5 * losses["class_loss"])
    losses["loss"].backward()
    assert all(p.grad is not None for p in aux.parameters())
    plain = ProtoNet(num_classes=3, metric="cosine", channels_last=True)
    opt = torch.optim.Adam(plain.parameters(), lr=1e-2)
    first = None
    for _ in range(6):
        loss = plain.compute_losses(batch)["loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_backbones_give_the_usual_shapes():
    x84 = torch.randn(1, 3, 84, 84)
    with torch.no_grad():
        assert Conv4()(x84).shape == (1, 64, 5, 5)
        assert ResNet12()(x84).shape == (1, 640, 5, 5)
        net, channels = build_fewshot_backbone("resnet10")
        assert channels == 512 and net(x84).shape == (1, 512, 3, 3)
        net, _ = build_fewshot_backbone("resnet10", last_stride=1)
        assert net(x84).shape == (1, 512, 6, 6)
    leaky = Conv4(activation="leaky_relu")
    assert isinstance(leaky.blocks[0][2], nn.LeakyReLU)
    assert isinstance(ResNet12().blocks[0].act, nn.LeakyReLU)
    with pytest.raises(ValueError):
        build_fewshot_backbone("vgg16")
    with pytest.raises(ValueError):
        build_fewshot_backbone("conv4", pretrained="imagenet")


def test_cosine_schedule_follows_the_half_cosine_of_the_run():
    import math

    import lightning.pytorch as pl

    model = ProtoNet(num_classes=4, lr=2e-3, lr_schedule="cosine")
    model.trainer = pl.Trainer(max_epochs=4, logger=False, enable_checkpointing=False)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([2e-3 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    with pytest.raises(ValueError, match="lr_schedule"):
        ProtoNet(num_classes=4, lr_schedule="linear")
