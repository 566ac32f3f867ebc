"""ReIDRankMetric: the torchmetrics Metric against evaluate_rank, under query chunks, duplicates and two processes."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from torch.overrides import TorchFunctionMode

from cama.metrics import ReIDRankMetric, evaluate_rank
from cama.metrics.reid import pairwise_distance
from tests.test_reid_metric import naive_eval_rank


# ------------------------------------------------------------------------------------------------
# ReIDRankMetric
# ------------------------------------------------------------------------------------------------


def embedding_problem(seed=0, n=240, dim=24, nid=12, ncam=3):
    g = torch.Generator().manual_seed(seed)
    pids = torch.randint(1, nid + 1, (n,), generator=g)
    centers = torch.randn(nid + 1, dim, generator=g)
    emb = centers[pids] + 1.2 * torch.randn(n, dim, generator=g)
    camids = torch.randint(0, ncam, (n,), generator=g)
    is_query = torch.rand(n, generator=g) < 0.25
    gal = (~is_query).nonzero().squeeze(1)
    pids[gal[:15]] = 0  # distractors
    pids[gal[15:25]] = -1  # junk
    indices = torch.randperm(n, generator=g) + 1000  # unique dataset indices, any order
    return emb, pids, camids, is_query, indices


def reference(emb, pids, camids, is_query, indices, distance="euclidean", max_rank=50):
    """The metric's numbers by the per-query loop :func:`naive_eval_rank` (not ``evaluate_rank``)."""
    order = torch.argsort(indices)  # the metric ranks samples in dataset-index order
    emb, pids, camids, is_query = emb[order], pids[order], camids[order], is_query[order]
    q, g = is_query, ~is_query
    d = pairwise_distance(emb[q], emb[g], distance)
    cmc, m_ap, m_inp = naive_eval_rank(d.numpy(), pids[q], pids[g], camids[q], camids[g], max_rank=max_rank)
    return torch.from_numpy(cmc), m_ap, m_inp


def feed(metric, data, batch=37, perm=None):
    n = data[0].shape[0]
    perm = torch.arange(n) if perm is None else perm
    for s in range(0, n, batch):
        sel = perm[s : s + batch]
        metric.update(*(t[sel] for t in data))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_metric_equals_functional(distance):
    data = embedding_problem(1)
    metric = ReIDRankMetric(distance=distance)
    feed(metric, data, perm=torch.randperm(data[0].shape[0], generator=torch.Generator().manual_seed(5)))
    out = metric.compute()
    assert set(out) == {"mAP", "mINP", "rank1", "rank5", "rank10"}
    assert all(v.dim() == 0 and v.dtype == torch.float32 for v in out.values())
    cmc, m_ap, m_inp = reference(*data, distance=distance)
    assert out["mAP"].item() == pytest.approx(m_ap, abs=1e-6)
    assert out["mINP"].item() == pytest.approx(m_inp, abs=1e-6)
    for k in (1, 5, 10):
        assert out[f"rank{k}"].item() == pytest.approx(cmc[k - 1].item(), abs=1e-6)


def test_metric_query_chunks_and_ranks_argument():
    data = embedding_problem(2)
    metric = ReIDRankMetric(max_rank=20, ranks=(1, 3, 20), chunk_size=3)
    feed(metric, data)
    out = metric.compute()
    assert set(out) == {"mAP", "mINP", "rank1", "rank3", "rank20"}
    cmc, m_ap, _ = reference(*data, max_rank=20)
    assert out["mAP"].item() == pytest.approx(m_ap, abs=1e-6)
    assert out["rank3"].item() == pytest.approx(cmc[2].item(), abs=1e-6)
    with pytest.raises(ValueError, match="ranks"):
        ReIDRankMetric(max_rank=5, ranks=(1, 10))


def test_metric_drops_duplicate_indices():
    data = embedding_problem(3)
    clean = ReIDRankMetric()
    feed(clean, data)
    expected = clean.compute()
    dup = ReIDRankMetric()
    feed(dup, data)
    # DistributedSampler-style padding: some samples seen a second time (same index, same content)
    sel = torch.tensor([0, 5, 17, 3, 0])
    dup.update(*(t[sel] for t in data))
    got = dup.compute()
    for key in expected:
        assert got[key].item() == pytest.approx(expected[key].item(), abs=1e-7), key


