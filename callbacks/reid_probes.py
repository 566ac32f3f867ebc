"""Probes and references for the explanation callbacks on re-ID (shared by every callback).

* :class:`EvalSet`: the evaluation set of the validation loop (queries first, then the gallery:
  ``num_query``, ``pids``, ``camids``, items with ``image`` and, for the synthetic data, ``box`` and
  ``mask``), which queries have a true match, and loading items by index.
* :func:`choose_queries`: a deterministic subset of those queries (a seeded permutation, so a
  smaller count is a prefix of a larger one: the image probes are the first localization samples).
* :class:`FeatureCapture`: keeps the feature maps the model computes for chosen samples in its own
  validation step, so that a callback does not pay a second forward pass for them.
* :class:`Gallery`: the gallery embeddings the model computed in its validation loop (the states
  of its :class:`~cama.metrics.ReIDRankMetric`, gathered from every process) and the ranking of
  any query against them under the Market-1501 protocol (``DESIGN.md`` "Re-ID ranking": same
  identity *and* same camera and junk ``pid == -1`` removed, distractors kept, ties by gallery
  index). A probe's *reference* is its top-ranked gallery image.

Nothing here draws from the global random number generators.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import default_collate
from torchmetrics import Metric

from callbacks.explanation_maps import WarnOnceCallback
from cama.metrics.reid import pairwise_distance

__all__ = [
    "CapturingCallback",
    "EvalSet",
    "FeatureCapture",
    "Gallery",
    "choose_queries",
    "find_rank_metric",
    "identities",
]

_EVAL_SETS: dict[int, EvalSet] = {}
_GALLERIES: dict[str, dict[str, Any]] = {}


@dataclass
class EvalSet:
    """The query + gallery evaluation set of a re-ID validation loop.

    Attributes:
        dataset: map-style dataset; item ``i < num_query`` is a query, the rest the gallery.
        num_query: number of queries.
        pids, camids: ``[N]`` long, identity (0 distractor, -1 junk) and camera of every item.
    """

    dataset: Any
    num_query: int
    pids: Tensor
    camids: Tensor
    shared: bool = False
    _with_match: Tensor | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_trainer(cls, trainer: pl.Trainer) -> EvalSet | None:
        """The evaluation set of ``trainer``'s validation loader (or its data module's ``eval_dataset``).

        Returns None when neither holds a dataset with ``num_query``, ``pids`` and ``camids`` (re-ID)
        or with ``labels`` (retrieval, see :meth:`from_dataset`).
        """
        candidates = []
        loaders = getattr(trainer, "val_dataloaders", None)
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        if loaders is not None:
            candidates.append(getattr(loaders, "dataset", None))
        datamodule = getattr(trainer, "datamodule", None)
        candidates.append(getattr(datamodule, "eval_dataset", None))
        for dataset in candidates:
            evalset = cls.from_dataset(dataset)
            if evalset is not None:
                return evalset
        return None

    @classmethod
    def from_dataset(cls, dataset: Any) -> EvalSet | None:
        """Wrap a dataset with ``num_query``, ``pids`` and ``camids`` (None if it lacks them).

        A dataset with ``labels`` instead is a retrieval set (``shared``): every image is a query
        and the gallery is the whole set, the query itself excluded -- the re-ID protocol with the
        class as the identity and every image its own camera (``camids`` = dataset indices).

        The identities and cameras are read once per dataset object (evaluation sets do not change).
        """
        reid = dataset is not None and all(hasattr(dataset, a) for a in ("num_query", "pids", "camids"))
        if not reid and not hasattr(dataset, "labels"):
            return None
        key = id(dataset)
        cached = _EVAL_SETS.get(key)
        if cached is not None and cached.dataset is dataset:
            return cached
        if reid:
            evalset = cls(
                dataset=dataset,
                num_query=int(dataset.num_query),
                pids=torch.as_tensor(list(dataset.pids), dtype=torch.long),
                camids=torch.as_tensor(list(dataset.camids), dtype=torch.long),
            )
        else:  # retrieval: every image a query against all the others (each image its own "camera")
            labels = torch.as_tensor(list(dataset.labels), dtype=torch.long)
            evalset = cls(dataset, labels.numel(), labels, torch.arange(labels.numel()), shared=True)
        _EVAL_SETS.clear()  # one evaluation set at a time is plenty
        _EVAL_SETS[key] = evalset
        return evalset

    def __len__(self) -> int:
        return int(self.pids.numel())

    def queries_with_true_match(self) -> Tensor:
        """Indices of the queries that have at least one true match in the gallery (ascending)."""
        if self._with_match is None:
            self._with_match = self._queries_with_true_match()
        return self._with_match

    def _queries_with_true_match(self) -> Tensor:
        q_pids, q_cams = self.pids[: self.num_query], self.camids[: self.num_query]
        start = 0 if self.shared else self.num_query
        g_pids, g_cams = self.pids[start:], self.camids[start:]
        same_id = q_pids[:, None] == g_pids[None, :]
        match = same_id & (q_cams[:, None] != g_cams[None, :]) & (g_pids[None, :] != -1)
        valid = match.any(dim=1) & (q_pids != -1)
        return valid.nonzero().squeeze(1)

    def load(self, indices: Sequence[int], device: torch.device | str | None = None) -> dict[str, Tensor]:
        """Items ``indices`` collated into a batch (``image``, ``pid``, ``camid``, ``index``, ...)."""
        items = [self.dataset[int(i)] for i in indices]
        batch = default_collate(items)
        if self.shared:  # the identities of the re-ID protocol (see from_dataset)
            rows = torch.as_tensor([int(i) for i in indices], dtype=torch.long)
            batch["pid"], batch["camid"] = self.pids[rows], self.camids[rows]
        if device is not None:
            batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        return batch

    def has_targets(self) -> tuple[bool, bool]:
        """Whether the items carry a ground-truth ``box`` and part ``mask`` (checked on item 0)."""
        if len(self) == 0:
            return False, False
        item = self.dataset[0]
        return "box" in item, "mask" in item


def identities(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """``(pids, camids)`` of a batch for the re-ID protocol: its ``pid`` and ``camid``, or for a
    retrieval batch its ``label`` and ``index`` (every image its own camera, see :meth:`EvalSet.from_dataset`)."""
    if "pid" in batch and "camid" in batch:
        return batch["pid"], batch["camid"]
    return batch["label"], batch["index"]


def choose_queries(candidates: Tensor, count: int, seed: int) -> list[int]:
    """``count`` of the ``candidates`` (dataset indices) in a seeded random order.

    The order is a permutation drawn from a private generator seeded with ``seed`` (the global RNG
    is untouched), so ``choose_queries(c, n, s)`` is the prefix of ``choose_queries(c, m, s)`` for
    ``n <= m``.
    """
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(candidates.numel(), generator=generator)
    return candidates[order[: max(0, int(count))]].tolist()


def find_rank_metric(pl_module: pl.LightningModule, attribute: str = "val_metric") -> Metric | None:
    """The module's ranking metric whose states hold the embeddings of the evaluation set.

    ``attribute`` first, then any :class:`torchmetrics.Metric` attribute holding ``embeddings``,
    ``pids``, ``camids``, ``is_query`` and ``indices`` states (as :class:`~cama.metrics.ReIDRankMetric`).
    """
    reid_states = ("embeddings", "pids", "camids", "is_query", "indices")
    retrieval_states = ("embeddings", "labels", "indices")  # e.g. cama.metrics.retrieval.RetrievalMetric

    def fits(metric: Any) -> bool:
        return isinstance(metric, Metric) and any(
            all(s in metric.metric_state for s in states) for states in (reid_states, retrieval_states)
        )

    metric = getattr(pl_module, attribute, None)
    if fits(metric):
        return metric
    for _, child in pl_module.named_children():
        if fits(child):
            return child
    return None


@dataclass
class Gallery:
    """Gallery embeddings of an evaluation epoch, sorted by dataset index, junk kept (never ranked).

    Attributes:
        embeddings: ``[G, D]``.
        pids, camids, indices: ``[G]`` long; ``indices`` are positions in the :class:`EvalSet`.
        distance: ``"euclidean"`` (squared, the ranking of :class:`~cama.metrics.ReIDRankMetric`'s
            default) or ``"cosine"``.
    """

    embeddings: Tensor
    pids: Tensor
    camids: Tensor
    indices: Tensor
    distance: str = "euclidean"

    @classmethod
    def from_metric(cls, metric: Metric) -> Gallery:
        """Gather the metric's states from every process (a collective: call it on every rank).

        One sample per dataset index is kept (the padding that ``DistributedSampler`` repeats is
        dropped), as :class:`~cama.metrics.ReIDRankMetric` does. The result is kept until the
        metric's states change, so several callbacks of one epoch gather once (every rank takes
        the same path: the collective runs on all of them or on none).
        """
        states = list(metric.metric_state.values())
        # the cache holds the metric and its first state tensors: their identities cannot be reused
        objects = [metric] + [v[0] if isinstance(v, list) and v else v for v in states]
        signature = (metric.update_count, [len(v) if isinstance(v, list) else -1 for v in states])
        cached = _GALLERIES.get("last")
        if (
            cached is not None
            and cached["signature"] == signature
            and len(cached["objects"]) == len(objects)
            and all(a is b for a, b in zip(cached["objects"], objects))
        ):
            return cached["gallery"]
        gallery = cls._gather(metric)
        _GALLERIES["last"] = {"objects": objects, "signature": signature, "gallery": gallery}
        return gallery

    @classmethod
    def _gather(cls, metric: Metric) -> Gallery:
        with metric.sync_context(should_sync=True, should_unsync=True):

            def cat(name: str) -> Tensor:
                value = getattr(metric, name)
                if isinstance(value, list):
                    return torch.cat(value) if value else torch.zeros(0)
                return value

            embeddings, indices = cat("embeddings"), cat("indices")
            if "pids" in metric.metric_state:
                pids, camids, is_query = cat("pids"), cat("camids"), cat("is_query")
            else:  # retrieval: the whole set is the gallery, each image its own camera
                pids, camids = cat("labels"), indices
                is_query = torch.zeros_like(indices)
        is_query, indices = is_query.long().reshape(-1), indices.long().reshape(-1)
        keys, inverse = torch.unique(indices * 2 + is_query, return_inverse=True)
        first = torch.full((keys.numel(),), indices.numel(), dtype=torch.long, device=indices.device)
        first.scatter_reduce_(0, inverse, torch.arange(indices.numel(), device=indices.device), reduce="amin")
        gallery = first[(keys % 2) == 0]  # is_query == 0, in ascending dataset index
        embed = embeddings.reshape(indices.numel(), -1) if indices.numel() else embeddings.reshape(0, 0)
        return cls(
            embeddings=embed[gallery].float(),
            pids=pids.long().reshape(-1)[gallery],
            camids=camids.long().reshape(-1)[gallery],
            indices=indices[gallery],
            distance=getattr(metric, "distance", "euclidean"),
        )

    def __len__(self) -> int:
        return int(self.indices.numel())

    def rank(
        self, queries: Tensor, pids: Tensor, camids: Tensor, top_k: int = 1, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The ``top_k`` gallery rows of each query under the re-ID protocol.

        Args:
            queries: ``[Q, D]`` query embeddings.
            pids, camids: ``[Q]`` identity and camera of each query.
            top_k: list length.
            exclude: optional ``[Q, G]`` bool, more gallery images not to rank (e.g. the query's own file).

        Returns:
            ``(rows, matches)``: ``[Q, k]`` long rows of this gallery (``-1`` where fewer than ``k``
            images are rankable) and ``[Q, k]`` bool, whether each is a true match.
        """
        device = self.embeddings.device
        queries = queries.to(device)
        pids, camids = pids.to(device).long(), camids.to(device).long()
        k = max(1, int(top_k))
        if len(self) == 0 or queries.shape[0] == 0:
            empty = torch.full((queries.shape[0], k), -1, dtype=torch.long, device=device)
            return empty, torch.zeros_like(empty, dtype=torch.bool)
        distances = pairwise_distance(queries, self.embeddings, self.distance)
        same_id = pids[:, None] == self.pids[None, :]
        removed = (same_id & (camids[:, None] == self.camids[None, :])) | (self.pids[None, :] == -1)
        if exclude is not None:
            removed = removed | exclude.to(device=device, dtype=torch.bool)
        distances = distances.masked_fill(removed, float("inf"))
        order = torch.sort(distances, dim=1, stable=True).indices[:, :k]
        rankable = torch.isfinite(distances.gather(1, order))
        rows = torch.where(rankable, order, torch.full_like(order, -1))
        matches = same_id.gather(1, order) & rankable
        if rows.shape[1] < k:  # a gallery smaller than k
            pad = k - rows.shape[1]
            rows = torch.cat([rows, rows.new_full((rows.shape[0], pad), -1)], dim=1)
            matches = torch.cat([matches, matches.new_zeros((matches.shape[0], pad))], dim=1)
        return rows, matches


