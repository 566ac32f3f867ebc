"""The few-shot contrast rows: why the predicted class beat the true class of a misclassified query
(cama.viz.episode_contrast), checked against RAM and prototypes written out, on a hand-made episode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from cama.explain import signed_display
from cama.references import episode_references
from cama.viz import ModelExplainer, to_uint8
from cama.viz.episode_contrast import (
    EPISODE_CONTRAST_LEGEND,
    EPISODE_CONTRAST_LEGEND_LAYER,
    EpisodeContrastRows,
    episode_contrasts,
    first_supports,
)
from cama.viz.episodes import episode_grid
from cama.viz.figures import summed_contrast_map
from cama.viz.layout import display_scale
from cama.viz.targets import Contrast
from explain_command.episodes import explain_episodes

SIZE = (8, 6)


class HandModel(nn.Module):
    """Feature maps: a 1x1 convolution of the image, the identity (the maps are the image's colours);
    embedding: their GAP; a prototypical classifier by the squared Euclidean distance."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3)[:, :, None, None])

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.conv(images)]

    def embed_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return maps[0].mean(dim=(2, 3))

    def logits(self, queries: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(queries, prototypes) ** 2

    def episode_references(self, batch: dict, maps: list[torch.Tensor]):
        return episode_references(maps[0], self.embed_maps(maps), batch["episode_labels"], batch["is_query"],
                                  self.logits, "euclidean")


def episode(query_colors: list[tuple[float, float, float]]) -> dict[str, torch.Tensor]:
    """Two red supports of class 0, two green ones of class 1, then queries of class 0 in the given
    colours (a green one is misclassified), each colour times a positive pattern."""
    colors = [(1.0, 0.1, 0.0), (0.9, 0.0, 0.1), (0.1, 1.0, 0.0), (0.0, 0.9, 0.1), *query_colors]
    pattern = 0.5 + torch.rand(len(colors), 1, *SIZE, generator=torch.Generator().manual_seed(0))
    images = torch.tensor(colors)[:, :, None, None] * pattern
    return {
        "image": images,
        "episode_labels": torch.tensor([0, 0, 1, 1] + [0] * len(query_colors)),
        "is_query": torch.tensor([False] * 4 + [True] * len(query_colors)),
    }


def written_out(batch: dict[str, torch.Tensor]):
    """The episode's prototypes and each image's embedding and maps, with loops."""
    images = batch["image"]
    embeddings = [[float(images[i, k].mean()) for k in range(3)] for i in range(len(images))]
    supports = {c: [i for i in range(4) if int(batch["episode_labels"][i]) == c] for c in (0, 1)}
    prototypes = {c: [sum(embeddings[i][k] for i in rows) / len(rows) for k in range(3)]
                  for c, rows in supports.items()}
    return images, embeddings, prototypes


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


@pytest.fixture(scope="module")
def model() -> HandModel:
    return HandModel().eval()


def contrasts_of(model: HandModel, batch: dict, methods=("ram",)):
    explainer = ModelExplainer(model)
    refs = model.episode_references(batch, model.feature_maps(batch["image"]))
    probes = torch.arange(refs.query_index.numel())
    return refs, episode_contrasts(explainer, methods, batch, refs, probes, refs.target, SIZE)


def test_the_contrastive_ram_of_a_misclassified_query_is_the_difference_of_its_two_prototype_rams(model):
    batch = episode([(1.0, 0.2, 0.0), (0.1, 1.0, 0.1)])  # the second query (class 0) looks green
    images, embeddings, prototypes = written_out(batch)
    refs, contrasts = contrasts_of(model, batch)
    assert refs.prediction.tolist() == [0, 1] and refs.target.tolist() == [0, 0]
    assert contrasts["contrast_rows"].tolist() == [1]  # only the misclassified query
    q = embeddings[5]
    norm = sum(x * x for x in q) ** 0.5
    h, w = SIZE
    # RAM (cama-ram Eq. 10) against p- (class 1) minus against p+ (class 0), pixel by pixel
    prototype_gap = [prototypes[1][k] - prototypes[0][k] for k in range(3)]
    naive = torch.tensor([[sum(prototype_gap[k] * float(images[5, k, y, x]) for k in range(3)) / norm
                           for x in range(w)] for y in range(h)])
    assert torch.allclose(contrasts["ram/contrast"][0], signed_display(naive[None], SIZE)[0], atol=1e-5)
    features = ModelExplainer(model).features(images[5:])
    negative, positive = (torch.tensor([p]) for p in (prototypes[1], prototypes[0]))
    raw = summed_contrast_map(ModelExplainer(model), "ram", features, Contrast(negative, positive))[0]
    assert torch.allclose(raw, naive, atol=1e-5)
    dots = [sum(a * b for a, b in zip(prototypes[c], q)) / norm for c in (1, 0)]
    assert float(raw.sum()) == pytest.approx(h * w * (dots[0] - dots[1]), rel=1e-4)
    # with unit prototypes the sum is h w times the difference of the cosine similarities (Eq. 9)
    unit = [torch.nn.functional.normalize(t, dim=1) for t in (negative, positive)]
    raw_unit = summed_contrast_map(ModelExplainer(model), "ram", features, Contrast(*unit))[0]
    difference = cosine(q, prototypes[1]) - cosine(q, prototypes[0])
    assert float(raw_unit.sum()) == pytest.approx(h * w * difference, rel=1e-4)
    # the captions' s: the cosine similarities to the predicted and the true prototype
    expected = [cosine(q, prototypes[1]), cosine(q, prototypes[0])]
    assert contrasts["contrast_similarities"][0].tolist() == pytest.approx(expected, rel=1e-5)
    # next to it, the first support of the true class (class 0: batch position 0)
    assert torch.equal(contrasts["contrast_supports"][0], images[0])


def test_first_supports_are_the_first_of_each_class_in_batch_order():
    labels = torch.tensor([1, 0, 1, 0, 1, 0])
    is_query = torch.tensor([True, False, False, False, False, True])
    assert first_supports(labels, is_query, torch.tensor([1, 0, 1])).tolist() == [2, 1, 2]
    with pytest.raises(ValueError, match="must each have a support"):
        first_supports(labels, is_query, torch.tensor([2]))


def test_signed_display_not_shared_puts_each_map_on_its_own_scale():
    maps = torch.tensor([[[-2.0, 1.0]], [[0.0, 4.0]]])
    assert torch.allclose(signed_display(maps, shared=False), torch.tensor([[[0.0, 0.75]], [[0.5, 1.0]]]))


def grid(batch: dict, model: HandModel, method: str = "ram", contrastive: bool = True) -> torch.Tensor:
    refs, contrasts = contrasts_of(model, batch, (method,))
    explainer = ModelExplainer(model)
    probes = torch.arange(refs.query_index.numel())
    pictures = {
        "probe_images": to_uint8(batch["image"][refs.query_index]),
        "reference_images": to_uint8(batch["image"][refs.support_index[:, 0]]),
        "matches": refs.prediction == refs.target,
        "probe_classes": refs.target, "reference_classes": refs.prediction,
        method: explainer.explain(method, explainer.features(batch["image"][refs.query_index]),
                                  refs.prototype, branches=False)[:, 0],
        f"{method}/reference": torch.rand(len(probes), *SIZE, generator=torch.Generator().manual_seed(1)),
    }
    if contrastive and contrasts:
        pictures.update(contrasts, contrast_supports=to_uint8(contrasts["contrast_supports"]))
    return episode_grid(pictures, method, title="t")


def test_the_picture_gains_a_row_exactly_under_each_misclassified_query(model):
    right, wrong = (1.0, 0.2, 0.0), (0.1, 1.0, 0.1)
    one_wrong = grid(episode([right, wrong]), model).shape[1]
    assert one_wrong > grid(episode([right, wrong]), model, contrastive=False).shape[1] + 128
    # a second misclassified query: one more row, as high as a plain picture's row (with its captions)
    row = grid(episode([right] * 3), model).shape[1] - grid(episode([right] * 2), model).shape[1]
    assert grid(episode([wrong, wrong]), model).shape[1] - one_wrong == row
    all_right = episode([right, right])
    assert torch.equal(grid(all_right, model), grid(all_right, model, contrastive=False))


@pytest.mark.parametrize("method", ["gradcam", "dist_cam"])
def test_the_other_methods_draw_the_row_too_and_eigencam_never(model, method):
    batch = episode([(0.1, 1.0, 0.1)])
    _, contrasts = contrasts_of(model, batch, (method, "eigencam"))
    assert f"{method}/contrast" in contrasts and "eigencam/contrast" not in contrasts
    assert contrasts[f"{method}/contrast"].shape == (1, *SIZE)
    assert grid(batch, model, "eigencam").shape == grid(batch, model, "eigencam", contrastive=False).shape


def test_the_rows_go_under_their_queries_and_the_legend_says_the_scale():
    scale = display_scale(2, 2)  # tiles of 2 x 2 pictures at display size
    size = (scale.height, scale.width)
    tiles = torch.arange(3, dtype=torch.uint8)[:, None, None, None, None].expand(3, 4, 3, *size).clone()
    support = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    maps, similarities = torch.full((1, 2, 2), 0.5), torch.tensor([[0.9, 0.2]])
    rows = EpisodeContrastRows(torch.tensor([1]), maps, support, ["class 1"], ["class 0"], similarities)
    probes = torch.zeros(3, 3, 2, 2, dtype=torch.uint8)
    out, captions, labels = rows.insert(tiles, [["a"] * 4, ["b"] * 4, ["c"] * 4], probes, 0.5, "jet", scale)
    assert out.shape[0] == 4 and torch.equal(out[[0, 1, 3]], tiles[[0, 1, 2]])
    assert bool((out[2, 0] == 255).all()) and bool((out[2, 3] == 255).all())
    assert labels == ["", "", "why class 1 beat\nthe true class", ""]
    assert captions[2][1] == "class 0 (true)" and captions[2][2] == "s 0.900 - 0.200"
    pictures = {"contrast_rows": torch.tensor([0]), "ram/contrast": torch.zeros(1, 2, 2),
                "contrast_supports": torch.zeros(1, 3, 2, 2, dtype=torch.uint8)}
    assert EpisodeContrastRows.of(pictures, "ram", ["p"], ["t"]).legend == EPISODE_CONTRAST_LEGEND
    pictures["gradcam/contrast"] = pictures["ram/contrast"]
    assert EpisodeContrastRows.of(pictures, "gradcam", ["p"], ["t"]).legend == EPISODE_CONTRAST_LEGEND_LAYER
    assert EpisodeContrastRows.of(pictures, "fam", ["p"], ["t"]) is None


def test_explain_draws_the_row_unless_told_not_to(model, tmp_path: Path):
    batch = episode([(1.0, 0.2, 0.0), (0.1, 1.0, 0.1)])

    def height(contrastive: bool) -> int:
        out = tmp_path / str(contrastive)
        out.mkdir()
        (path,) = explain_episodes(model, [("e", batch)], None, ["ram"], out, 2, torch.device("cpu"), False,
                                   0.5, "jet", contrastive=contrastive, explainer=ModelExplainer(model))
        return Image.open(path).size[1]

    assert height(True) > height(False) + 128
