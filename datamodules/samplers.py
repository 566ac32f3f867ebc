"""Identity-balanced batch sampling for metric learning (P identities x K images per batch).

:class:`PKSampler` yields batches of ``(index, sample_seed)`` pairs. The sample seed is a pure
function of ``(seed, epoch, batch, position)``; the training datasets run their random
augmentations under a generator seeded with it (see :func:`run_seeded`), so the batches *and* the
augmentations of an epoch depend only on the seed and the epoch number, not on the global RNG, on
the number of data-loader workers or on what ran before: a run resumed at an epoch boundary sees
exactly the data an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import BatchSampler, Sampler
from torch.utils.data.distributed import DistributedSampler

from .seeding import mix_seed

__all__ = ["PKSampler", "MPerClassBatchSampler", "resolve_replicas", "run_seeded", "split_item"]

T = TypeVar("T")


def split_item(item: Any) -> tuple[int, int | None]:
    """``index`` or ``(index, sample_seed)`` -> ``(index, sample_seed or None)``."""
    if isinstance(item, (tuple, list)):
        index, seed = item
        return int(index), int(seed)
    return int(item), None


def run_seeded(fn: Callable[..., T], *args: Any, seed: int | None = None, **kwargs: Any) -> T:
    """Call ``fn`` with torch's global CPU RNG seeded with ``seed``, restoring the RNG afterwards.

    torchvision's random transforms draw from the global torch RNG; forking it makes their output
    a function of ``seed`` alone. With ``seed=None`` ``fn`` runs on the global RNG as usual.
    """
    if seed is None:
        return fn(*args, **kwargs)
    gen = torch.default_generator
    state = gen.get_state()
    # seed the CPU generator only: torch.manual_seed would also queue a (lazy, stack-formatting)
    # seeding of every accelerator, a cost per sample
    gen.manual_seed(seed)
    try:
        return fn(*args, **kwargs)
    finally:
        gen.set_state(state)


class _EpochHook(Sampler[int]):
    """What ``PKSampler.sampler`` holds: Lightning calls ``set_epoch`` on ``batch_sampler.sampler``
    (not on the batch sampler itself); this forwards it. Iterating it gives the flat index order."""

    def __init__(self, owner: "PKSampler", inner: Sampler | None = None) -> None:
        self.owner = owner
        self.inner = inner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)
        if self.inner is not None and hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        for batch in self.owner:
            for index, _ in batch:
                yield index

    def __len__(self) -> int:
        return len(self.owner) * self.owner.batch_size



def resolve_replicas(
    num_replicas: int | None, rank: int | None, sampler: Sampler | None = None
) -> tuple[int, int]:
    """``(num_replicas, rank)`` of a batch sampler: the given values, else those of a
    ``DistributedSampler`` (what Lightning injects under DDP), else the initialised process group,
    else one process."""
    if isinstance(sampler, DistributedSampler):
        num_replicas = sampler.num_replicas if num_replicas is None else num_replicas
        rank = sampler.rank if rank is None else rank
    if num_replicas is None or rank is None:
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if dist else 1
        if rank is None:
            rank = torch.distributed.get_rank() if dist else 0
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
    return int(num_replicas), int(rank)

class PKSampler(BatchSampler):
    """Batches of ``p`` distinct identities x ``k`` images each, as ``(index, sample_seed)`` pairs.

    Identities are visited in random order, cycling through all of them before any repeats; the
    images of an identity are drawn without replacement, cycling through them in random order
    (an identity with fewer than ``k`` images is sampled with replacement). An epoch has
    ``len(labels) // (p * k)`` batches in total (or ``batches_per_epoch``), shared among the
    ``num_replicas`` ranks: rank ``r`` gets global batches ``r, r + R, r + 2R, ...`` and every rank
    the same number. Everything is a function of ``(seed, epoch)``; call :meth:`set_epoch` before
    each epoch (Lightning does, through :attr:`sampler`).

    Args:
        labels: the identity of each dataset index (any hashable ints).
        p: identities per batch (must not exceed the number of identities).
        k: images per identity.
        seed: base seed of the batches and of the per-sample seeds.
        num_replicas: number of ranks; default: from ``sampler`` if it is a ``DistributedSampler``
            (what Lightning injects under DDP), else the initialised process group, else 1.
        rank: this rank; same defaults as ``num_replicas``.
        batches_per_epoch: total batches per epoch over all ranks (default ``len(labels) // (p*k)``).
        sampler: ignored except that a ``DistributedSampler`` gives ``num_replicas`` and ``rank``
            (lets Lightning re-create this batch sampler under DDP).
        drop_last: kept for Lightning's batch-sampler protocol; batches are always full.
    """

    def __init__(
        self,
        labels: Sequence[int],
        p: int,
        k: int,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        batches_per_epoch: int | None = None,
        sampler: Sampler | None = None,
        drop_last: bool = True,
    ) -> None:
        if p < 1 or k < 1:
            raise ValueError(f"p and k must be >= 1, got p={p}, k={k}")
        labels = [int(x) for x in (labels.tolist() if torch.is_tensor(labels) else labels)]
        by_label: dict[int, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            by_label[label].append(i)
        if len(by_label) < p:
            raise ValueError(f"PKSampler needs at least p={p} identities, the dataset has {len(by_label)}")
        num_replicas, rank = resolve_replicas(num_replicas, rank, sampler)
        self.labels = labels
        self.p, self.k = int(p), int(k)
        self.batch_size = self.p * self.k
        self.drop_last = drop_last
        self.seed = int(seed)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        self._by_label = {label: idx for label, idx in sorted(by_label.items())}
        total = batches_per_epoch if batches_per_epoch is not None else len(labels) // self.batch_size
        self.batches_per_rank = max(1, int(total) // self.num_replicas)
        self.sampler = _EpochHook(self, sampler)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches_per_rank

    def sample_seed(self, epoch: int, batch: int, position: int) -> int:
        """The seed of the item at ``position`` of global batch ``batch`` of ``epoch``."""
        return mix_seed(self.seed, 0x5EED, epoch, batch, position)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All global batches (index lists, every rank's) of an epoch."""
        rng = random.Random(mix_seed(self.seed, epoch))
        pids = list(self._by_label)
        cycles = {pid: [] for pid in pids}  # remaining images of the current pass over each identity
        queue: list[int] = []
        batches = []
        for _ in range(self.batches_per_rank * self.num_replicas):
            chosen: list[int] = []
            while len(chosen) < self.p:
                if not queue or all(pid in chosen for pid in queue):
                    queue.extend(rng.sample(pids, len(pids)))
                j = next(j for j, pid in enumerate(queue) if pid not in chosen)
                chosen.append(queue.pop(j))
            batch: list[int] = []
            for pid in chosen:
                images = self._by_label[pid]
                if len(images) < self.k:
                    batch.extend(rng.choices(images, k=self.k))
                    continue
                if len(cycles[pid]) < self.k:
                    cycles[pid] = rng.sample(images, len(images))
                batch.extend(cycles[pid][: self.k])
                del cycles[pid][: self.k]
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        batches = self.epoch_batches(epoch)
        for b in range(self.rank, len(batches), self.num_replicas):
            yield [(index, self.sample_seed(epoch, b, pos)) for pos, index in enumerate(batches[b])]

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])


