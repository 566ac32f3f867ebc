"""What every explanation callback shares: the schedule, the warnings, the threads, the probes.

:class:`ExplanationCallback` runs its work on every ``every_n_epochs``-th validation epoch (the first
one always; never in the sanity check), counts the epochs in its ``state_dict`` (a resumed run keeps
the rhythm), says each problem once (rank zero), logs its README (what each image tag shows)
once per run and runs its own small-tensor work on ``cpu_threads`` threads. :class:`ProbeCapture`
(chosen probes) and :class:`MapsByIndex` (every image of the first batches) keep the feature maps
that the model's ``validation_step`` returned in its ``outputs``
(:class:`cama.protocols.EvaluationOutputs`), so a callback does not forward those images again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning_utilities.core.rank_zero import WarningCache
from torch import Tensor
from torch.utils.data import default_collate

from callbacks.image_sink import ImageSink
from callbacks.score_logging import ScoreLogger
from cama.protocols import RankingTask
from cama.references import choose_probes

__all__ = [
    "ExplanationCallback",
    "MapsByIndex",
    "ProbeCapture",
    "RankingCallback",
    "RankingProbes",
    "cpu_threads",
    "evaluation_dataset",
    "load_items",
    "returned_maps",
    "stack_captured",
]


@contextmanager
def cpu_threads(count: int | None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block with ``count`` intra-op CPU threads (``None`` or a non-CPU device: unchanged).

    The callbacks' own work is small batches and small tensors, which run faster on one thread
    than on several (no hand-offs; on a busy 2-core machine a batch of 4 images took 13x longer on
    2 threads than on 1); the model's own validation loop is not affected.
    """
    previous = torch.get_num_threads()
    change = count is not None and torch.device(device).type == "cpu" and count != previous
    if change:
        torch.set_num_threads(int(count))
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(previous)


def evaluation_dataset(trainer: pl.Trainer) -> Any | None:
    """The dataset of the first validation loader, else the data module's ``eval_dataset``."""
    loaders = trainer.val_dataloaders
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    dataset = getattr(loaders, "dataset", None)
    if dataset is not None and (hasattr(dataset, "num_query") or hasattr(dataset, "labels")):
        return dataset
    return getattr(trainer.datamodule, "eval_dataset", None) if trainer.datamodule is not None else None


def load_items(dataset: Any, indices: Sequence[int], device: torch.device | str | None = None) -> dict[str, Any]:
    """Items ``indices`` of a map-style dataset, collated into a batch (on ``device``)."""
    batch = default_collate([dataset[int(i)] for i in indices])
    if device is not None:
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
    return batch


def returned_maps(outputs: Any, batch: Any) -> tuple[list[Tensor], list[int]] | None:
    """The feature maps a ``validation_step`` returned (:class:`cama.protocols.EvaluationOutputs`) and
    the dataset ``index`` of each of their rows (``map_index`` when the model forwarded part of the
    batch, else the batch's own); ``None`` when it returned none or the batch has no ``index``."""
    maps = outputs.get("feature_maps") if isinstance(outputs, Mapping) else None
    if maps is None or not isinstance(batch, Mapping) or "index" not in batch:
        return None
    index = outputs.get("map_index", batch["index"])
    return list(maps), [int(i) for i in index.tolist()]


class ProbeCapture:
    """The feature maps (and batch entries) of chosen dataset indices, from the validation steps.

    Call :meth:`add` in ``on_validation_batch_end`` with the step's ``outputs`` and ``batch``. A
    probe whose maps never come (a model whose step returns none, a batch cut by
    ``limit_val_batches``) is missing from :attr:`captured`: the caller recomputes it.
    """

    keys: tuple[str, ...] = (
        "image", "pid", "camid", "label", "index", "box", "mask", "evidence", "evidence_required",
    )

    def __init__(self, wanted: Sequence[int]) -> None:
        self.wanted = {int(i) for i in wanted}
        self.captured: dict[int, dict[str, Any]] = {}

    def add(self, outputs: Any, batch: Any) -> None:
        returned = returned_maps(outputs, batch)
        if returned is None:
            return
        maps, map_index = returned
        batch_row = {int(i): r for r, i in enumerate(batch["index"].tolist())}
        pairs = [  # (row of the maps, row of the batch) of each wanted index not yet captured
            (j, batch_row[i])
            for j, i in enumerate(map_index)
            if i in self.wanted and i not in self.captured and i in batch_row
        ]
        if not pairs:
            return
        # copies of the wanted rows only: no view keeps the whole batch alive
        rows = torch.tensor([r for _, r in pairs])
        kept = {
            k: batch[k].index_select(0, rows.to(batch[k].device))
            for k in self.keys
            if k in batch and isinstance(batch[k], Tensor)
        }
        map_rows = torch.tensor([j for j, _ in pairs])
        kept_maps = [m.detach().index_select(0, map_rows.to(m.device)) for m in maps]
        for n, (j, _) in enumerate(pairs):
            item = {k: v[n] for k, v in kept.items()}
            item["maps"] = [m[n] for m in kept_maps]
            self.captured[map_index[j]] = item