def test_metric_query_and_gallery_may_share_index_values():
    """Two dataloaders (query, gallery) both numbering their samples from 0."""
    emb, pids, camids, is_query, _ = embedding_problem(7)
    indices = torch.empty_like(pids)
    indices[is_query] = torch.arange(int(is_query.sum()))
    indices[~is_query] = torch.arange(int((~is_query).sum()))
    metric = ReIDRankMetric()
    feed(metric, (emb, pids, camids, is_query, indices))
    out = metric.compute()
    q, g = is_query, ~is_query
    d = pairwise_distance(emb[q], emb[g])
    cmc, m_ap, _ = naive_eval_rank(d.numpy(), pids[q], pids[g], camids[q], camids[g])
    assert out["mAP"].item() == pytest.approx(m_ap, abs=1e-6)
    assert out["rank1"].item() == pytest.approx(cmc[0].item(), abs=1e-6)


def test_metric_prefix_dims():
    data = embedding_problem(4, dim=24)
    metric = ReIDRankMetric(prefix_dims=[8, 16, 24])
    feed(metric, data)
    out = metric.compute()
    branches = {"mAP_branches_1", "mAP_branches_1-2", "mAP_branches_1-3"}
    assert set(out) == {"mAP", "mINP", "rank1", "rank5", "rank10"} | branches
    emb = data[0]
    for key, d in (("mAP_branches_1", 8), ("mAP_branches_1-2", 16), ("mAP_branches_1-3", 24)):
        _, m_ap, _ = reference(emb[:, :d], *data[1:])
        assert out[key].item() == pytest.approx(m_ap, abs=1e-6), key
    assert out["mAP_branches_1-3"].item() == pytest.approx(out["mAP"].item())
    bad = ReIDRankMetric(prefix_dims=[8, 48])
    feed(bad, data)
    with pytest.raises(ValueError, match="exceeds"):
        bad.compute()


def test_metric_no_valid_query_raises():
    emb, pids, camids, is_query, indices = embedding_problem(5)
    metric = ReIDRankMetric()
    metric.update(emb, pids, torch.zeros_like(camids), is_query, indices)  # one camera for everybody
    with pytest.raises(ValueError, match="same camera"):
        metric.compute()


