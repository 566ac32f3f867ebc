"""EpisodeSampler and EpisodeCollate: episode contents, layout, reproducibility, DDP split, errors."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from datamodules.episodes import EpisodeCollate, EpisodeSampler, episode_layout

# 12 classes with 6..17 images each, interleaved indices
LABELS = [i % 12 for i in range(12 * 6)] + [c for c in range(12) for _ in range(c)]


def _episodes(sampler: EpisodeSampler, epoch: int = 0) -> list[list[tuple[int, int]]]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("n, k, q", [(5, 1, 5), (4, 3, 2), (12, 2, 4)])
def test_episodes_have_distinct_classes_distinct_images_exact_counts(n, k, q):
    sampler = EpisodeSampler(LABELS, n, k, q, episodes_per_epoch=25, seed=1)
    episodes = _episodes(sampler)
    assert len(episodes) == len(sampler) == 25
    labels, is_query = episode_layout(n, k, q)
    for episode in episodes:
        indices = [i for i, _ in episode]
        assert len(indices) == n * (k + q) == sampler.batch_size
        assert len(set(indices)) == len(indices)  # distinct images
        classes = [LABELS[i] for i in indices]
        assert len(set(classes)) == n  # N distinct classes
        assert Counter(classes) == {c: k + q for c in set(classes)}  # K+Q images each
        # the layout: supports class by class, then queries class by class, same class order
        support_classes = classes[: n * k]
        order = support_classes[::k]
        assert support_classes == [c for c in order for _ in range(k)]
        assert classes[n * k:] == [c for c in order for _ in range(q)]
        # the episode labels of the layout name these classes consistently
        assert all(order[int(lab)] == c for lab, c in zip(labels, classes))
        assert int(is_query.sum()) == n * q and not bool(is_query[: n * k].any())


def test_same_seed_same_episodes_other_seed_or_epoch_differ():
    a = EpisodeSampler(LABELS, 5, 1, 3, episodes_per_epoch=10, seed=7)
    b = EpisodeSampler(LABELS, 5, 1, 3, episodes_per_epoch=10, seed=7)
    assert _episodes(a, 3) == _episodes(b, 3)
    assert _episodes(a, 3) != _episodes(a, 4)
    c = EpisodeSampler(LABELS, 5, 1, 3, episodes_per_epoch=10, seed=8)
    assert _episodes(a, 3) != _episodes(c, 3)
    # an episode does not depend on the ones before it: a longer epoch starts with the same episodes
    longer = EpisodeSampler(LABELS, 5, 1, 3, episodes_per_epoch=20, seed=7)
    assert _episodes(longer, 3)[:10] == _episodes(a, 3)
    # per-item seeds differ within and across episodes
    seeds = [s for episode in _episodes(a, 3) for _, s in episode]
    assert len(set(seeds)) == len(seeds)


def test_fixed_sampler_gives_the_same_episodes_every_epoch():
    s = EpisodeSampler(LABELS, 5, 1, 5, episodes_per_epoch=8, seed=2, fixed=True)
    assert _episodes(s, 0) == _episodes(s, 5)


def test_epoch_is_forwarded_from_the_sampler_hook():
    s = EpisodeSampler(LABELS, 5, 1, 3, episodes_per_epoch=4, seed=2)
    s.sampler.set_epoch(6)  # what Lightning calls
    assert s.epoch == 6
    s.load_state_dict({"seed": 2, "epoch": 1})
    assert s.state_dict() == {"seed": 2, "epoch": 1}


@pytest.mark.parametrize("episodes", [12, 13])
def test_ranks_split_the_episodes_of_one_process(episodes):
    single = _episodes(EpisodeSampler(LABELS, 5, 2, 2, episodes_per_epoch=episodes, seed=4), 2)
    ranks = [_episodes(EpisodeSampler(LABELS, 5, 2, 2, episodes_per_epoch=episodes, seed=4,
                                      num_replicas=3, rank=r), 2) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1  # every rank runs the same number of episodes
    merged = [ranks[g % 3][g // 3] for g in range(3 * len(ranks[0]))]
    assert merged[:episodes] == single  # ... and together they run the single-process episodes
    assert len(merged) == 3 * -(-episodes // 3)


def test_distributed_sampler_gives_rank():
    from torch.utils.data.distributed import DistributedSampler

    ds = list(range(len(LABELS)))
    s = EpisodeSampler(LABELS, 5, 1, 1, sampler=DistributedSampler(ds, num_replicas=2, rank=1, shuffle=False))
    assert (s.num_replicas, s.rank) == (2, 1)


def test_clear_errors():
    with pytest.raises(ValueError, match="fewer than K\\+Q = 1\\+6 = 7 images.*'cat' \\(6 images\\)"):
        EpisodeSampler(LABELS, 5, 1, 6, class_names={0: "cat"}, source="the val split")
    with pytest.raises(ValueError, match="13-way episodes need at least 13 classes, the dataset has 12"):
        EpisodeSampler(LABELS, 13, 1, 1)
    with pytest.raises(ValueError):
        EpisodeSampler(LABELS, 5, 0, 1)


def test_collate_adds_the_layout_and_checks_it():
    sampler = EpisodeSampler(LABELS, 3, 2, 1, episodes_per_epoch=1, seed=0)
    episode = next(iter(sampler))
    items = [{"image": torch.zeros(1), "label": LABELS[i], "index": i} for i, _ in episode]
    batch = EpisodeCollate(3, 2, 1)(items)
    assert batch["episode_labels"].tolist() == [0, 0, 1, 1, 2, 2, 0, 1, 2]
    assert batch["is_query"].tolist() == [False] * 6 + [True] * 3
    with pytest.raises(ValueError, match="not an episode"):
        EpisodeCollate(3, 2, 1)(items[::-1])
    with pytest.raises(ValueError, match="different settings"):
        EpisodeCollate(3, 1, 1)(items)