class MapsByIndex:
    """Feature maps by dataset ``index``, from the validation steps' ``outputs`` (:func:`returned_maps`).

    For a model that forwards each evaluation image once per epoch (an embedding cache: its step
    returns the maps of the images new to the epoch, with ``map_index``): the maps of an image seen in
    an earlier batch of the epoch come from that batch. :meth:`add` in ``on_validation_batch_end`` for
    every batch from the epoch's first, :meth:`batch_maps` gives a batch's maps, computing the rows
    never returned; :meth:`clear` at the epoch's end.
    """

    def __init__(self) -> None:
        self.by_index: dict[int, list[Tensor]] = {}

    def add(self, outputs: Any, batch: Any) -> None:
        returned = returned_maps(outputs, batch)
        if returned is not None:
            maps, map_index = returned
            for j, i in enumerate(map_index):
                self.by_index[i] = [m[j].detach() for m in maps]

    def batch_maps(self, batch: Mapping[str, Any], compute: Callable[[Tensor], list[Tensor]]) -> list[Tensor]:
        """The maps of every row of ``batch`` in order, one ``[B, K_i, h, w]`` per branch; rows whose
        maps never came are computed by ``compute(images)`` (and kept)."""
        if "index" not in batch:
            return compute(batch["image"])
        index = [int(i) for i in batch["index"].tolist()]
        missing = [r for r, i in enumerate(index) if i not in self.by_index]
        if missing:
            rows = torch.tensor(missing, device=batch["image"].device)
            for r, *maps in zip(missing, *compute(batch["image"].index_select(0, rows))):
                self.by_index[index[r]] = list(maps)
        branches = len(self.by_index[index[0]])
        return [torch.stack([self.by_index[i][b] for i in index]) for b in range(branches)]

    def clear(self) -> None:
        self.by_index.clear()


def stack_captured(
    captured: Mapping[int, dict[str, Any]], indices: Sequence[int], device: torch.device
) -> tuple[dict[str, Tensor], list[Tensor]]:
    """Captured items ``indices`` (:attr:`ProbeCapture.captured`) stacked: the batch and the maps per branch."""
    items = [captured[i] for i in indices]
    batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0] if k != "maps"}
    maps = [torch.stack([it["maps"][b] for it in items]).to(device) for b in range(len(items[0]["maps"]))]
    return batch, maps