def _shard(data, rank, world):
    """What DistributedSampler(shuffle=False) gives a process: every world-th sample, the list padded
    with the first samples so all processes get the same count."""
    n = data[0].shape[0]
    per = -(-n // world)
    order = torch.cat([torch.arange(n), torch.arange(per * world - n)])
    sel = order[rank::world]
    return [t[sel] for t in data]


def test_metric_merged_shards_equal_single_process():
    data = embedding_problem(6, n=203)  # 203 = not a multiple of 2 or 3: padded duplicates
    single = ReIDRankMetric(prefix_dims=[12])
    feed(single, data)
    expected = single.compute()
    for world in (2, 3):
        shards = []
        for rank in range(world):
            m = ReIDRankMetric(prefix_dims=[12])
            feed(m, _shard(data, rank, world), batch=16)
            shards.append(m)
        merged = shards[0]
        for m in shards[1:]:
            merged.merge_state(m)
        got = merged.compute()
        for key in expected:
            assert got[key].item() == pytest.approx(expected[key].item(), abs=1e-7), (world, key)


def _ddp_worker(rank, world, init_file, data, out_path):
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        metric = ReIDRankMetric(prefix_dims=[12])
        feed(metric, _shard(data, rank, world), batch=16)
        out = metric.compute()  # torchmetrics all-gathers the "cat" states
        if rank == 0:
            torch.save({k: v.item() for k, v in out.items()}, out_path)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_metric_two_process_gloo():
    """A real 2-process gloo run (spawned workers: ~2 interpreter start-ups, 5-25 s)."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed not available")
    data = embedding_problem(6, n=203)
    single = ReIDRankMetric(prefix_dims=[12])
    feed(single, data)
    expected = {k: v.item() for k, v in single.compute().items()}
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "out.pt")
        torch.multiprocessing.spawn(
            _ddp_worker, args=(2, os.path.join(tmp, "init"), data, out_path), nprocs=2, join=True
        )
        got = torch.load(out_path)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-7), key


# ------------------------------------------------------------------------------------------------
# the gallery prepared once, no copy of the whole embeddings
# ------------------------------------------------------------------------------------------------


def _sorted_sets(emb, pids, camids, is_query, indices):
    """Queries and junk-free gallery in dataset-index order, as the metric ranks them."""
    order = torch.argsort(indices)
    emb, pids, camids, is_query = emb[order], pids[order], camids[order], is_query[order]
    q, g = is_query, ~is_query & (pids != -1)
    return emb[q], emb[g], pids[q], pids[g], camids[q], camids[g]


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_metric_with_a_tiny_chunk_budget_equals_the_whole_distance_matrix(distance):
    """Queries one at a time (and the gallery's squared norms a row at a time) against the gallery
    prepared once give exactly the numbers of the whole [Q, G] matrix ranked by evaluate_rank."""
    data = embedding_problem(8, n=150, dim=32)
    perm = torch.randperm(150, generator=torch.Generator().manual_seed(2))
    qf, gf, qp, gp, qc, gc = _sorted_sets(*data)
    for dims in (None, 12):  # the whole embedding and a prefix of it
        tiny = ReIDRankMetric(distance=distance, max_rank=10, chunk_bytes=2_000, prefix_dims=[12])
        feed(tiny, data, batch=23, perm=perm)
        out = tiny.compute()
        cut = (lambda x: x) if dims is None else (lambda x: x[:, :dims])
        dist = pairwise_distance(cut(qf), cut(gf), distance)
        cmc, m_ap, m_inp = evaluate_rank(dist, qp, gp, qc, gc, max_rank=10, return_minp=True, chunk_size=10**6)
        if dims is None:
            assert float(out["mAP"]) == float(torch.tensor(m_ap, dtype=torch.float32))
            assert float(out["mINP"]) == float(torch.tensor(m_inp, dtype=torch.float32))
            for k in (1, 5, 10):
                assert float(out[f"rank{k}"]) == float(cmc[k - 1]), k
        else:
            assert float(out["mAP_branches_1"]) == float(torch.tensor(m_ap, dtype=torch.float32))


class _NewLargeTensors(TorchFunctionMode):
    """Counts the tensors of at least ``numel`` elements that torch calls return without sharing an
    input's storage: new copies of that size."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.count = numel, 0

    @staticmethod
    def _tensors(value):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from _NewLargeTensors._tensors(v)
        elif isinstance(value, dict):
            for v in value.values():
                yield from _NewLargeTensors._tensors(v)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in self._tensors((args, kwargs))}
        self.count += sum(
            t.numel() >= self.numel and t.untyped_storage().data_ptr() not in inputs for t in self._tensors(out)
        )
        return out


@pytest.mark.parametrize(
    "distance, batch, shuffled, copies",
    [("euclidean", None, False, 0), ("euclidean", 23, True, 1), ("cosine", None, False, 1)],
    ids=["one-batch", "shuffled-batches", "cosine"],
)
def test_metric_copies_the_embeddings_at_most_once(distance, batch, shuffled, copies):
    """However many query chunks, with a chunk budget below the gallery's size: no gallery-sized
    tensor when the collected rows serve as they are (float32, squared Euclidean, the gallery's rows
    consecutive), one (the prepared gallery) when the gallery must be gathered from shuffled batches
    or normalised for cosine."""
    emb, pids, camids, is_query, _ = embedding_problem(9, n=240, dim=256)
    is_query = torch.arange(240) < 60  # queries first, then the gallery
    data = (emb, pids, camids, is_query, torch.arange(240))
    metric = ReIDRankMetric(distance=distance, chunk_size=4, chunk_bytes=100_000)  # 15 chunks of queries
    perm = torch.randperm(240, generator=torch.Generator().manual_seed(3)) if shuffled else None
    feed(metric, data, batch=batch or 240, perm=perm)
    expected = reference(*data, distance=distance)[1]
    gallery_numel = int((~is_query & (pids != -1)).sum()) * 256
    assert 100_000 < gallery_numel * 4 and not bool((pids[~is_query] == -1).any())
    with _NewLargeTensors(gallery_numel) as mode:
        out = metric.compute()
    assert out["mAP"].item() == pytest.approx(expected, abs=1e-6)
    assert mode.count == copies
