"""Few-shot episodes as batches: N distinct classes x (K supports + Q queries) distinct images each.

:class:`EpisodeSampler` is a batch sampler that yields one episode per batch, as ``(index,
sample_seed)`` pairs like :class:`~datamodules.samplers.PKSampler`, so the training datasets run
their random augmentation under a generator seeded per item (:func:`~datamodules.samplers.run_seeded`).

**Batch layout** (``B = n_way * (k_shot + q_query)`` items): the supports first, class by class
(``k_shot`` items of episode class 0, then of class 1, ...), then the queries, class by class
(``q_query`` items of episode class 0, ...). Position ``p`` has the episode label ``p // k_shot`` when
``p < n_way * k_shot`` and ``(p - n_way * k_shot) // q_query`` after; :func:`episode_layout` gives both
tensors and :class:`EpisodeCollate` adds them to every batch as ``episode_labels`` (long ``[B]``,
``0 .. n_way - 1``) and ``is_query`` (bool ``[B]``), so a model needs no knowledge of N, K or Q.
Which dataset classes the episode labels stand for is random (the order of the drawn classes).

Episode ``g`` of epoch ``e`` is a pure function of ``(seed, e, g)`` (for a ``fixed`` sampler, the
validation and test episodes, of ``(seed, g)``: the same episodes every epoch), whatever the number
of processes, workers or what ran before. Under DDP rank ``r`` of ``R`` runs the global episodes
``r, r + R, r + 2R, ...``: every rank runs ``ceil(episodes_per_epoch / R)`` episodes, so the episodes
of one process are exactly those of ``R`` processes when ``R`` divides ``episodes_per_epoch``.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch.utils.data import BatchSampler, Sampler
from torch.utils.data.dataloader import default_collate

from .samplers import _EpochHook, resolve_replicas
from .seeding import mix_seed

__all__ = ["EpisodeSampler", "EpisodeCollate", "episode_layout"]


def episode_layout(n_way: int, k_shot: int, q_query: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(episode_labels, is_query)`` of the batch layout: long ``[B]`` and bool ``[B]``.

    ``B = n_way * (k_shot + q_query)``; supports first (class by class), then queries.
    """
    supports = torch.arange(n_way).repeat_interleave(k_shot)
    queries = torch.arange(n_way).repeat_interleave(q_query)
    labels = torch.cat([supports, queries])
    is_query = torch.cat([torch.zeros(n_way * k_shot, dtype=torch.bool), torch.ones(n_way * q_query, dtype=torch.bool)])
    return labels, is_query


class EpisodeCollate:
    """Collate one episode and add its layout: ``episode_labels`` long ``[B]`` and ``is_query`` bool ``[B]``.

    Items are collated with PyTorch's ``default_collate``. When they carry a ``label``, it is checked
    that each class block of the layout holds a single dataset label (the sampler and the collate
    function agree on N, K and Q).
    """

    def __init__(self, n_way: int, k_shot: int, q_query: int) -> None:
        self.n_way, self.k_shot, self.q_query = int(n_way), int(k_shot), int(q_query)
        self.labels, self.is_query = episode_layout(self.n_way, self.k_shot, self.q_query)

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        if len(items) != len(self.labels):
            raise ValueError(
                f"an episode of {self.n_way}-way {self.k_shot}-shot {self.q_query}-query has "
                f"{len(self.labels)} items, the batch has {len(items)}: the sampler and the collate "
                "function use different settings"
            )
        batch = default_collate(items)
        if isinstance(batch, dict) and "label" in batch:
            label = torch.as_tensor(batch["label"])
            first = label[torch.arange(self.n_way) * self.k_shot]  # each episode class's first support
            if not torch.equal(first[self.labels], label):
                raise ValueError("the batch is not an episode in the supports-then-queries layout")
        batch["episode_labels"] = self.labels.clone()
        batch["is_query"] = self.is_query.clone()
        return batch


