"""Forward-only maps (CAM, Dist-CAM, RAM, FAM) and rendering, against naive loops in the test."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cama.explain import (
    class_activation_map,
    dist_cam,
    fam,
    fam_channel_contributions,
    overlay,
    ram,
    ram_per_branch,
    ram_self,
)

B, K, H, W = 3, 6, 4, 5


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# naive references: plain Python loops over samples, channels and pixels
# --------------------------------------------------------------------------------------------------
def naive_gap(maps: torch.Tensor) -> list[list[float]]:
    b, k, h, w = maps.shape
    return [
        [sum(float(maps[i, c, y, x]) for y in range(h) for x in range(w)) / (h * w) for c in range(k)]
        for i in range(b)
    ]


def naive_combine(weights: list[list[float]], maps: torch.Tensor) -> torch.Tensor:
    b, k, h, w = maps.shape
    out = torch.zeros(b, h, w, dtype=torch.float64)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                out[i, y, x] = sum(weights[i][c] * float(maps[i, c, y, x]) for c in range(k))
    return out


def naive_dist_cam(maps: torch.Tensor, reference_vectors: list[list[float]], eps: float) -> torch.Tensor:
    q = naive_gap(maps)
    weights = []
    for i in range(maps.shape[0]):
        inverse = [1.0 / (abs(reference_vectors[i][c] - q[i][c]) + eps) for c in range(maps.shape[1])]
        total = sum(inverse)
        weights.append([v / total for v in inverse])
    return naive_combine(weights, maps)


def naive_fam_contributions(q: list[float], supports: list[list[float]], metric: str) -> list[float]:
    k = len(q)
    out = [0.0] * k
    for s in supports:
        for c in range(k):
            if metric == "cosine":
                norm_q = math.sqrt(sum(v * v for v in q))
                norm_s = math.sqrt(sum(v * v for v in s))
                out[c] += q[c] * s[c] / (norm_q * norm_s) / len(supports)
            else:
                out[c] += -((q[c] - s[c]) ** 2) / len(supports)
    return out


def naive_minmax(values: list[float]) -> list[float]:
    low, high = min(values), max(values)
    return [(v - low) / (high - low) for v in values]


# --------------------------------------------------------------------------------------------------
# CAM
# --------------------------------------------------------------------------------------------------
def test_cam_matches_loops(gen: torch.Generator) -> None:
    maps, weight = randn(gen, B, K, H, W), randn(gen, 7, K)
    classes = torch.tensor([4, 0, 6])
    expected = naive_combine([[float(weight[int(classes[i]), c]) for c in range(K)] for i in range(B)], maps)
    torch.testing.assert_close(class_activation_map(maps, weight, classes), expected)
    # one int for the whole batch
    expected_all = naive_combine([[float(weight[2, c]) for c in range(K)]] * B, maps)
    torch.testing.assert_close(class_activation_map(maps, weight, 2), expected_all)


def test_cam_averages_to_the_logit(gen: torch.Generator) -> None:
    """dist-cam Eq. 2-3: the mean of M_c over pixels is the class score w_c . GAP(Q)."""
    maps, weight = randn(gen, B, K, H, W), randn(gen, 7, K)
    classes = torch.tensor([1, 2, 3])
    logits = maps.mean(dim=(2, 3)) @ weight.T
    torch.testing.assert_close(
        class_activation_map(maps, weight, classes).mean(dim=(1, 2)), logits[torch.arange(B), classes]
    )


# --------------------------------------------------------------------------------------------------
# Dist-CAM
# --------------------------------------------------------------------------------------------------
def test_dist_cam_vector_reference_matches_loops(gen: torch.Generator) -> None:
    maps, reference = randn(gen, B, K, H, W), randn(gen, B, K)
    expected = naive_dist_cam(maps, reference.tolist(), eps=1e-6)
    torch.testing.assert_close(dist_cam(maps, reference), expected)


def test_dist_cam_map_reference_is_pooled(gen: torch.Generator) -> None:
    maps, reference_maps = randn(gen, B, K, H, W), randn(gen, B, K, 2, 7)  # other spatial size
    expected = naive_dist_cam(maps, naive_gap(reference_maps), eps=1e-3)
    torch.testing.assert_close(dist_cam(maps, reference_maps, eps=1e-3), expected)


def test_dist_cam_prototype_of_supports(gen: torch.Generator) -> None:
    """dist-cam Eq. 7: [B, N, K] supports are averaged into the prototype."""
    maps, supports = randn(gen, B, K, H, W), randn(gen, B, 4, K)
    prototypes = [[sum(float(supports[i, n, c]) for n in range(4)) / 4 for c in range(K)] for i in range(B)]
    torch.testing.assert_close(dist_cam(maps, supports), naive_dist_cam(maps, prototypes, eps=1e-6))


def test_dist_cam_invariant_to_consistent_channel_permutation(gen: torch.Generator) -> None:
    maps, reference = randn(gen, B, K, H, W), randn(gen, B, K)
    permutation = torch.randperm(K, generator=gen)
    assert not torch.equal(permutation, torch.arange(K))
    permuted = dist_cam(maps[:, permutation], reference[:, permutation])
    torch.testing.assert_close(permuted, dist_cam(maps, reference))
    # and it does depend on the pairing of channels: permuting only one side changes the map
    assert not torch.allclose(dist_cam(maps[:, permutation], reference), dist_cam(maps, reference))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_maps_for_reference_equal_to_query_are_finite(gen: torch.Generator, dtype: torch.dtype) -> None:
    maps = randn(gen, B, K, H, W).to(dtype)
    query = maps.mean(dim=(2, 3))
    for out in (
        dist_cam(maps, query),
        dist_cam(maps, maps),
        ram(query, maps),
        ram_self(maps),
        fam(maps, query[:, None], metric="cosine"),
        fam(maps, query[:, None], metric="euclidean"),
        fam(maps, (query @ randn(gen, 4, K).to(dtype).T)[:, None], projection=randn(gen, 4, K).to(dtype)),
    ):
        # computed in float32 whatever the input dtype (issue 10); float64 stays float64
        assert out.shape == (B, H, W) and out.dtype == torch.promote_types(dtype, torch.float32)
        assert torch.isfinite(out).all()
    # with all distances zero every channel weighs the same: the map is the channel mean. The
    # reference is the maps themselves, pooled like the query (in float32 for half inputs): a
    # half-precision `query` is the float32 GAP rounded, not equal to it.
    torch.testing.assert_close(
        dist_cam(maps, maps).double(), maps.double().mean(dim=1), atol=1e-2, rtol=1e-2
    )


# --------------------------------------------------------------------------------------------------
# RAM
# --------------------------------------------------------------------------------------------------
def naive_ram(query: list[list[float]], gallery: torch.Tensor) -> torch.Tensor:
    f_g = naive_gap(gallery)
    b, k, h, w = gallery.shape
    out = torch.zeros(b, h, w, dtype=torch.float64)
    for i in range(b):
        norm_g = math.sqrt(sum(v * v for v in f_g[i]))
        for y in range(h):
            for x in range(w):
                out[i, y, x] = sum(query[i][c] * float(gallery[i, c, y, x]) for c in range(k)) / norm_g
    return out


def test_ram_matches_loops(gen: torch.Generator) -> None:
    query, gallery = randn(gen, B, K), randn(gen, B, K, H, W)
    torch.testing.assert_close(ram(query, gallery), naive_ram(query.tolist(), gallery))


def test_ram_sums_to_scaled_similarity(gen: torch.Generator) -> None:
    """cama-ram Eq. 10: sum_xy R = h * w * <f_q, f_g> / ||f_g||."""
    query, gallery = randn(gen, B, K), randn(gen, B, K, H, W)
    f_g = gallery.mean(dim=(2, 3))
    expected = H * W * (query * f_g).sum(1) / f_g.norm(dim=1)
    torch.testing.assert_close(ram(query, gallery).sum(dim=(1, 2)), expected)


def test_ram_self_replaces_gallery_by_query(gen: torch.Generator) -> None:
    maps = randn(gen, B, K, H, W)
    f_q = naive_gap(maps)
    torch.testing.assert_close(ram_self(maps), naive_ram(f_q, maps))
    norms = torch.tensor([math.sqrt(sum(v * v for v in row)) for row in f_q], dtype=torch.float64)
    torch.testing.assert_close(ram_self(maps).sum(dim=(1, 2)), H * W * norms)


def test_ram_per_branch_equal_and_unequal_widths(gen: torch.Generator) -> None:
    widths = [K, K, K]
    queries = [randn(gen, B, k) for k in widths]
    galleries = [randn(gen, B, k, H, W) for k in widths]
    out = ram_per_branch(queries, galleries)
    assert out.shape == (B, 3, H, W)
    for i in range(3):
        torch.testing.assert_close(out[:, i], naive_ram(queries[i].tolist(), galleries[i]))
    torch.testing.assert_close(ram_per_branch(torch.stack(queries, 1), torch.stack(galleries, 1)), out)

    widths = [K, 3, 8]  # CAMA branches may differ in width
    queries = [randn(gen, B, k) for k in widths]
    galleries = [randn(gen, B, k, H, W) for k in widths]
    out = ram_per_branch(queries, galleries)
    for i in range(3):
        torch.testing.assert_close(out[:, i], naive_ram(queries[i].tolist(), galleries[i]))


def test_ram_branch_aggregate_sums_to_concatenated_similarity(gen: torch.Generator) -> None:
    """With L2-normalised branch queries, the branch maps sum to h*w*<f_q, f_g> of the test feature."""
    queries = [randn(gen, B, k) for k in (K, 3)]
    galleries = [randn(gen, B, k, H, W) for k in (K, 3)]
    total = ram_per_branch([F.normalize(q, dim=1) for q in queries], galleries).sum(dim=(1, 2, 3))
    f_q = torch.cat([F.normalize(q, dim=1) for q in queries], 1)
    f_g = torch.cat([F.normalize(g.mean(dim=(2, 3)), dim=1) for g in galleries], 1)
    torch.testing.assert_close(total, H * W * (f_q * f_g).sum(1))


def test_ram_per_branch_rejects_different_sizes(gen: torch.Generator) -> None:
    with pytest.raises(ValueError):
        ram_per_branch([randn(gen, B, K)] * 2, [randn(gen, B, K, H, W), randn(gen, B, K, H + 1, W)])


# --------------------------------------------------------------------------------------------------
# FAM
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_fam_matches_loops(gen: torch.Generator, metric: str) -> None:
    maps, supports = randn(gen, B, K, H, W), randn(gen, B, 4, K)
    q = naive_gap(maps)
    alphas = [naive_minmax(naive_fam_contributions(q[i], supports[i].tolist(), metric)) for i in range(B)]
    torch.testing.assert_close(fam(maps, supports, metric=metric), naive_combine(alphas, maps))
    contributions = fam_channel_contributions(maps.mean(dim=(2, 3)), supports, metric=metric)
    for i in range(B):
        expected = naive_fam_contributions(q[i], supports[i].tolist(), metric)
        torch.testing.assert_close(contributions[i], torch.tensor(expected, dtype=torch.float64))


def test_fam_cosine_contributions_sum_to_cosine_similarity(gen: torch.Generator) -> None:
    query, supports = randn(gen, B, K), randn(gen, B, 5, K)
    contributions = fam_channel_contributions(query, supports, metric="cosine")
    expected = F.cosine_similarity(query[:, None], supports, dim=-1).mean(dim=1)  # fam Eq. 11
    torch.testing.assert_close(contributions.sum(dim=1), expected)
    # single support given as [B, K]
    torch.testing.assert_close(
        fam_channel_contributions(query, supports[:, 0]).sum(1), F.cosine_similarity(query, supports[:, 0])
    )


def test_fam_euclidean_contributions_sum_to_minus_squared_distance(gen: torch.Generator) -> None:
    query, supports = randn(gen, B, K), randn(gen, B, 5, K)
    contributions = fam_channel_contributions(query, supports, metric="euclidean")
    torch.testing.assert_close(contributions.sum(1), -(query[:, None] - supports).square().sum(-1).mean(1))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_fam_projection_keeps_total_and_matches_loops(gen: torch.Generator, metric: str) -> None:
    D, N = 4, 3
    maps, projection, support_embeddings = randn(gen, B, K, H, W), randn(gen, D, K), randn(gen, B, N, D)
    query = maps.mean(dim=(2, 3))
    mapped = fam_channel_contributions(query, support_embeddings, metric=metric, projection=projection)
    embedding = query @ projection.T
    dim_contributions = fam_channel_contributions(embedding, support_embeddings, metric=metric)
    torch.testing.assert_close(mapped.sum(1), dim_contributions.sum(1))  # fam Eq. 17
    # naive Eq. 18: c'_k = sum_j c_j W_jk q_k / e_j
    q = query.tolist()
    for i in range(B):
        e = [sum(float(projection[j, c]) * q[i][c] for c in range(K)) for j in range(D)]
        c_j = naive_fam_contributions(e, support_embeddings[i].tolist(), metric)
        expected = [
            sum(c_j[j] * float(projection[j, c]) * q[i][c] / e[j] for j in range(D)) for c in range(K)
        ]
        torch.testing.assert_close(mapped[i], torch.tensor(expected, dtype=torch.float64))
    alphas = [naive_minmax(mapped[i].tolist()) for i in range(B)]
    torch.testing.assert_close(
        fam(maps, support_embeddings, metric=metric, projection=projection), naive_combine(alphas, maps)
    )


def test_fam_cosine_projection_with_a_zero_embedding_dimension(gen: torch.Generator) -> None:
    """e_j = 0 (a dead output unit): the cosine mapping stays finite and keeps the total."""
    query, projection, support_embeddings = randn(gen, B, K), randn(gen, 4, K), randn(gen, B, 3, 4)
    projection[1] = 0.0
    mapped = fam_channel_contributions(query, support_embeddings, projection=projection)
    assert torch.isfinite(mapped).all()
    expected = F.cosine_similarity((query @ projection.T)[:, None], support_embeddings, dim=-1).mean(1)
    torch.testing.assert_close(mapped.sum(1), expected)


def test_fam_constant_contributions_weigh_channels_equally(gen: torch.Generator) -> None:
    maps = randn(gen, B, K, H, W).abs()
    # Euclidean contributions of a query equal to its support are all zero
    out = fam(maps, maps.mean(dim=(2, 3)), metric="euclidean")
    torch.testing.assert_close(out, maps.sum(dim=1))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_map_functions_keep_device_and_dtype(gen: torch.Generator, device: str) -> None:
    maps = randn(gen, B, K, H, W).float()
    vector, supports, weight = randn(gen, B, K).float(), randn(gen, B, 2, K).float(), randn(gen, 7, K).float()
    expected = (
        dist_cam(maps, vector), ram_self(maps), fam(maps, supports), class_activation_map(maps, weight, 3)
    )
    on_device = (
        dist_cam(maps.to(device), vector.to(device)),
        ram_self(maps.to(device)),
        fam(maps.to(device), supports.to(device)),
        class_activation_map(maps.to(device), weight.to(device), 3),
    )
    for out, reference in zip(on_device, expected):
        assert out.dtype == torch.float32 and out.device.type == device and out.shape == (B, H, W)
        torch.testing.assert_close(out.cpu(), reference)
    heat = overlay(torch.rand(B, 3, 8, 10).to(device), on_device[0])
    assert heat.dtype == torch.uint8 and heat.device.type == device and heat.shape == (B, 3, 8, 10)


def test_explain_imports_no_models_callbacks_or_datamodules() -> None:
    """docs/architecture.md#import-rules: data flows one way; cama.explain imports only torch / torchvision
    and itself."""
    import ast
    from pathlib import Path

    import cama.explain

    package = Path(cama.explain.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = ["." * node.level + (node.module or "")]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                assert name.startswith(".") or root in {"__future__", "collections", "contextlib", "dataclasses", "typing",
                                                        "math", "torch", "torchvision"}, (source.name, name)