@dataclass
class FeatureCapture:
    """Keep the protocol's feature maps of chosen samples while the model's validation step runs.

    The model's ``validation_step`` computes ``feature_maps(batch["image"])`` anyway (to embed the
    batch); :meth:`start` (call it in ``on_validation_batch_start``) shadows the module's
    ``feature_maps`` with a recording wrapper (an instance attribute over the method) when the
    batch holds wanted dataset indices, and :meth:`stop` (``on_validation_batch_end``, and on
    exceptions) removes it. The wrapper calls the real method and keeps, for the wanted rows, the
    maps and the batch's ``keys`` -- only when it is called on the batch's own image tensor, and
    only its first call per batch. A sample that is never captured (a model whose validation step
    embeds differently, a batch skipped by ``limit_val_batches``) is simply missing from
    :attr:`captured`: the caller recomputes it.

    Attributes:
        wanted: dataset indices to keep.
        captured: dataset index -> ``{"maps": [F^i [K_i, h, w]], key: value}``.
    """

    wanted: Sequence[int]
    keys: tuple[str, ...] = ("image", "pid", "camid", "label", "index", "box", "mask")
    captured: dict[int, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._wanted = {int(i) for i in self.wanted}
        self._module: pl.LightningModule | None = None

    def start(self, pl_module: pl.LightningModule, batch: Any) -> None:
        self.stop()
        if not isinstance(batch, dict) or "index" not in batch or "image" not in batch:
            return
        indices = batch["index"].tolist()
        rows = [r for r, i in enumerate(indices) if i in self._wanted and i not in self.captured]
        if not rows:
            return
        images = batch["image"]
        original: Callable[[Tensor], list[Tensor]] = pl_module.feature_maps  # the bound method
        done = False

        def recording(inputs: Tensor) -> list[Tensor]:
            nonlocal done
            maps = original(inputs)
            if not done and inputs.data_ptr() == images.data_ptr() and inputs.shape == images.shape:
                done = True
                # copies of the wanted rows only: no view keeps the whole batch alive
                select = torch.tensor(rows, device=images.device)
                kept = {
                    k: batch[k].index_select(0, select.to(batch[k].device))
                    for k in self.keys
                    if k in batch and isinstance(batch[k], Tensor)
                }
                kept_maps = [m.detach().index_select(0, select.to(m.device)) for m in maps]
                for j, r in enumerate(rows):
                    item = {k: v[j] for k, v in kept.items()}
                    item["maps"] = [m[j] for m in kept_maps]
                    self.captured[int(indices[r])] = item
            return maps

        pl_module.feature_maps = recording  # type: ignore[method-assign]
        self._module = pl_module

    def stop(self) -> None:
        if self._module is not None:
            self._module.__dict__.pop("feature_maps", None)
            self._module = None


class CapturingCallback(WarnOnceCallback):
    """A callback whose ``_capture`` (a :class:`FeatureCapture`, or None) records the feature maps
    of the model's validation steps: it is started before each validation batch and stopped after
    it, and on exceptions, so the module never keeps the recording wrapper."""

    _capture: FeatureCapture | None = None

    def _fixed_queries(self, evalset: EvalSet, stored: list[int], count: int, seed: int, what: str) -> list[int]:
        """``stored`` when it is ``count`` queries with a true match in ``evalset``, else a new seeded
        choice (:func:`choose_queries`; a warning when stored ones no longer fit the data)."""
        candidates = evalset.queries_with_true_match()
        valid = set(candidates.tolist())
        if len(stored) == count and all(i in valid for i in stored):
            return stored
        if stored and any(i not in valid for i in stored):
            self._warn_once(what, f"the stored {what} are not queries of this data set; choosing new ones")
        return choose_queries(candidates, count, seed)

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._capture is not None:
            self._capture.start(pl_module, batch)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._capture is not None:
            self._capture.stop()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._capture is not None:
            self._capture.stop()