class EpisodeSampler(BatchSampler):
    """Batches that are few-shot episodes, as ``(index, sample_seed)`` pairs (layout: module docstring).

    Each episode draws ``n_way`` distinct classes and ``k_shot + q_query`` distinct images of each,
    uniformly, independently of the other episodes. Call :meth:`set_epoch` before each epoch
    (Lightning does, through :attr:`sampler`); a ``fixed`` sampler ignores the epoch.

    Args:
        labels: the class of each dataset index (any ints).
        n_way: classes per episode (N).
        k_shot: supports per class (K).
        q_query: queries per class (Q).
        episodes_per_epoch: episodes of an epoch over all ranks.
        seed: base seed of the episodes and of the per-sample seeds.
        fixed: the same episodes every epoch (validation and test).
        num_replicas: number of ranks; default: from ``sampler`` if it is a ``DistributedSampler``
            (what Lightning injects under DDP), else the initialised process group, else 1.
        rank: this rank; same defaults as ``num_replicas``.
        sampler: ignored except that a ``DistributedSampler`` gives ``num_replicas`` and ``rank``
            (lets Lightning re-create this batch sampler under DDP).
        drop_last: kept for Lightning's batch-sampler protocol; episodes are always full.
        source: what the labels come from, for error messages (e.g. ``"the val split (val.csv)"``).
        class_names: names of the classes, for error messages.

    Raises:
        ValueError: fewer than ``n_way`` classes, or a class with fewer than ``k_shot + q_query``
            images (an episode needs that many distinct images of each of its classes).
    """

    def __init__(
        self,
        labels: Sequence[int],
        n_way: int,
        k_shot: int,
        q_query: int,
        episodes_per_epoch: int = 100,
        seed: int = 0,
        fixed: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        sampler: Sampler | None = None,
        drop_last: bool = True,
        source: str = "the dataset",
        class_names: Mapping[int, str] | None = None,
    ) -> None:
        if n_way < 2 or k_shot < 1 or q_query < 1:
            raise ValueError(f"need n_way >= 2, k_shot >= 1, q_query >= 1; got {n_way}, {k_shot}, {q_query}")
        if episodes_per_epoch < 1:
            raise ValueError(f"episodes_per_epoch must be >= 1, got {episodes_per_epoch}")
        labels = [int(x) for x in (labels.tolist() if torch.is_tensor(labels) else labels)]
        by_label: dict[int, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            by_label[label].append(i)
        need = k_shot + q_query

        def name(label: int) -> str:
            return f"{class_names[label]!r}" if class_names and label in class_names else str(label)

        if len(by_label) < n_way:
            raise ValueError(
                f"{n_way}-way episodes need at least {n_way} classes, {source} has {len(by_label)}"
            )
        small = sorted((len(v), label) for label, v in by_label.items() if len(v) < need)
        if small:
            listed = ", ".join(f"{name(label)} ({n} images)" for n, label in small[:10])
            more = f" and {len(small) - 10} more" if len(small) > 10 else ""
            raise ValueError(
                f"{len(small)} class(es) of {source} have fewer than K+Q = {k_shot}+{q_query} = {need} images, "
                f"the distinct images an episode needs of each class: {listed}{more}. "
                "Lower the shots / queries or leave those classes out."
            )
        num_replicas, rank = resolve_replicas(num_replicas, rank, sampler)
        self.labels = labels
        self.n_way, self.k_shot, self.q_query = int(n_way), int(k_shot), int(q_query)
        self.batch_size = self.n_way * (self.k_shot + self.q_query)
        self.drop_last = drop_last
        self.seed = int(seed)
        self.fixed = bool(fixed)
        self.episodes_per_epoch = int(episodes_per_epoch)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        self._classes = sorted(by_label)
        self._by_label = {label: by_label[label] for label in self._classes}
        self.episodes_per_rank = math.ceil(self.episodes_per_epoch / self.num_replicas)
        self.sampler = _EpochHook(self, sampler)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.episodes_per_rank

    def _epoch_key(self, epoch: int) -> int:
        return 0 if self.fixed else int(epoch)

    def sample_seed(self, epoch: int, episode: int, position: int) -> int:
        """The seed of the item at ``position`` of global episode ``episode`` of ``epoch``."""
        return mix_seed(self.seed, 0x5EED, self._epoch_key(epoch), episode, position)

    def episode(self, epoch: int, episode: int) -> tuple[list[int], list[int]]:
        """``(classes, indices)`` of global episode ``episode``: the N dataset labels in episode
        order and the dataset indices in the batch layout (supports, then queries)."""
        rng = random.Random(mix_seed(self.seed, 0xE915, self._epoch_key(epoch), episode))
        classes = rng.sample(self._classes, self.n_way)
        drawn = [rng.sample(self._by_label[c], self.k_shot + self.q_query) for c in classes]
        supports = [i for images in drawn for i in images[: self.k_shot]]
        queries = [i for images in drawn for i in images[self.k_shot:]]
        return classes, supports + queries

    def global_episodes(self, rank: int | None = None) -> list[int]:
        """The global episode numbers run by ``rank`` (default: this rank) in an epoch."""
        r = self.rank if rank is None else rank
        return [r + self.num_replicas * j for j in range(self.episodes_per_rank)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        for g in self.global_episodes():
            _, indices = self.episode(epoch, g)
            yield [(index, self.sample_seed(epoch, g, pos)) for pos, index in enumerate(indices)]

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