class MPerClassBatchSampler(PKSampler):
    """Batches of ``batch_size / m`` classes x ``m`` images, as ``(index, sample_seed)`` pairs: the
    draw of pytorch-metric-learning's ``MPerClassSampler``, on a generator of its own.

    Every epoch's index list is drawn by the algorithm of ``MPerClassSampler`` (per batch: shuffle the
    class list, take its first ``batch_size / m`` classes, ``m`` images of each without replacement, or
    with replacement for a class with fewer than ``m`` images) with a NumPy ``RandomState`` seeded by
    ``(seed, epoch)``, so the batches, and the augmentations seeded per item, depend only on the seed
    and the epoch; no global generator (NumPy's or pytorch-metric-learning's) is read or changed. The
    order is the one ``MPerClassSampler`` gives when its generator is that ``RandomState``. An epoch
    has ``batches_per_epoch`` global batches (default ``len(labels) // batch_size``), and under DDP
    rank ``r`` gets whole batches ``r, r + R, ...`` (the machinery of :class:`PKSampler`), so every
    process sees ``m`` images per class.

    Args:
        labels: the class of each dataset index.
        m: images per class in a batch (a class with fewer images is sampled with replacement).
        batch_size: images per batch, a multiple of ``m``; at most ``m`` x the number of classes.
        seed, num_replicas, rank, batches_per_epoch, sampler, drop_last: as for :class:`PKSampler`.
    """

    def __init__(
        self, labels: Sequence[int], m: int, batch_size: int, seed: int = 0, num_replicas: int | None = None,
        rank: int | None = None, batches_per_epoch: int | None = None, sampler: Sampler | None = None,
        drop_last: bool = True,
    ) -> None:
        m, batch_size = int(m), int(batch_size)
        if m < 1 or batch_size < 1 or batch_size % m:
            raise ValueError(f"batch_size={batch_size} must be a positive multiple of m_per_class={m}")
        num_labels = len(set(int(x) for x in labels))
        if batch_size // m > num_labels:
            raise ValueError(
                f"a batch of {batch_size} images with m_per_class={m} needs {batch_size // m} classes, "
                f"the training split has {num_labels}"
            )
        super().__init__(labels, batch_size // m, m, seed=seed, num_replicas=num_replicas, rank=rank,
                         batches_per_epoch=batches_per_epoch, sampler=sampler, drop_last=drop_last)
        self.m = m
        # classes in order of first appearance, as MPerClassSampler lists them
        self._class_indices = {label: np.array(self._by_label[label], dtype=int) for label in dict.fromkeys(self.labels)}

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All global batches (index lists, every rank's) of an epoch."""
        total = self.batches_per_rank * self.num_replicas
        rng = np.random.RandomState(mix_seed(self.seed, epoch) % (2**32))
        classes = list(self._class_indices)
        order: list[int] = []
        for _ in range(total):
            rng.shuffle(classes)
            for label in classes[: self.batch_size // self.m]:
                indices = self._class_indices[label]
                order.extend(int(i) for i in rng.choice(indices, size=self.m, replace=len(indices) < self.m))
        return [order[b * self.batch_size : (b + 1) * self.batch_size] for b in range(total)]
