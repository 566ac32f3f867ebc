"""Contrastive ranking maps (``cama.explain.contrastive``, ``cama.viz`` Contrast targets, the ranking
pictures' row "why rank r beat the true match") against computations written out here: the RAMs of
``cama.explain.ram`` subtracted, the cosine similarities from the embeddings, the gradients of the two
similarities taken with ``torch.autograd.grad`` and the Grad-CAM / Layer-CAM formulas as loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cama.explain import contrast_score, contrastive_ram, contrastive_ranks, dist_cam, ram, signed_display
from cama.models import CAMA
from cama.viz import ModelExplainer, ranking_figure, to_uint8
from cama.viz.layout import display_scale
from cama.viz.figures import Shown, contrast_row, contrastive_maps, ranking_picture
from cama.viz.pictures import CONTRAST_LEGEND, CONTRAST_LEGEND_LAYER
from cama.viz.targets import Contrast

SIZE = (16, 12)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The cosine similarity of two vectors, written out."""
    dot = sum(float(x) * float(y) for x, y in zip(a, b))
    return dot / (sum(float(x) ** 2 for x in a) ** 0.5 * sum(float(y) ** 2 for y in b) ** 0.5)


class TinyEmbedder(nn.Module):
    """Two convolutions with ReLUs and a GAP embedding: an EmbeddingModel (its gradient layer: conv2)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, stride=2)

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [torch.relu(self.conv2(torch.relu(self.conv1(images))))]

    def embed_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return maps[0].mean(dim=(2, 3))


@pytest.fixture(scope="module")
def tiny() -> TinyEmbedder:
    return TinyEmbedder().double().eval()


# --------------------------------------------------------------------------------------------------
# RAM: exact by linearity
# --------------------------------------------------------------------------------------------------
def test_contrastive_ram_is_the_difference_of_two_rams_and_sums_to_the_similarity_difference():
    maps = torch.randn(3, 5, 4, 3, generator=generator(0), dtype=torch.float64)
    negative = F.normalize(torch.randn(3, 5, generator=generator(1), dtype=torch.float64), dim=1)
    positive = F.normalize(torch.randn(3, 5, generator=generator(2), dtype=torch.float64), dim=1)
    probe = contrastive_ram(maps, negative, positive)
    assert torch.allclose(probe, ram(negative, maps) - ram(positive, maps), atol=1e-12)
    h, w = maps.shape[-2:]
    for b in range(3):
        pooled = maps[b].mean(dim=(1, 2))  # f = GAP(F)
        difference = cosine(pooled, negative[b]) - cosine(pooled, positive[b])
        assert float(probe[b].sum()) == pytest.approx(h * w * difference, rel=1e-9, abs=1e-9)


def test_the_two_gallery_maps_together_sum_to_the_similarity_difference():
    """On g- the RAM of s(q, g-) against q, on g+ minus the RAM of s(q, g+): with a unit query
    embedding their pixels add up to h w (s(q, g-) - s(q, g+))."""
    negative_maps = torch.randn(2, 4, 3, 3, generator=generator(3), dtype=torch.float64)
    positive_maps = torch.randn(2, 4, 3, 3, generator=generator(4), dtype=torch.float64)
    query = F.normalize(torch.randn(2, 4, generator=generator(5), dtype=torch.float64), dim=1)
    on_negative = contrastive_ram(negative_maps, query)
    on_positive = contrastive_ram(positive_maps, None, query)
    assert torch.allclose(on_negative, ram(query, negative_maps), atol=1e-12)
    assert torch.allclose(on_positive, -ram(query, positive_maps), atol=1e-12)
    for b in range(2):
        difference = cosine(query[b], negative_maps[b].mean(dim=(1, 2))) - cosine(
            query[b], positive_maps[b].mean(dim=(1, 2)))
        total = float(on_negative[b].sum() + on_positive[b].sum())
        assert total == pytest.approx(9 * difference, rel=1e-9, abs=1e-9)


def test_contrastive_ram_needs_a_target_of_the_maps_shape():
    maps = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="neither"):
        contrastive_ram(maps)
    with pytest.raises(ValueError, match="negative"):
        contrastive_ram(maps, torch.randn(2, 5))
    with pytest.raises(ValueError, match="neither"):
        Contrast(None, None)


def test_the_explainers_contrast_ram_of_a_two_branch_model_sums_to_the_dot_product_difference():
    """CAMA's embedding is its unit branch vectors concatenated: the summed contrastive RAM on the probe
    sums to h w (<e_q, e_g-> - <e_q, e_g+>), and each branch is contrastive_ram on the branch's maps."""
    torch.manual_seed(0)
    model = CAMA(num_classes=4, backbone="resnet10", width=8, num_branches=2).eval()
    explainer = ModelExplainer(model)
    features = explainer.features(torch.rand(3, 3, 64, 32, generator=generator(6)))
    query, negative, positive = (features.select([i]) for i in range(3))
    for a, b in features.slices:
        assert torch.allclose(features.embedding[:, a:b].norm(dim=1), torch.ones(3), atol=1e-5)
    raw = explainer.raw_maps("ram", query, Contrast(negative.embedding, positive.embedding))
    h, w = raw.shape[-2:]
    e_q, e_neg, e_pos = query.embedding[0], negative.embedding[0], positive.embedding[0]
    dot_neg, dot_pos = (sum(float(x * y) for x, y in zip(e_q, e)) for e in (e_neg, e_pos))
    expected = h * w * (dot_neg - dot_pos)
    assert float(raw.sum()) == pytest.approx(expected, rel=1e-4, abs=1e-4)
    for i, (a, b) in enumerate(features.slices):
        maps = query.scaled_maps()[i]
        branch = ram(negative.embedding[:, a:b], maps) - ram(positive.embedding[:, a:b], maps)
        assert torch.allclose(raw[:, i], branch, atol=1e-5)


