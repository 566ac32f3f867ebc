"""Deletion and insertion curves (RISE Sec. 4.1), their baselines (ROAD's noisy linear imputation,
blur, mean) and scores, each against a computation written out here: a loop over the images and the
steps, a dense solve of ROAD's system, ``evaluate_rank`` on each perturbed probe, a hand-worked AUC."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cama.map_scoring import CurveOptions, ranking_scores
from cama.metrics import evaluate_rank
from cama.metrics.deletion import (
    DeletionInsertion,
    curve_auc,
    perturbation_curves,
    reference_maps,
)
from cama.metrics.distances import pairwise_distance
from cama.metrics.imputation import ROAD_WEIGHTS, gaussian_blur, noisy_linear_imputation
from cama.metrics.ranking import EmbeddingSet, ranked_matches, reid_excluded

pytestmark = pytest.mark.usefixtures("one_thread")

OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def tiny_net(dim: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, dim)).eval()


def trapezoid_written_out(points: list[float]) -> float:
    steps = len(points) - 1
    return sum((points[k] + points[k + 1]) / 2 / steps for k in range(steps))


def curves_written_out(images, maps, score_one, steps, fill):
    """One image, one map and one step at a time: the pixels ordered by argsort of the upsampled map,
    the first ``k H W // steps`` removed (deletion) or kept (insertion); ``fill(b, image, removed)``
    replaces the removed pixels of image ``b``."""
    count, methods = maps.shape[:2]
    height, width = images.shape[-2:]
    pixels = height * width
    deletion = [[[] for _ in range(methods)] for _ in range(count)]
    insertion = [[[] for _ in range(methods)] for _ in range(count)]
    for b in range(count):
        for m in range(methods):
            upsampled = F.interpolate(
                maps[b, m][None, None], size=(height, width), mode="bilinear", align_corners=False
            )
            order = torch.argsort(upsampled.flatten(), descending=True, stable=True)
            for k in range(steps + 1):
                n = k * pixels // steps
                removed = torch.zeros(pixels, dtype=torch.bool)
                removed[order[:n]] = True
                removed = removed.view(height, width)
                deletion[b][m].append(score_one(b, fill(b, images[b], removed)))
                insertion[b][m].append(score_one(b, fill(b, images[b], ~removed)))
    return torch.tensor(deletion), torch.tensor(insertion)


# ----------------------------------------------------------------------------------- the curves
@pytest.mark.parametrize("baseline", ["blur", "mean", "noisy_linear"])
def test_curves_and_aucs_equal_a_loop_over_images_maps_and_steps(baseline):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 8, 6, generator=generator)
    maps = torch.rand(3, 2, 4, 3, generator=generator)  # two maps per image, upsampled to 8 x 6
    maps[0, 1] = 0.0  # a constant map: the raster order
    noise = torch.randn(3, 3, 8, 6, generator=generator)
    net = tiny_net()
    directions = torch.randn(3, 5, generator=generator)  # the score depends on the image it comes from

    def score(perturbed, rows):
        return (net(perturbed) * directions[rows]).sum(1)

    @torch.no_grad()
    def score_one(b, image):
        return float(score(image[None], torch.tensor([b]))[0])

    def fill(b, image, removed):
        if baseline == "blur":
            return torch.where(removed, gaussian_blur(image[None])[0], image)
        if baseline == "mean":
            return torch.where(removed, torch.zeros_like(image), image)
        return noisy_linear_imputation(image[None], removed[None], noise[b][None])[0]

    steps = 5  # 48 pixels: 9, 19, 28, 38 after the inner steps
    deletion, insertion = perturbation_curves(
        images, maps, score, steps, baseline, batch_size=7, noise=noise
    )
    want_deletion, want_insertion = curves_written_out(images, maps, score_one, steps, fill)
    assert deletion.shape == insertion.shape == (3, 2, steps + 1)
    assert torch.allclose(deletion, want_deletion, atol=1e-4)
    assert torch.allclose(insertion, want_insertion, atol=1e-4)
    for b in range(3):
        for m in range(2):
            assert float(curve_auc(deletion)[b, m]) == pytest.approx(
                trapezoid_written_out(want_deletion[b, m].tolist()), abs=1e-4
            )
    # the intact images' scores given: the same curves, those images never scored
    intact = score(images, torch.arange(3))
    asked: list[int] = []

    def counted(perturbed, rows):
        asked.append(len(rows))
        return score(perturbed, rows)

    again = perturbation_curves(
        images, maps, counted, steps, baseline, batch_size=100, intact=intact, noise=noise
    )
    assert sum(asked) == 3 * (1 + 2 * 2 * (steps - 1))  # the fully removed image, 2 M (steps - 1) others
    assert torch.allclose(again[0], deletion, atol=1e-5) and torch.allclose(again[1], insertion, atol=1e-5)


def test_hand_worked_two_by_two_auc():
    """Pixels 4 3 / 2 1, the map orders them 3, 2, 1, 4; the score is the pixel sum, removed pixels 0
    (``mean``): deletion 10, 7, 5, 4, 0 -> AUC (10/2 + 7 + 5 + 4 + 0/2) / 4 = 5.25; insertion 0, 3, 5,
    6, 10 -> (0/2 + 3 + 5 + 6 + 10/2) / 4 = 4.75."""
    image = torch.tensor([[4.0, 3.0], [2.0, 1.0]])[None, None]
    heat = torch.tensor([[0.1, 0.9], [0.5, 0.3]])[None, None]
    deletion, insertion = perturbation_curves(image, heat, lambda x, rows: x.sum((1, 2, 3)), 4, "mean")
    assert deletion[0, 0].tolist() == [10.0, 7.0, 5.0, 4.0, 0.0]
    assert insertion[0, 0].tolist() == [0.0, 3.0, 5.0, 6.0, 10.0]
    assert curve_auc(deletion).item() == pytest.approx(5.25)
    assert curve_auc(insertion).item() == pytest.approx(4.75)
    # two steps: 0 and 2 pixels removed after the first -> 10, 5, 0: (10/2 + 5 + 0) / 2 = 5
    two, _ = perturbation_curves(image, heat, lambda x, rows: x.sum((1, 2, 3)), 2, "mean")
    assert two[0, 0].tolist() == [10.0, 5.0, 0.0] and curve_auc(two).item() == pytest.approx(5.0)
    metric = DeletionInsertion()
    metric.update(deletion[:, 0], insertion[:, 0])
    metric.update(torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0]]), torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0]]))
    result = metric.compute()
    assert result["deletion_auc"].item() == pytest.approx((5.25 + 1.0) / 2)
    assert result["insertion_auc"].item() == pytest.approx(4.75 / 2)
    half_width = 1.96 * statistics.stdev([5.25, 1.0]) / math.sqrt(2)
    assert result["deletion_auc_ci95"].item() == pytest.approx(half_width)


def test_metric_names_each_score_and_sums_over_batches():
    generator = torch.Generator().manual_seed(0)
    deletion, insertion = torch.rand(5, 4, 3, generator=generator), torch.rand(5, 4, 3, generator=generator)
    metric = DeletionInsertion(scores=("", "ap", "rr"))
    metric.update(deletion[:2], insertion[:2])
    metric.update(deletion[2:], insertion[2:])
    result = metric.compute()
    for s, name in enumerate(("", "_ap", "_rr")):
        for curve, values in (("deletion", deletion), ("insertion", insertion)):
            areas = [trapezoid_written_out(values[b, :, s].tolist()) for b in range(5)]
            assert result[f"{curve}{name}_auc"].item() == pytest.approx(statistics.mean(areas), abs=1e-6)
            assert result[f"{curve}{name}_auc_ci95"].item() == pytest.approx(
                1.96 * statistics.stdev(areas) / math.sqrt(5), abs=1e-6
            )


# ------------------------------------------------------------------------------- the rank score
def test_rank_scores_equal_evaluate_rank_on_each_perturbed_probe():
    """AP and rank of the first true match of every point of the curves = ``evaluate_rank`` of that
    perturbed probe alone against the fixed gallery (Market-1501's exclusions: same identity and
    camera, junk); the similarity = the cosine to the reference."""
    generator = torch.Generator().manual_seed(3)
    net = tiny_net(dim=4, seed=1)
    probes = torch.randn(3, 3, 6, 4, generator=generator)
    maps = torch.rand(3, 2, 6, 4, generator=generator)
    g_pids = torch.tensor([1, 1, 2, 2, 3, 0, -1, 1, 3, 2, 0, 1])
    g_cams = torch.tensor([0, 1, 0, 1, 1, 0, 1, 1, 0, 0, 1, 0])
    q_pids, q_cams = torch.tensor([1, 2, 3]), torch.tensor([0, 1, 0])
    with torch.no_grad():
        gallery_embeddings = torch.randn(12, 4, generator=generator)
        references = net(probes)[[2, 0, 1]]
    gallery = EmbeddingSet(gallery_embeddings, g_pids, torch.arange(12), g_cams)
    of_embeddings = ranking_scores(
        references, gallery, q_pids[:, None] == g_pids[None], reid_excluded(q_pids, q_cams, g_pids, g_cams)
    )
    steps = 3
    deletion, insertion = perturbation_curves(
        probes, maps, lambda x, rows: of_embeddings(net(x), rows), steps, "mean"
    )
    assert deletion.shape == (3, 2, steps + 1, 3)
    pixels = 24
    for b in range(3):
        for m in range(2):
            order = torch.argsort(maps[b, m].flatten(), descending=True, stable=True)
            for k in range(steps + 1):
                for curve, keep_first in ((deletion, False), (insertion, True)):
                    first = torch.zeros(pixels, dtype=torch.bool)
                    first[order[: k * pixels // steps]] = True
                    kept = first if keep_first else ~first
                    image = probes[b] * kept.view(1, 6, 4)
                    with torch.no_grad():
                        embedding = net(image[None])
                    distances = pairwise_distance(embedding, gallery_embeddings)
                    cmc, m_ap = evaluate_rank(
                        distances, q_pids[b : b + 1], g_pids, q_cams[b : b + 1], g_cams, max_rank=12
                    )
                    rank = int((cmc == 0).sum()) + 1
                    similarity = F.cosine_similarity(embedding, references[b : b + 1])[0]
                    assert curve[b, m, k, 0].item() == pytest.approx(similarity.item(), abs=1e-5)
                    assert curve[b, m, k, 1].item() == pytest.approx(m_ap, abs=1e-6)
                    assert curve[b, m, k, 2].item() == pytest.approx(1.0 / rank, abs=1e-6)


def test_ranked_matches_equal_evaluate_rank_query_by_query():
    generator = torch.Generator().manual_seed(5)
    q_pids = torch.randint(1, 6, (20,), generator=generator)
    g_pids = torch.randint(-1, 6, (50,), generator=generator)
    q_cams = torch.randint(0, 3, (20,), generator=generator)
    g_cams = torch.randint(0, 3, (50,), generator=generator)
    distances = torch.randint(0, 12, (20, 50), generator=generator).float()  # ties: by gallery column
    exclude = reid_excluded(q_pids, q_cams, g_pids, g_cams)
    ap, first = ranked_matches(distances, q_pids[:, None] == g_pids[None], exclude)
    checked = 0
    for i in range(20):
        kept = (g_pids != -1) & ~((g_pids == q_pids[i]) & (g_cams == q_cams[i]))
        if not bool(((g_pids == q_pids[i]) & kept).any()):
            assert ap[i].item() == 0.0 and first[i].item() == 51  # no true match left
            continue
        cmc, m_ap = evaluate_rank(
            distances[i : i + 1], q_pids[i : i + 1], g_pids, q_cams[i : i + 1], g_cams, max_rank=50
        )
        assert ap[i].item() == pytest.approx(m_ap, abs=1e-9)
        assert first[i].item() == int((cmc == 0).sum()) + 1
        checked += 1
    assert checked > 10


# -------------------------------------------------------------------------------- the baselines
def dense_road_solve(image: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """ROAD's system written out pixel by pixel and solved densely (float64): each removed pixel is
    the weighted mean of its neighbours inside the image, the known ones fixed."""
    height, width = removed.shape
    unknown = [(y, x) for y in range(height) for x in range(width) if removed[y, x]]
    index = {p: i for i, p in enumerate(unknown)}
    out = image.double().clone()
    for c in range(image.shape[0]):
        a = torch.zeros(len(unknown), len(unknown), dtype=torch.float64)
        rhs = torch.zeros(len(unknown), dtype=torch.float64)
        for i, (y, x) in enumerate(unknown):
            for dy, dx in OFFSETS:
                ny, nx = y + dy, x + dx
                if not (0 <= ny < height and 0 <= nx < width):
                    continue
                weight = ROAD_WEIGHTS[dy + 1][dx + 1]
                a[i, i] += weight
                if removed[ny, nx]:
                    a[i, index[(ny, nx)]] -= weight
                else:
                    rhs[i] += weight * float(image[c, ny, nx])
        solution = torch.linalg.solve(a, rhs)
        for i, (y, x) in enumerate(unknown):
            out[c, y, x] = solution[i]
    return out


def test_noisy_linear_imputation_solves_road_s_system():
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(3, 2, 7, 5, generator=generator)
    removed = torch.rand(3, 7, 5, generator=generator) < 0.6
    removed[1, 1:6, 1:4] = True  # a block: the slowest to fill
    removed[2] = True
    removed[2, 0, 0] = False  # one known pixel
    imputed = noisy_linear_imputation(images, removed)
    for b in range(3):
        assert torch.allclose(imputed[b].double(), dense_road_solve(images[b], removed[b]), atol=1e-4)
    # the property: every imputed pixel is the weighted mean of its neighbours in the image
    for b in range(3):
        for y in range(7):
            for x in range(5):
                if not removed[b, y, x]:
                    assert torch.equal(imputed[b, :, y, x], images[b, :, y, x])
                    continue
                pairs = [(ROAD_WEIGHTS[dy + 1][dx + 1], imputed[b, :, y + dy, x + dx]) for dy, dx in OFFSETS
                         if 0 <= y + dy < 7 and 0 <= x + dx < 5]
                mean = sum(w * v for w, v in pairs) / sum(w for w, _ in pairs)
                assert torch.allclose(imputed[b, :, y, x], mean, atol=1e-4)
    # noise: on the imputed pixels only, scaled by noise_std
    noise = torch.randn(3, 2, 7, 5, generator=generator)
    noisy = noisy_linear_imputation(images, removed, noise, noise_std=0.5)
    assert torch.allclose(noisy - imputed, 0.5 * noise * removed[:, None], atol=1e-4)
    # nothing known: the data's mean, 0 (the baseline "mean")
    everything = torch.ones(1, 7, 5, dtype=torch.bool)
    assert torch.equal(noisy_linear_imputation(images[:1], everything), torch.zeros(1, 2, 7, 5))


def test_gaussian_blur_is_the_kernel_written_out_with_the_border_replicated():
    generator = torch.Generator().manual_seed(4)
    image = torch.randn(1, 2, 6, 5, generator=generator)
    sigma = 1.3
    radius = math.ceil(3 * sigma)
    weights = [math.exp(-0.5 * (d / sigma) ** 2) for d in range(-radius, radius + 1)]
    total = sum(weights)
    blurred = gaussian_blur(image, sigma)
    for c in range(2):
        for y in range(6):
            for x in range(5):
                value = 0.0
                for i in range(2 * radius + 1):
                    for j in range(2 * radius + 1):
                        row, column = min(max(y + i - radius, 0), 5), min(max(x + j - radius, 0), 4)
                        value += weights[i] * weights[j] / total**2 * float(image[0, c, row, column])
                assert blurred[0, c, y, x].item() == pytest.approx(value, abs=1e-5)


def test_reference_maps_random_is_seeded_and_the_centre_prior_grows_centred_boxes():
    first = reference_maps("random", 3, (4, 2), torch.Generator().manual_seed(7))
    again = reference_maps("random", 3, (4, 2), torch.Generator().manual_seed(7))
    assert torch.equal(first, again) and first.shape == (3, 4, 2)
    prior = reference_maps("center_prior", 2, (6, 4))
    assert torch.equal(prior[0], prior[1])
    order = torch.argsort(prior[0].flatten(), descending=True, stable=True)
    first_four = {(int(i) // 4, int(i) % 4) for i in order[:4]}
    assert first_four == {(2, 1), (2, 2), (3, 1), (3, 2)}  # the centre box comes first


def test_each_place_draws_its_own_random_map_and_noise_alone_or_among_many():
    """A place's draws are those of its own generator, seeded with (seed, place): the same drawn alone
    or with others, and a call draws only its places (a budget far too large to draw whole)."""
    options = CurveOptions(samples=8, baseline="noisy_linear", seed=3)
    grid, shape = (4, 2), (3, 8, 4)
    every_map, every_noise = options.draws(torch.arange(8), grid, shape, "cpu")
    alone_map, alone_noise = options.draws(torch.tensor([5]), grid, shape, "cpu")
    assert torch.equal(alone_map[0], every_map[5]) and torch.equal(alone_noise[0], every_noise[5])
    mixed_map, _ = options.draws(torch.tensor([7, 5, 0]), grid, shape, "cpu")
    assert torch.equal(mixed_map, every_map[[7, 5, 0]])
    assert not torch.equal(every_map[0], every_map[1])  # each place its own stream
    for place in (0, 5):  # the draws written out: the map first, then the noise, from one generator
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence(3, spawn_key=(place,)).generate_state(1, np.uint64)[0]))
        assert torch.equal(every_map[place], torch.rand(*grid, generator=generator))
        assert torch.equal(every_noise[place], torch.randn(*shape, generator=generator))
    blur = CurveOptions(samples=8, baseline="blur", seed=3)
    blurred, none = blur.draws(torch.tensor([5]), grid, shape, "cpu")
    assert torch.equal(blurred[0], every_map[5]) and none is None  # the map does not depend on the baseline
    huge = CurveOptions(samples=2**62, seed=3)  # drawing the whole budget would not fit in any memory
    assert torch.equal(huge.draws(torch.tensor([5]), grid, shape, "cpu")[0][0], every_map[5])
    with pytest.raises(ValueError, match=r"places must be in \[0, 8\)"):
        options.draws(torch.tensor([8]), grid, shape, "cpu")
    with pytest.raises(ValueError, match="seed must be >= 0"):
        CurveOptions(seed=-1)

# ------------------------------------------------------------------------------------ bad input
def test_bad_steps_baselines_and_shapes_are_named():
    images, maps = torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4)
    for steps in (0, -1, 2.5):
        with pytest.raises(ValueError, match=r"steps must be an integer >= 1"):
            perturbation_curves(images, maps, lambda x, rows: x.sum((1, 2, 3)), steps)
    named = r"baseline must be one of \['blur', 'mean', 'noisy_linear'\], got 'zeros'"
    with pytest.raises(ValueError, match=named):
        perturbation_curves(images, maps, lambda x, rows: x.sum((1, 2, 3)), 4, "zeros")
    with pytest.raises(ValueError, match=r"maps must be \[B, M, h, w\] with B = 2"):
        perturbation_curves(images, torch.zeros(3, 4, 4), lambda x, rows: x.sum((1, 2, 3)), 4)
    with pytest.raises(ValueError, match="reference map must be one of"):
        reference_maps("uniform", 1, (2, 2))
    with pytest.raises(ValueError, match="deletion_steps must be >= 0"):
        CurveOptions(steps=-1)
    with pytest.raises(ValueError, match="deletion_samples must be >= 0"):
        CurveOptions(samples=-2)
    with pytest.raises(ValueError, match="baseline must be one of"):
        CurveOptions(baseline="black")
    with pytest.raises(ValueError, match=r"curves must be \[B, steps \+ 1\] or \[B, steps \+ 1, 1\]"):
        DeletionInsertion().update(torch.zeros(2, 3, 2), torch.zeros(2, 3, 2))
