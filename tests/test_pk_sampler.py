"""PKSampler: P identities x K images per batch, deterministic per seed and epoch, sharded across ranks."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from datamodules import PKSampler


# -- PKSampler ----------------------------------------------------------------------------------


def _labels() -> list[int]:
    # identities with 1..9 images, interleaved
    labels = []
    for pid in range(20):
        labels += [100 + pid] * (1 + pid % 9)
    g = torch.Generator().manual_seed(0)
    return [labels[i] for i in torch.randperm(len(labels), generator=g).tolist()]


def test_pk_sampler_batches_are_p_by_k():
    labels = _labels()
    s = PKSampler(labels, p=5, k=4, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == len(labels) // 20
    for batch in batches:
        assert len(batch) == 20
        idx = [i for i, _ in batch]
        pids = [labels[i] for i in idx]
        counts = Counter(pids)
        assert len(counts) == 5 and set(counts.values()) == {4}
        # consecutive groups of k belong to one identity
        assert all(len(set(pids[j:j + 4])) == 1 for j in range(0, 20, 4))
        # identities with at least k images give k distinct images
        for pid in counts:
            own = [i for i, p in zip(idx, pids) if p == pid]
            if labels.count(pid) >= 4:
                assert len(set(own)) == 4
    seeds = [sd for b in batches for _, sd in b]
    assert len(set(seeds)) == len(seeds)


def test_pk_sampler_is_deterministic_per_seed_and_epoch():
    labels = _labels()
    a, b = PKSampler(labels, 4, 2, seed=3), PKSampler(labels, 4, 2, seed=3)
    for epoch in (0, 5):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert list(a) == list(b)
    a.set_epoch(0)
    b.set_epoch(1)
    e0, e1 = list(a), list(b)
    assert [[i for i, _ in x] for x in e0] != [[i for i, _ in x] for x in e1]
    assert {sd for x in e0 for _, sd in x}.isdisjoint({sd for x in e1 for _, sd in x})
    c = PKSampler(labels, 4, 2, seed=4)
    assert list(c) != e0
    # the hook Lightning uses (batch_sampler.sampler.set_epoch) reaches the sampler
    a.sampler.set_epoch(1)
    assert list(a) == e1


def test_pk_sampler_shards_across_ranks():
    labels = _labels()
    full = PKSampler(labels, 3, 2, seed=0, num_replicas=1, rank=0, batches_per_epoch=10)
    r0 = PKSampler(labels, 3, 2, seed=0, num_replicas=2, rank=0, batches_per_epoch=10)
    r1 = PKSampler(labels, 3, 2, seed=0, num_replicas=2, rank=1, batches_per_epoch=10)
    b0, b1 = list(r0), list(r1)
    assert len(r0) == len(r1) == len(b0) == len(b1) == 5
    # the two ranks share the global epoch: interleaved they give the single-process batches
    assert [x for pair in zip(b0, b1) for x in pair] == list(full)
    seeds0 = {sd for b in b0 for _, sd in b}
    seeds1 = {sd for b in b1 for _, sd in b}
    assert seeds0.isdisjoint(seeds1)
    # uneven split: every rank still gets the same number of batches
    r = [PKSampler(labels, 3, 2, num_replicas=3, rank=k, batches_per_epoch=10) for k in range(3)]
    assert {len(list(x)) for x in r} == {3}


def test_pk_sampler_takes_ranks_from_an_injected_distributed_sampler():
    from torch.utils.data.distributed import DistributedSampler

    labels = _labels()
    ds = list(range(len(labels)))
    s = PKSampler(labels, 3, 2, sampler=DistributedSampler(ds, num_replicas=4, rank=2), batches_per_epoch=8)
    assert (s.num_replicas, s.rank, len(s)) == (4, 2, 2)


def test_pk_sampler_errors():
    with pytest.raises(ValueError, match="at least p=5"):
        PKSampler([1, 1, 2, 2], p=5, k=2)