def test_dist_cam_contrast_is_the_difference_of_the_two_maps(tiny):
    explainer = ModelExplainer(tiny)
    features = explainer.features(torch.rand(2, 3, *SIZE, generator=generator(7), dtype=torch.float64))
    references = torch.randn(2, 2, 8, generator=generator(8), dtype=torch.float64)
    raw = explainer.raw_maps("dist_cam", features, Contrast(references[0], references[1]))
    maps = features.maps[0]
    expected = dist_cam(maps, references[0]) - dist_cam(maps, references[1])
    assert torch.allclose(raw[:, 0], expected, atol=1e-12)
    cam = ModelExplainer(CAMA(num_classes=4, backbone="resnet10", width=8).eval())
    with pytest.raises(ValueError, match="no contrastive map"):
        cam.raw_maps("cam", cam.features(torch.rand(1, 3, 64, 32)), Contrast(torch.zeros(1, 32)))


# --------------------------------------------------------------------------------------------------
# gradient methods: the gradient of the difference
# --------------------------------------------------------------------------------------------------
def naive_gradients(tiny: TinyEmbedder, images: torch.Tensor, targets: list[tuple[torch.Tensor, float]]):
    """The activations A of conv2 and the sum of sign * d cos(e, t) / dA, one autograd call per target."""
    activations = tiny.conv2(torch.relu(tiny.conv1(images)))
    embedding = activations.relu().mean(dim=(2, 3))
    gradient = torch.zeros_like(activations)
    for target, sign in targets:
        score = F.cosine_similarity(embedding, target, dim=1).sum()
        gradient = gradient + sign * torch.autograd.grad(score, activations, retain_graph=True)[0]
    return activations.detach(), gradient


def displayed(raw: torch.Tensor) -> torch.Tensor:
    """ReLU, bilinear upsampling to the images' size, per-map min-max: written out."""
    up = F.interpolate(raw.relu()[:, None], size=SIZE, mode="bilinear", align_corners=False)[:, 0]
    low = up.amin(dim=(1, 2), keepdim=True)
    span = up.amax(dim=(1, 2), keepdim=True) - low
    assert bool((span > 0).all()), "a constant map: the case tests nothing"
    return (up - low) / span


