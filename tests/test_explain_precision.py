"""Mixed precision (issue 10): maps of float16 / bfloat16 inputs, and distances of huge embeddings.

Every map of ``cama.explain`` computes in float32 internally, so the map of half-precision inputs
must equal the float32 map of the *same values* upcast (``x.half().float()``), after postprocess.
Distances of large but finite embeddings must stay finite and rank like a float64 computation.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from cama.explain import (
    class_activation_map,
    dist_cam,
    fam,
    gradient_cam_layer_map,
    postprocess,
    ram,
    ram_per_branch,
    ram_self,
)
from cama.metrics.distances import pairwise_distance
from cama.metrics.reid import ReIDRankMetric
from cama.metrics.retrieval import retrieval_metrics
from cama.models.fewshot import prototype_logits

B, K, H, W = 4, 256, 7, 5  # enough channels for half-precision sums to go wrong
N, D, C = 3, 48, 10
SIZE = (28, 20)
LOW = [torch.float16, torch.bfloat16]


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded float32 inputs of every map, on the scales of real (post-ReLU) feature maps."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    maps = (randn(B, K, H, W) + 0.5).relu() * 2.0
    return {
        "maps": maps,
        "vector": (randn(B, K) + 0.5).relu() * 2.0,
        "supports": (randn(B, N, K) + 0.5).relu() * 2.0,
        "reference_maps": (randn(B, K, 3, 4) + 0.5).relu() * 2.0,
        "weight": randn(C, K) * 0.1,
        "projection": randn(D, K) * 0.1,
        "embeddings": randn(B, N, D),
        "gradients": randn(B, K, H, W) * 1e-2,
        "bias": randn(K),
    }


MapFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]
MAPS: dict[str, MapFn] = {
    "cam": lambda t: class_activation_map(t["maps"], t["weight"], torch.arange(B) % C),
    "dist_cam_vector": lambda t: dist_cam(t["maps"], t["vector"]),
    "dist_cam_prototype": lambda t: dist_cam(t["maps"], t["supports"]),
    "dist_cam_maps": lambda t: dist_cam(t["maps"], t["reference_maps"]),
    "ram": lambda t: ram(t["vector"], t["maps"]),
    "ram_self": lambda t: ram_self(t["maps"]),
    "ram_per_branch_stacked": lambda t: ram_per_branch(
        t["supports"][:, :2], torch.stack([t["maps"], t["maps"].flip(1)], 1)
    ),
    "ram_per_branch_list": lambda t: ram_per_branch(
        [t["vector"], t["vector"][:, :100]], [t["maps"], t["maps"][:, :100]]
    ),
    "fam_cosine": lambda t: fam(t["maps"], t["supports"], metric="cosine"),
    "fam_euclidean": lambda t: fam(t["maps"], t["supports"], metric="euclidean"),
    "fam_projection_cosine": lambda t: fam(t["maps"], t["embeddings"], projection=t["projection"]),
    "fam_projection_euclidean": lambda t: fam(
        t["maps"], t["embeddings"], metric="euclidean", projection=t["projection"]
    ),
    "gradcam": lambda t: gradient_cam_layer_map(t["maps"], t["gradients"], "gradcam"),
    "gradcam++": lambda t: gradient_cam_layer_map(t["maps"], t["gradients"], "gradcam++"),
    "layercam": lambda t: gradient_cam_layer_map(t["maps"], t["gradients"], "layercam"),
    "fullgrad": lambda t: gradient_cam_layer_map(t["maps"], t["gradients"], "fullgrad"),
    "fullgrad_bias": lambda t: gradient_cam_layer_map(t["maps"], t["gradients"], "fullgrad", t["bias"]),
}


def cast(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {name: tensor.to(dtype) for name, tensor in tensors.items()}


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("name", list(MAPS))
def test_low_precision_map_equals_float32_map_of_the_same_values(name: str, dtype: torch.dtype) -> None:
    low = cast(inputs(), dtype)
    upcast = cast(low, torch.float32)  # the very same values, in float32
    raw_low, raw_upcast = MAPS[name](low), MAPS[name](upcast)
    assert raw_low.dtype == torch.float32 and raw_upcast.dtype == torch.float32
    shown_low, shown_upcast = postprocess(raw_low, SIZE), postprocess(raw_upcast, SIZE)
    assert shown_low.dtype == torch.float32
    assert torch.isfinite(shown_low).all()
    assert float(shown_upcast.amax()) == 1.0  # a non-trivial map, not a constant one
    assert float((shown_low - shown_upcast).abs().amax()) < 1e-6
    assert float((raw_low - raw_upcast).abs().amax()) <= 1e-6 * max(float(raw_upcast.abs().amax()), 1.0)


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_postprocess_of_low_precision_raw_maps(dtype: torch.dtype) -> None:
    tensors = inputs(3)
    raw = (tensors["maps"][:, 0] - tensors["maps"][:, 1]).to(dtype)  # signed, like a raw map
    shown = postprocess(raw, SIZE)
    assert shown.dtype == torch.float32
    assert float((shown - postprocess(raw.float(), SIZE)).abs().amax()) < 1e-6
    assert float(shown.amax()) == 1.0 and float(shown.amin()) == 0.0


@pytest.mark.parametrize("name", list(MAPS))
def test_maps_under_bfloat16_autocast_equal_the_plain_float32_maps(name: str) -> None:
    tensors = inputs(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = postprocess(MAPS[name](tensors), SIZE)
    plain = postprocess(MAPS[name](tensors), SIZE)
    assert under_autocast.dtype == torch.float32
    assert float((under_autocast - plain).abs().amax()) < 1e-6


ZERO_MAPS: dict[str, MapFn] = {
    name: MAPS[name]
    for name in (
        "cam",
        "dist_cam_vector",
        "dist_cam_prototype",
        "ram",
        "ram_self",
        "ram_per_branch_stacked",
        "fam_cosine",
        "fam_euclidean",
        "fam_projection_cosine",
        "fam_projection_euclidean",
    )
}


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("name", list(ZERO_MAPS))
def test_all_zero_half_maps_give_zero_maps(name: str, dtype: torch.dtype) -> None:
    tensors = cast(inputs(2), dtype)
    tensors["maps"] = torch.zeros_like(tensors["maps"])
    raw = ZERO_MAPS[name](tensors)
    assert torch.isfinite(raw).all(), "an eps guard underflowed: 0 / 0"
    assert torch.equal(raw, torch.zeros_like(raw))
    assert torch.equal(postprocess(raw, SIZE), torch.zeros(*raw.shape[:-2], *SIZE))


# --------------------------------------------------------------------------------------------------
# distances of large but finite embeddings
# --------------------------------------------------------------------------------------------------
def naive_squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """float64, explicit differences (no expansion, so no cancellation)."""
    return (x.double()[:, None, :] - y.double()[None, :, :]).square().sum(-1)


@pytest.mark.parametrize(
    "dtype, magnitude, dim",
    [(torch.float16, 6.0e4, 2048), (torch.float32, 1e20, 512), (torch.float32, 1e18, 2048)],
    ids=["float16-6e4", "float32-1e20", "float32-1e18"],
)
def test_huge_embeddings_give_finite_distances_ranked_like_float64(dtype, magnitude, dim) -> None:
    gen = torch.Generator().manual_seed(3)
    x = ((torch.rand(6, dim, generator=gen, dtype=torch.float64) * 2 - 1) * magnitude).to(dtype)
    y = ((torch.rand(12, dim, generator=gen, dtype=torch.float64) * 2 - 1) * magnitude).to(dtype)
    assert torch.isfinite(x).all() and torch.isfinite(y).all()
    expected = naive_squared_distances(x, y)
    gaps = expected.sort(dim=1).values.diff(dim=1) / expected.amax()
    assert float(gaps.amin()) > 1e-5  # a well-defined ranking to compare with
    for distance in ("euclidean", "cosine"):
        got = pairwise_distance(x, y, distance)
        assert got.dtype == torch.float32 and torch.isfinite(got).all(), distance
    got = pairwise_distance(x, y, "euclidean")
    assert torch.equal(got.argsort(dim=1), expected.argsort(dim=1))


def test_float64_embeddings_beyond_the_float32_range() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 64, generator=gen, dtype=torch.float64)
    y = torch.randn(9, 64, generator=gen, dtype=torch.float64)
    factor = 2.0**1000  # exact: the ranking of x * factor is the one of x
    got = pairwise_distance(x * factor, y * factor)
    assert torch.isfinite(got).all()
    assert torch.equal(got.argsort(dim=1), naive_squared_distances(x, y).argsort(dim=1))


def reid_problem(seed: int = 0, n: int = 120, dim: int = 24) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    pids = torch.randint(1, 9, (n,), generator=gen)
    emb = torch.randn(9, dim, generator=gen)[pids] + torch.randn(n, dim, generator=gen)
    camids = torch.randint(0, 3, (n,), generator=gen)
    is_query = torch.rand(n, generator=gen) < 0.25
    return emb, pids, camids, is_query, torch.arange(n)


def test_reid_metric_of_huge_embeddings_is_the_metric_of_the_plain_ones() -> None:
    emb, *rest = reid_problem()
    results = []
    for factor in (1.0, 2.0**66):  # exact scaling; 2**66 * N(0, 1) squared overflows float32
        metric = ReIDRankMetric(chunk_size=7)
        metric.update(emb * factor, *rest)
        results.append(metric.compute())  # raised "distmat contains NaN" for the huge ones
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        assert float(results[1][key]) == float(results[0][key]), key


def test_retrieval_metrics_of_huge_embeddings_are_those_of_the_plain_ones() -> None:
    gen = torch.Generator().manual_seed(5)
    labels = torch.arange(40) % 8
    emb = torch.randn(8, 32, generator=gen)[labels] + 0.8 * torch.randn(40, 32, generator=gen)
    plain = retrieval_metrics(emb, labels, knn="torch")
    huge = retrieval_metrics(emb * 2.0**66, labels, knn="torch")
    assert 0.0 < float(plain["map@r"]) < 1.0
    for key in plain:
        assert float(huge[key]) == float(plain[key]), key


def test_prototype_logits_of_half_embeddings_do_not_overflow() -> None:
    gen = torch.Generator().manual_seed(6)
    queries = (torch.randn(5, 1600, generator=gen) * 10).half()  # squared distances ~3e5 > 65504
    prototypes = (torch.randn(3, 1600, generator=gen) * 10).half()
    logits = prototype_logits(queries, prototypes)
    assert torch.isfinite(logits).all()
    expected = -naive_squared_distances(queries, prototypes)
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=0.0)