class ExplanationCallback(Callback):
    """Base of the explanation callbacks: schedule, sanity-check skip, state, warn-once, threads.

    Args:
        every_n_epochs: run on every n-th validation epoch (the first one always runs).
        cpu_threads: intra-op threads for the callback's own work on CPU; ``None`` keeps torch's.
    """

    def __init__(self, every_n_epochs: int = 1, cpu_threads: int | None = 1) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = int(every_n_epochs)
        self.cpu_threads = cpu_threads
        self.validation_epochs = 0
        self._warnings = WarningCache()
        self._readme_logged = False

    def warn_once(self, message: str) -> None:
        """Say ``message`` once (rank zero), prefixed with the callback's class name."""
        self._warnings.warn(f"{type(self).__name__}: {message}")

    def log_readme(self, sink: ImageSink, text: str, step: int, prefix: str) -> None:
        """Log ``text`` as ``<prefix>/README`` to the TensorBoard loggers, once per run: call it on
        rank zero in each epoch that draws; only the first call writes. Not kept in the
        ``state_dict``: a resumed run, often in a new log version, writes it again."""
        if not self._readme_logged:
            sink.write_text("README", text, step, prefix)
            self._readme_logged = True

    def due(self, trainer: pl.Trainer) -> bool:
        """Whether this validation epoch is one the callback works in."""
        return not trainer.sanity_checking and self.validation_epochs % self.every_n_epochs == 0

    def end_epoch(self, trainer: pl.Trainer) -> bool:
        """Count a finished validation epoch (not the sanity check); whether it was one to work in."""
        if trainer.sanity_checking:
            return False
        due = self.due(trainer)
        self.validation_epochs += 1
        return due

    def threads(self, pl_module: pl.LightningModule) -> Any:
        """The context of the callback's own work (:func:`cpu_threads`)."""
        return cpu_threads(self.cpu_threads, pl_module.device)

    def state_dict(self) -> dict[str, Any]:
        return {"validation_epochs": self.validation_epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validation_epochs = int(state_dict.get("validation_epochs", 0))


class RankingProbes:
    """The evaluation set, the task's reference provider and a fixed, seeded choice of probes of a
    ranking task (re-ID, retrieval), shared by the callbacks that explain probes against references.

    Args:
        count: probes to choose.
        seed: seed of the choice (:func:`cama.references.choose_probes`; the global RNG is untouched).
    """

    def __init__(self, count: int, seed: int) -> None:
        self.count = int(count)
        self.seed = int(seed)
        self.indices: list[int] = []  # the callback keeps them in its state_dict
        self._dataset: Any = None
        self._provider: Any = None

    def provider(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any | None:
        """The task's reference provider over the evaluation set (None: not a ranking task / no set).

        Built once per evaluation-set object: the identities of an evaluation set do not change.
        """
        dataset = evaluation_dataset(trainer)
        if dataset is None or not isinstance(pl_module, RankingTask):
            return None
        if dataset is not self._dataset:
            try:
                provider = pl_module.reference_provider(dataset)
            except AttributeError:  # the set lacks the labels this task ranks by (e.g. re-ID data, retrieval model)
                provider = None
            self._dataset, self._provider = dataset, provider
        return self._provider

    @property
    def dataset(self) -> Any:
        return self._dataset

    def choose(self, provider: Any, warn: Callable[[str], None]) -> list[int]:
        """The stored probes when they still fit the data, else a new seeded choice."""
        candidates = provider.probe_candidates()
        valid = set(candidates.tolist())
        if len(self.indices) == self.count and all(i in valid for i in self.indices):
            return self.indices
        if self.indices and any(i not in valid for i in self.indices):
            warn("the stored probes are not queries of this data set; choosing new ones")
        self.indices = choose_probes(candidates, self.count, self.seed)
        return self.indices


class RankingCallback(ExplanationCallback):
    """Base of the callbacks that explain probes of a ranking task (re-ID, retrieval) against the
    references of :mod:`cama.references`: keeps the probes' maps from the validation steps'
    ``outputs`` and hands the epoch's provider and gallery embeddings to the subclass."""

    _capture: ProbeCapture | None = None

    def start_capture(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probes: RankingProbes) -> None:
        """Keep the maps of ``probes`` from this epoch's validation steps (when the model ranks)."""
        provider = probes.provider(trainer, pl_module)
        self._capture = ProbeCapture(probes.choose(provider, self.warn_once)) if provider is not None else None

    def stop_capture(self) -> dict[int, dict[str, Any]]:
        """The maps kept this epoch (dataset index -> item), and stop keeping them."""
        capture, self._capture = self._capture, None
        return capture.captured if capture is not None else {}

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        if self._capture is not None:
            self._capture.add(outputs, batch)

    def epoch_inputs(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probes: RankingProbes
    ) -> tuple[Any, Any] | None:
        """``(provider, gallery)`` of this validation epoch, or None (said once). A collective:
        the gallery embeddings are gathered from every process, so call it on every rank."""
        provider = probes.provider(trainer, pl_module)
        if provider is None:
            self.warn_once(
                "needs a ranking model (cama.protocols.RankingTask: re-ID or retrieval) and an evaluation "
                "set; nothing is logged (for a few-shot model use callbacks.fewshot_explanations.FewShotExplanations)"
            )
            return None
        gallery = pl_module.evaluation_embeddings().gallery()  # type: ignore[attr-defined]
        if len(gallery) == 0:
            self.warn_once("no gallery embedding in this validation epoch; nothing is logged")
            return None
        return provider, gallery


class ScoredRankingCallback(RankingCallback):
    """A :class:`RankingCallback` that scores a fixed, seeded subset of queries every due epoch and
    logs the scores under ``prefix`` (:class:`~callbacks.score_logging.ScoreLogger`): the subset
    is chosen once and kept in the callback's ``state_dict``, so a resumed run scores the same
    queries, and the state key carries the prefix (two instances with other prefixes coexist).

    Args:
        every_n_epochs, cpu_threads: of :class:`ExplanationCallback`.
        num_samples: queries in the subset.
        seed: seed of the subset (a private generator).
        prefix: logged names start with it.
    """

    def __init__(self, every_n_epochs: int, cpu_threads: int | None, num_samples: int, seed: int, prefix: str) -> None:
        super().__init__(every_n_epochs, cpu_threads)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.prefix = prefix.rstrip("/")
        self.samples = RankingProbes(self.num_samples, self.seed)
        self.score_logger = ScoreLogger(self.prefix)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    @property
    def sample_indices(self) -> list[int]:
        return self.samples.indices

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "sample_indices": list(self.samples.indices)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.samples.indices = [int(i) for i in state_dict.get("sample_indices", [])]
