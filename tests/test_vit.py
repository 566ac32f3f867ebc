"""Vision-transformer backbones (timm): token grids, exact decomposition, gradient maps of token layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cama.backbones import MultiBranchViT, PretrainedWeightsNotFound, TokenGrid, TransformerOptions
from cama.backbones.vit import timm_weights_path
from cama.explain import gradient_cam, ram, record_gradients, similarity_score
from cama.models import CAMA, ProtoNet, RetrievalModel
from cama.viz.model_explainer import METHODS, ModelExplainer

TINY = dict(patch_size=8, embed_dim=16, depth=3, num_heads=2)
SIZE = (32, 16)  # a 4 x 2 grid of 8 x 8 patches


def _options(pool: str = "mean", branch_depth: int = 1) -> TransformerOptions:
    return TransformerOptions(image_size=SIZE, pool=pool, branch_depth=branch_depth, **TINY)


def _cama(pool: str = "mean") -> CAMA:
    torch.manual_seed(0)
    model = CAMA(num_classes=5, backbone="vit_tiny_patch16_224", num_branches=2, transformer=_options(pool))
    return model.eval()


def test_token_grid_folds_patch_tokens_row_major() -> None:
    tokens = torch.randn(2, 1 + 3 * 2, 5)
    grid = TokenGrid(prefix=1, grid=(3, 2))(tokens)
    for y in range(3):
        for x in range(2):
            torch.testing.assert_close(grid[:, :, y, x], tokens[:, 1 + y * 2 + x])
    with pytest.raises(ValueError, match="expected tokens"):
        TokenGrid(prefix=1, grid=(2, 2))(tokens)


@pytest.mark.parametrize("pool", ["mean", "token"])
def test_branch_maps_pool_to_the_embedding_and_ram_sums_to_the_similarity(pool: str) -> None:
    model = _cama(pool)
    images = torch.randn(3, 3, *SIZE)
    reference = F.normalize(torch.randn(3, 2 * 16), dim=1)
    with torch.no_grad():
        maps = model.feature_maps(images)
        embedding = model(images)
        # the branch tokens computed independently of the grid: shared blocks, then the branch's copies
        tokens = model.backbone.shared(model.backbone.embed(images))
        for i, (branch, head) in enumerate(zip(model.backbone.branches, model.heads)):
            out = branch["norm"](branch["blocks"](tokens))
            pooled = out[:, 1:].mean(1) if pool == "mean" else out[:, 0]  # patch mean, or the class token
            expected = F.normalize(head.bn(pooled[:, :, None, None]).flatten(1), dim=1)
            torch.testing.assert_close(embedding[:, 16 * i: 16 * (i + 1)], expected, atol=1e-5, rtol=1e-5)
    assert [tuple(m.shape) for m in maps] == [(3, 16, 4, 2)] * 2
    # RAM decomposes the similarity: the mean of the branch maps, summed over the branches
    total = sum(ram(reference[:, 16 * i: 16 * (i + 1)], m).mean(dim=(1, 2)) for i, m in enumerate(maps))
    torch.testing.assert_close(total, (embedding * reference).sum(1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_every_map_method_on_a_vit_per_branch_and_summed(method: str) -> None:
    model = _cama("token")
    explainer = ModelExplainer(model)
    images = torch.randn(2, 3, *SIZE)
    features = explainer.features(images)
    maps = explainer.explain(method, features, features.embedding)  # each image against itself
    assert maps.shape == (2, 3, *SIZE)  # two branches, then the summed map
    assert torch.isfinite(maps).all()
    # each map (branches, sum) varies over some image: a token layer's gradients reached the patch
    # tokens (an untrained network's map of one image can be negative everywhere, 0 after the ReLU)
    assert (maps.flatten(2).amax(-1) - maps.flatten(2).amin(-1) > 0.5).any(dim=0).all()


class TinyTokenModel(nn.Module):
    """Patches -> tokens (a class token first) -> ``layer`` -> the score's embedding, by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3 * 4 * 4, 6)
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.layer = nn.Linear(6, 6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(images, kernel_size=4, stride=4).transpose(1, 2)  # [B, h*w, 48], row-major
        tokens = torch.cat([self.cls.expand(len(images), -1, -1), self.embed(patches)], dim=1)
        out = self.layer(tokens)
        return out[:, 1:].mean(1) + out[:, 0]  # the patch mean plus the class token


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_gradient_cam_with_reshape_against_the_map_by_hand(method: str) -> None:
    torch.manual_seed(1)
    model = TinyTokenModel()
    images = torch.randn(2, 3, 12, 8)  # a 3 x 2 grid
    target = torch.randn(2, 6)
    got = gradient_cam(model, images, similarity_score(target, metric="dot"), [model.layer], method=method,
                       reshape=TokenGrid(prefix=1, grid=(3, 2)))
    with torch.no_grad():
        patches = F.unfold(images, kernel_size=4, stride=4).transpose(1, 2)
        tokens = model.layer(torch.cat([model.cls.expand(2, -1, -1), model.embed(patches)], dim=1))
        activations = tokens[:, 1:].reshape(2, 3, 2, 6)  # [B, h, w, K]
        # score = <target, mean of the patch tokens + class token>: each patch token's gradient is target / 6
        gradients = (target / 6)[:, None, None, :].expand_as(activations)
        if method == "gradcam":
            raw = (activations * gradients.mean(dim=(1, 2), keepdim=True)).sum(-1)
        else:
            raw = (activations * gradients.relu()).sum(-1)
        up = F.interpolate(raw.relu()[:, None], size=(12, 8), mode="bilinear", align_corners=False)[:, 0]
        low = up.flatten(1).amin(1)[:, None, None]
        high = up.flatten(1).amax(1)[:, None, None]
        expected = (up - low) / (high - low)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_token_layer_without_reshape_names_the_fix() -> None:
    model = TinyTokenModel()
    with pytest.raises(ValueError, match="reshape"):
        record_gradients(model, torch.randn(1, 3, 8, 8), lambda e: e.sum(1), [model.layer])


def test_retrieval_and_fewshot_models_explain_a_vit() -> None:
    torch.manual_seed(0)
    options = _options("token")
    models = [
        RetrievalModel(num_classes=4, backbone="vit_tiny_patch16_224", transformer=options, embedding_size=8),
        ProtoNet(num_classes=4, backbone="vit_tiny_patch16_224", transformer=options),
    ]
    for model in models:
        explainer = ModelExplainer(model.eval())
        features = explainer.features(torch.randn(2, 3, *SIZE))
        target = torch.randn(2, features.embedding.shape[1])
        for method in ("gradcam", "fam"):
            maps = explainer.explain(method, features, target)
            assert maps.shape == (2, 1, *SIZE) and torch.isfinite(maps).all()


def test_pretrained_weights_from_the_documented_path_and_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    name = "vit_tiny_patch16_224"
    with pytest.raises(PretrainedWeightsNotFound, match=str(timm_weights_path(name))):
        MultiBranchViT(name, 1, "imagenet", _options())
    torch.manual_seed(3)
    source = MultiBranchViT(name, 1, None, _options())
    # a timm state dict (the names timm's own model uses), written where the message says
    import timm
    from safetensors.torch import save_file

    reference = timm.create_model(name, num_classes=0, img_size=SIZE, **TINY)
    path = timm_weights_path(name)
    path.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    loaded = MultiBranchViT(name, 1, "imagenet", _options())
    torch.testing.assert_close(loaded.embed.pos_embed, reference.pos_embed)
    torch.testing.assert_close(loaded.branches[0]["blocks"][0].attn.qkv.weight, reference.blocks[-1].attn.qkv.weight)
    assert not torch.equal(loaded.embed.pos_embed, source.embed.pos_embed)
    with pytest.raises(PretrainedWeightsNotFound, match="missing.safetensors"):
        MultiBranchViT(name, 1, str(tmp_path / "missing.safetensors"), _options())


def test_conv_stem_gives_the_same_token_grid() -> None:
    torch.manual_seed(0)
    plain = MultiBranchViT("vit_tiny_patch16_224", 1, None, _options())
    stem = MultiBranchViT("vit_tiny_patch16_224", 1, None, TransformerOptions(image_size=SIZE, conv_stem=2, **TINY))
    images = torch.randn(2, 3, *SIZE)
    assert stem(images)[0].shape == plain(images)[0].shape == (2, 16, 4, 2)
    convolutions = [m for m in stem.embed.patch_embed.proj if isinstance(m, nn.Conv2d)]
    assert [c.stride[0] for c in convolutions] == [2, 1, 2, 1, 2, 1, 1]  # log2(8) stages of 2, then 1x1
    with pytest.raises(ValueError, match="power of 2"):
        MultiBranchViT("vit_tiny_patch16_224", 1, None, TransformerOptions(image_size=(36, 18), conv_stem=1,
                                                                           **{**TINY, "patch_size": 6}))
