"""The collaborators the explanation callbacks hold: each callback is a plain Lightning ``Callback``
whose hooks decide when to act and hand the work to these objects and to ``cama``.

* :class:`EpochSchedule` -- when: every ``every_n_epochs``-th validation epoch (the first one
  always; 0: never; never in the sanity check), counted in the callback's ``state_dict`` (a resumed
  run keeps the rhythm);
* :class:`OnceWarnings` -- each problem said once (rank zero), prefixed with the callback's name;
* :class:`OnceText` -- the README (what each image tag shows), once per run;
* :class:`RankingProbes` -- a ranking task's evaluation set, reference provider and fixed, seeded
  choice of probes (kept in the ``state_dict`` as ``probe_indices``), the capture of their maps and
  the epoch's provider and gallery;
* :class:`ProbeCapture` (chosen probes) and :class:`MapsByIndex` (every image of the first batches)
  -- the feature maps the model's ``validation_step`` returned in its ``outputs``
  (:class:`cama.protocols.EvaluationOutputs`), so a callback does not forward those images again;
* :func:`cpu_threads` -- the thread count of a callback's own small-tensor work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from lightning_utilities.core.rank_zero import WarningCache
from torch import Tensor
from torch.utils.data import default_collate

from callbacks.image_sink import ImageSink
from cama.protocols import RankingTask
from cama.references import choose_probes

__all__ = [
    "EpochSchedule",
    "MapsByIndex",
    "OnceText",
    "OnceWarnings",
    "ProbeCapture",
    "RankingProbes",
    "cpu_threads",
    "evaluation_dataset",
    "load_items",
    "returned_maps",
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


class EpochSchedule:
    """When a callback works: on every ``every_n_epochs``-th validation epoch, the first one included,
    never in the trainer's sanity check; ``every_n_epochs=0``: never. It counts the validation epochs
    (sanity check excepted, worked in or not) in its ``state_dict``, so a resumed run keeps the rhythm.
    """

    def __init__(self, every_n_epochs: int) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0 (0: never), got {every_n_epochs}")
        self.every_n_epochs = int(every_n_epochs)
        self.validation_epochs = 0

    def due(self, trainer: pl.Trainer) -> bool:
        """Whether this validation epoch is one to work in."""
        if self.every_n_epochs == 0 or trainer.sanity_checking:
            return False
        return self.validation_epochs % self.every_n_epochs == 0

    def end_epoch(self, trainer: pl.Trainer) -> bool:
        """Count a finished validation epoch (not the sanity check); whether it was one to work in."""
        if trainer.sanity_checking:
            return False
        due = self.due(trainer)
        self.validation_epochs += 1
        return due

    def state_dict(self) -> dict[str, Any]:
        return {"validation_epochs": self.validation_epochs}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.validation_epochs = int(state_dict.get("validation_epochs", 0))


def joint_state(*parts: Any) -> dict[str, Any]:
    """A callback's ``state_dict`` from its collaborators' (an :class:`EpochSchedule`, a
    :class:`RankingProbes`): their keys side by side."""
    return {key: value for part in parts for key, value in part.state_dict().items()}


def load_joint_state(state_dict: Mapping[str, Any], *parts: Any) -> None:
    """Each collaborator reads its keys of a callback's ``state_dict`` (:func:`joint_state`)."""
    for part in parts:
        part.load_state_dict(state_dict)


class OnceWarnings:
    """Says each message once (rank zero), prefixed with its owner's name (``owner: message``)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._cache = WarningCache()

    def warn(self, message: str) -> None:
        self._cache.warn(f"{self.owner}: {message}")


class OnceText:
    """A TensorBoard text written once per run (a callback's README: what each image tag shows). Not
    kept in the ``state_dict``: a resumed run, often in a new log version, writes it again."""

    def __init__(self) -> None:
        self.written = False

    def write(self, sink: ImageSink, name: str, text: str, step: int, prefix: str) -> None:
        """``sink.write_text`` the first time, nothing after; call it on rank zero in each epoch that draws."""
        if not self.written:
            sink.write_text(name, text, step, prefix)
            self.written = True


class RankingProbes:
    """The evaluation set, the task's reference provider and a fixed, seeded choice of probes of a
    ranking task (re-ID, retrieval): what a callback that explains probes against their references
    holds. The choice is made once and kept in the callback's ``state_dict`` (``probe_indices``), so a
    resumed run explains the same probes.

    Args:
        count: probes to choose.
        seed: seed of the choice (:func:`cama.references.choose_probes`; the global RNG is untouched).
    """

    #: the ``state_dict`` key of the probes, and the key older checkpoints of the scoring callbacks
    #: (LocalizationMetrics, SanityChecks) kept them under
    STATE_KEY = "probe_indices"
    OLD_STATE_KEY = "sample_indices"

    def __init__(self, count: int, seed: int) -> None:
        self.count = int(count)
        self.seed = int(seed)
        self.indices: list[int] = []  # the callback keeps them in its state_dict
        self._dataset: Any = None
        self._provider: Any = None
        self._capture: ProbeCapture | None = None

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

    def start_capture(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, warn: Callable[[str], None], wanted: bool
    ) -> None:
        """When ``wanted``, keep the probes' maps from this epoch's validation steps (:meth:`add`); nothing
        is kept when the model does not rank."""
        provider = self.provider(trainer, pl_module) if wanted else None
        self._capture = ProbeCapture(self.choose(provider, warn)) if provider is not None else None

    def add(self, outputs: Any, batch: Any) -> None:
        """A validation step's returned maps (``on_validation_batch_end``): the probes' rows are kept."""
        if self._capture is not None:
            self._capture.add(outputs, batch)

    def take_captured(self) -> dict[int, dict[str, Any]]:
        """The epoch's captured probes (dataset index -> their maps), and the capture ends."""
        captured = self._capture.captured if self._capture is not None else {}
        self._capture = None
        return captured

    def epoch_inputs(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, warn: Callable[[str], None]
    ) -> tuple[Any, Any] | None:
        """``(provider, gallery)`` of this validation epoch, or None (said through ``warn``). A
        collective: the gallery embeddings are gathered from every process, so call it on every rank."""
        provider = self.provider(trainer, pl_module)
        if provider is None:
            warn(
                "needs a ranking model (cama.protocols.RankingTask: re-ID or retrieval) and an evaluation "
                "set; nothing is logged (for a few-shot model use callbacks.fewshot_explanations.FewShotExplanations)"
            )
            return None
        gallery = pl_module.evaluation_embeddings().gallery()  # type: ignore[attr-defined]
        if len(gallery) == 0:
            warn("no gallery embedding in this validation epoch; nothing is logged")
            return None
        return provider, gallery

    def state_dict(self) -> dict[str, Any]:
        return {self.STATE_KEY: list(self.indices)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """The stored probes, under ``probe_indices`` or, in an older checkpoint, ``sample_indices``."""
        stored = state_dict.get(self.STATE_KEY, state_dict.get(self.OLD_STATE_KEY, []))
        self.indices = [int(i) for i in stored]