def grad_cam(activations: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(activations.shape[0], *activations.shape[-2:], dtype=activations.dtype)
    for b in range(activations.shape[0]):
        for k in range(activations.shape[1]):
            out[b] += gradient[b, k].mean() * activations[b, k]
    return out


def layer_cam(activations: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(activations.shape[0], *activations.shape[-2:], dtype=activations.dtype)
    for b in range(activations.shape[0]):
        for k in range(activations.shape[1]):
            out[b] += gradient[b, k].clamp_min(0) * activations[b, k]
    return out


@pytest.mark.parametrize("method, formula", [("gradcam", grad_cam), ("layercam", layer_cam)])
@pytest.mark.parametrize("side", ["probe", "true match"])
def test_a_gradient_contrast_map_is_the_map_of_the_gradients_difference(tiny, method, formula, side):
    images = torch.rand(2, 3, *SIZE, generator=generator(9), dtype=torch.float64)
    negative, positive = torch.randn(2, 2, 8, generator=generator(10), dtype=torch.float64)
    contrast, targets = (
        (Contrast(negative, positive), [(negative, 1.0), (positive, -1.0)]) if side == "probe"
        else (Contrast(None, positive), [(positive, -1.0)])
    )
    explainer = ModelExplainer(tiny)
    ours = explainer.gradient_maps(method, explainer.features(images), contrast, branches=False)[:, 0]
    activations, gradient = naive_gradients(tiny, images, targets)
    assert torch.allclose(ours, displayed(formula(activations, gradient)), atol=1e-6)
    if side == "probe":
        _, minus = naive_gradients(tiny, images, [(positive, 1.0)])
        _, plus = naive_gradients(tiny, images, [(negative, 1.0)])
        two_maps = formula(activations, plus) - formula(activations, minus)
        if method == "gradcam":  # linear in the gradient: the difference of the two raw maps
            assert torch.allclose(ours, displayed(two_maps), atol=1e-6)
        else:  # ReLU(g- - g+) is not ReLU(g-) - ReLU(g+): the difference of two Layer-CAMs is another map
            assert (ours - displayed(two_maps)).abs().max() > 1e-3


def test_contrast_score_is_the_difference_of_the_two_similarities():
    embedding = torch.randn(3, 6, generator=generator(11))
    negative, positive = torch.randn(2, 3, 6, generator=generator(12))
    values = contrast_score(negative, positive)(embedding)
    for b in range(3):
        expected = cosine(embedding[b], negative[b]) - cosine(embedding[b], positive[b])
        assert float(values[b]) == pytest.approx(expected, rel=1e-5)
    only_positive = contrast_score(None, positive)(embedding)
    assert torch.allclose(only_positive, -F.cosine_similarity(embedding, positive))
    with pytest.raises(ValueError, match="metric"):
        contrast_score(negative, positive, metric="l1")


def test_contrast_score_rows_score_each_row_against_its_own_samples_pair():
    # Score-CAM / Ablation-CAM score rows that are versions of sample index[r]: each against that
    # sample's negative and positive reference
    negative, positive = torch.randn(2, 3, 6, generator=generator(13))
    index = torch.tensor([2, 0, 0, 1, 2])
    rows = torch.randn(5, 6, generator=generator(14))
    values = contrast_score(negative, positive).rows(index)(rows)
    for r, b in enumerate(index.tolist()):
        expected = cosine(rows[r], negative[b]) - cosine(rows[r], positive[b])
        assert float(values[r]) == pytest.approx(expected, rel=1e-5)
    only_negative = contrast_score(negative, None).rows(index)(rows)
    assert torch.allclose(only_negative, F.cosine_similarity(rows, negative[index]))


# --------------------------------------------------------------------------------------------------
# which probes, and the picture
# --------------------------------------------------------------------------------------------------
def test_only_probes_whose_first_false_match_outranks_the_true_match_are_chosen():
    matches = torch.tensor([
        [False, True, False, True],   # rank 1 false, true match at rank 2: chosen
        [True, False, False, False],  # the true match first: not chosen
        [False, False, False, False],  # no true match in the list: not chosen
        [False, False, False, True],  # true match at rank 4: chosen
        [False, False, True, False],  # the true match lies past the list's end (valid below): not chosen
    ])
    valid = torch.ones_like(matches)
    valid[4, 2:] = False
    chosen, negative, positive = contrastive_ranks(matches, valid)
    assert chosen.tolist() == [True, False, False, True, False]
    assert negative.tolist() == [0, 1, 0, 0, 0]
    assert positive.tolist() == [1, 0, 4, 3, 4]


def test_signed_display_shares_one_scale_and_puts_zero_at_one_half():
    maps = torch.tensor([[[-2.0, 1.0]], [[0.0, 4.0]]])
    assert torch.allclose(signed_display(maps), torch.tensor([[[0.25, 0.625]], [[0.5, 1.0]]]))
    assert torch.equal(signed_display(torch.zeros(1, 2, 2)), torch.full((1, 2, 2), 0.5))


def test_the_ranking_picture_gains_the_row_only_when_a_false_match_comes_first(tiny):
    explainer = ModelExplainer(tiny)
    query = explainer.features(torch.rand(1, 3, *SIZE, generator=generator(13), dtype=torch.float64))
    listed = explainer.features(torch.rand(3, 3, *SIZE, generator=generator(14), dtype=torch.float64))
    shown_query = Shown(query, to_uint8(query.images), ["id 1"])
    shown_listed = Shown(listed, to_uint8(listed.images), ["id 2", "id 1", "id 3"])

    def picture(matches: list[bool], contrastive: bool) -> torch.Tensor:
        return ranking_picture(explainer, "ram", shown_query, shown_listed, torch.tensor(matches), None, "t",
                               contrastive=contrastive)

    plain = picture([False, True, False], contrastive=False)
    with_row = picture([False, True, False], contrastive=True)
    assert with_row.shape[1] > plain.shape[1] + 128 and with_row.shape[2] >= plain.shape[2]
    assert torch.equal(picture([True, False, False], contrastive=True), picture([True, False, False], False))
    # the row's maps: on the query its contrastive RAM against (rank 1, rank 2), on its own scale;
    # on the two gallery images RAM against the query, + and -, on one scale
    maps = contrastive_maps(explainer, "ram", query, listed.select([0]), listed.select([1]), SIZE)
    features = query.maps[0]
    probe = ram(listed.embedding[:1], features) - ram(listed.embedding[1:2], features)
    assert torch.allclose(maps[0], signed_display(probe, SIZE)[0], atol=1e-6)
    on_listed = listed.maps[0]
    gallery = torch.cat([ram(query.embedding, on_listed[:1]), -ram(query.embedding, on_listed[1:2])])
    assert torch.allclose(maps[1:], signed_display(gallery, SIZE), atol=1e-6)


@pytest.mark.parametrize("method", ["cam", "eigencam"])
def test_the_contrast_of_a_method_without_a_similarity_target_is_never_drawn(method):
    """``cam`` explains a class, EigenCAM no target: the picture has no contrast row (and no error)."""
    model = CAMA(num_classes=4, backbone="resnet10", width=8).eval()
    explainer = ModelExplainer(model)
    query, listed = explainer.features(torch.rand(1, 3, 64, 32)), explainer.features(torch.rand(2, 3, 64, 32))
    shown = Shown(query, to_uint8(query.images)), Shown(listed, to_uint8(listed.images))
    args = (explainer, method, *shown, torch.tensor([False, True]), None, "t")
    assert torch.equal(ranking_picture(*args, contrastive=True), ranking_picture(*args, contrastive=False))


def test_eigencam_refuses_a_contrast_target():
    model = CAMA(num_classes=4, backbone="resnet10", width=8).eval()
    explainer = ModelExplainer(model)
    query, listed = explainer.features(torch.rand(1, 3, 64, 32)), explainer.features(torch.rand(2, 3, 64, 32))
    with pytest.raises(ValueError, match="eigencam has no contrastive map"):
        explainer.gradient_maps("eigencam", query, Contrast(listed.embedding[:1], listed.embedding[1:]))


@pytest.mark.parametrize("method", ["scorecam", "hirescam"])
def test_a_layer_methods_contrast_row_is_its_map_of_the_difference(method):
    """Gradient-free and gradient CAMs alike: the probe's contrast map is the method's map of
    s(q, g-) - s(q, g+), computed here with the Contrast target directly."""
    torch.manual_seed(0)
    model = CAMA(num_classes=4, backbone="resnet10", width=8).eval()
    explainer = ModelExplainer(model)
    query, listed = explainer.features(torch.rand(1, 3, 64, 32)), explainer.features(torch.rand(2, 3, 64, 32))
    maps = contrastive_maps(explainer, method, query, listed.select([0]), listed.select([1]))
    direct = explainer.gradient_maps(method, query, Contrast(listed.embedding[:1], listed.embedding[1:]),
                                     branches=False)[:, 0]
    assert torch.allclose(maps[0], signed_display(direct, (64, 32)), atol=1e-5)


def test_first_true_match_ranks_the_whole_gallery():
    """Retrieval on a line: from image 0 the others lie at squared distances 25, 1, 4, 9, so its only
    true match (image 1) is 4th (rank 3, 0-based); from image 2 its true match 3 is 2nd after a tie broken
    by position; image 4's class has no other image."""
    from cama.metrics.ranking import EmbeddingSet
    from cama.references import RetrievalReferences

    labels = torch.tensor([0, 0, 1, 1, 2])
    gallery = EmbeddingSet(torch.tensor([[0.0], [5.0], [1.0], [2.0], [3.0]]), labels, torch.arange(5))
    provider = RetrievalReferences(labels)
    probes = torch.tensor([0, 2, 4])
    rank, index = provider.first_true_match(gallery, gallery.embeddings[probes], probes)
    assert rank.tolist() == [3, 1, -1] and index.tolist() == [1, 3, -1]


def test_a_true_match_appended_after_the_top_k_gets_its_rank_and_a_gap():
    query, gallery = torch.zeros(3, 16, 12, dtype=torch.uint8), torch.zeros(3, 3, 16, 12, dtype=torch.uint8)
    maps = torch.zeros(1, 16, 12), torch.zeros(3, 1, 16, 12)
    consecutive = ranking_figure(query, gallery, None, *maps)
    skipping = ranking_figure(query, gallery, None, *maps, ranks=[1, 2, 37])
    gap = display_scale(16, 12).gap - display_scale(16, 12).padding
    assert skipping.shape[2] == consecutive.shape[2] + gap  # one more gap, before "rank 37"


@pytest.mark.parametrize(("method", "legend"), [("ram", CONTRAST_LEGEND), ("gradcam", CONTRAST_LEGEND_LAYER)])
def test_the_contrast_rows_legend_says_how_its_maps_are_scaled(method, legend):
    """RAM's row is signed on one scale (0.5 = 0); a layer CAM's maps are its own [0, 1] maps of the
    difference, each min-max normalised: the legend must not promise a shared signed scale."""
    torch.manual_seed(0)
    model = CAMA(num_classes=4, backbone="resnet10", width=8).eval()
    explainer = ModelExplainer(model)
    query, listed = explainer.features(torch.rand(1, 3, 64, 32)), explainer.features(torch.rand(2, 3, 64, 32))
    shown = Shown(query, to_uint8(query.images)), Shown(listed, to_uint8(listed.images))
    row = contrast_row(explainer, method, *shown, torch.tensor([False, True]))
    assert row is not None and row.legend == legend
