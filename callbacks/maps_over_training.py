"""Maps over training: do the explanations of fixed probes settle while the model trains?

:class:`MapsOverTraining` is a collaborator of :class:`callbacks.explanation_images.ExplanationImages`
(``over_training_epochs``). Each epoch the callback draws, it hands over every method's summed map
of its fixed probes on the probe, in ``[0, 1]`` at image size, each against the probe's **fixed
reference**: the probe's reference (:mod:`cama.references`: its top-ranked gallery image for re-ID,
its nearest other image for retrieval) at the first drawing epoch that scores the probe, kept by its
dataset index (:meth:`MapsOverTraining.fixed_references`, in the state) and embedded by the current
model each epoch. The probe grid's reference may change from epoch to epoch; the fixed one does not,
so the drift measures the model's explanation of one pair moving, not a new pair being explained.
The maps that need no reference (:data:`cama.viz.methods.REFERENCE_FREE_METHODS`: RAM's ``R_q^q``,
the CAM of the predicted class, EigenCAM) are the grid's; the others are the grid's where the
epoch's reference is the fixed one and :func:`against_fixed_references` where it is not. They are
shrunk to at most ``size`` pixels on the long side (area averaging), then:

* compared with the previous drawing epoch's maps of the same probes: the Spearman rank correlation
  of each probe's two maps (:func:`cama.explain.spearman_correlation`, the similarity of maps of
  Adebayo et al. 2018, Sec. 3), averaged over the probes that have one (a constant map has none),
  logged as ``<prefix>/<method>/spearman`` (``maps_drift/ram/spearman``): near 1 the explanations
  have settled, low they still move;
* the first probe's maps are kept for a strip (:func:`cama.viz.epoch_strip.epoch_strip`, one column
  per epoch), at most ``max_epochs`` epochs: the first and the latest always; when one more comes,
  the kept epoch whose removal leaves the smallest gap between its neighbours goes, so the columns
  thin out evenly over the whole run.

The state (:meth:`state_dict`, inside the callback's) holds the probes' fixed references, the
previous maps of the probes with their dataset indices and the strip's epochs and maps, float32 on
the CPU (4 probes, 3 methods, 12 epochs at 32 x 16: about 100 KB), so a resumed run goes on comparing
against the same references. Nothing is kept before the first drawing epoch: the state is then empty.
A checkpoint written before the fixed references were kept fixes them at its next drawing epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cama.explain import spearman_correlation
from cama.viz import Features, ModelExplainer, ProbeAgainst
from cama.viz.epoch_strip import epoch_strip
from cama.viz.methods import REFERENCE_FREE_METHODS

__all__ = ["MapsOverTraining", "against_fixed_references", "shrink_maps", "thinned_position"]


def shrink_maps(maps: Tensor, size: int) -> Tensor:
    """Maps ``[P, H, W]`` at most ``size`` pixels on their long side (area averaging, the aspect
    kept), float32 on the CPU; smaller maps are kept as they are."""
    height, width = maps.shape[-2:]
    factor = size / max(height, width)
    maps = maps.detach().float()
    if factor < 1:
        out = (max(1, round(height * factor)), max(1, round(width * factor)))
        maps = F.interpolate(maps[:, None], size=out, mode="area")[:, 0]
    return maps.cpu()


def thinned_position(epochs: Sequence[int]) -> int:
    """The position of the epoch to drop from ``epochs`` (at least 3): the inner one whose removal
    leaves the smallest gap between its neighbours (the first such)."""
    if len(epochs) < 3:
        raise ValueError(f"need at least 3 epochs to thin, got {list(epochs)}")
    gaps = [epochs[i + 1] - epochs[i - 1] for i in range(1, len(epochs) - 1)]
    return 1 + gaps.index(min(gaps))


@torch.no_grad()
def against_fixed_references(
    explainer: ModelExplainer,
    maps: Mapping[str, Tensor],
    probes: Features,
    current: Sequence[int],
    fixed: Sequence[int],
    fixed_embedding: Tensor,
) -> dict[str, Tensor]:
    """Each method's summed maps ``[P, H, W]`` of ``probes`` against their fixed references (module
    docstring), from ``maps`` (the same, against this epoch's references ``current``: dataset indices).

    ``fixed`` are the fixed references' dataset indices, ``fixed_embedding`` ``[P, D]`` their
    embeddings under the current model. A probe whose reference is the fixed one, and every probe of a
    :data:`~cama.viz.methods.REFERENCE_FREE_METHODS` method, keeps its map of ``maps``; the others'
    maps are computed again against ``fixed_embedding`` (one :meth:`ModelExplainer.explain` per method,
    the summed map only).
    """
    if not len(current) == len(fixed) == fixed_embedding.shape[0] == probes.embedding.shape[0]:
        raise ValueError(
            f"need one reference per probe: {probes.embedding.shape[0]} probes, {len(current)} current, "
            f"{len(fixed)} fixed references, {fixed_embedding.shape[0]} embeddings"
        )
    changed = [row for row, (now, kept) in enumerate(zip(current, fixed)) if int(now) != int(kept)]
    if not changed:
        return dict(maps)
    rows = torch.tensor(changed, device=fixed_embedding.device)
    subset, target = probes.select(rows), ProbeAgainst(fixed_embedding[rows])
    out: dict[str, Tensor] = {}
    for method, summed in maps.items():
        if method not in REFERENCE_FREE_METHODS:
            summed = summed.clone()
            again = explainer.explain(method, subset, target, branches=False)[:, 0]
            summed[rows.to(summed.device)] = again.to(summed.dtype)
        out[method] = summed
    return out


class MapsOverTraining:
    """The fixed probes' maps over the drawing epochs (module docstring).

    Args:
        max_epochs: the most epochs the strip keeps (at least 2).
        size: the long side of the kept maps, in pixels.
        prefix: the logged names' prefix, ``<prefix>/<method>/spearman``.
    """

    STATE_KEY = "maps_over_training"

    def __init__(self, max_epochs: int = 12, size: int = 32, prefix: str = "maps_drift") -> None:
        if max_epochs < 2:
            raise ValueError(f"max_epochs must be >= 2 (the first and the latest epoch), got {max_epochs}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.max_epochs, self.size, self.prefix = int(max_epochs), int(size), prefix
        self.indices: list[int] = []  # the probes (dataset indices) of the previous maps' rows
        self.previous: dict[str, Tensor] = {}  # method -> [P, h, w]
        self.epochs: list[int] = []  # the strip's epochs
        self.strip: dict[str, Tensor] = {}  # method -> [T, h, w], the first probe's
        self.strip_index: int | None = None  # the strip's probe
        self.references: dict[int, int] = {}  # probe -> its fixed reference (dataset indices)

    def fixed_references(self, indices: Sequence[int], current: Sequence[int]) -> list[int]:
        """The fixed references of the probes ``indices`` (dataset indices): the one kept for each
        probe, else its reference of this epoch, ``current``, which is then kept."""
        if len(indices) != len(current):
            raise ValueError(f"need one current reference per probe: {len(indices)} probes, {len(current)}")
        for probe, reference in zip(indices, current):
            self.references.setdefault(int(probe), int(reference))
        return [self.references[int(probe)] for probe in indices]

    def update(self, epoch: int, indices: Sequence[int], maps: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Take this epoch's maps ``{method: [P, H, W]}`` of the probes ``indices``; the correlations with
        the previous epoch's maps, ``{"<prefix>/<method>/spearman": scalar}`` (none the first time)."""
        indices = [int(i) for i in indices]
        if not indices or any(m.shape[0] != len(indices) for m in maps.values()):
            raise ValueError(f"need one map per probe ({len(indices)}) for every method")
        small = {method: shrink_maps(m, self.size) for method, m in maps.items()}
        scores = self.correlations(indices, small)
        self.indices, self.previous = indices, small
        if indices[0] != self.strip_index or set(small) != set(self.strip) or any(
            self.strip[m].shape[-2:] != small[m].shape[-2:] for m in small
        ):
            self.strip_index, self.epochs, self.strip = indices[0], [], {m: v[:0] for m, v in small.items()}
        self.epochs.append(int(epoch))
        self.strip = {m: torch.cat([self.strip[m], v[:1]]) for m, v in small.items()}
        while len(self.epochs) > self.max_epochs:
            drop = thinned_position(self.epochs)
            keep = [i for i in range(len(self.epochs)) if i != drop]
            self.epochs = [self.epochs[i] for i in keep]
            self.strip = {m: v[keep] for m, v in self.strip.items()}
        return scores

    def correlations(self, indices: Sequence[int], maps: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each method's mean Spearman correlation between the previous maps and ``maps`` ``[P, h, w]``
        (already shrunk) of the probes both hold; methods without a finite one are left out."""
        position = {index: row for row, index in enumerate(self.indices)}
        pairs = [(position[i], row) for row, i in enumerate(indices) if i in position]
        scores: dict[str, Tensor] = {}
        if not pairs:
            return scores
        before, now = (torch.tensor(rows) for rows in zip(*pairs))
        for method, current in maps.items():
            previous = self.previous.get(method)
            if previous is None or previous.shape[-2:] != current.shape[-2:]:
                continue
            rho = spearman_correlation(previous[before], current[now])
            finite = rho[rho.isfinite()]
            if finite.numel():
                scores[f"{self.prefix}/{method}/spearman"] = finite.mean()
        return scores

    def picture(self, probe: Tensor, alpha: float, colormap: str, title: str | None) -> Tensor | None:
        """The strip of the first probe (``probe``: its ``uint8`` ``[3, H, W]`` picture), or None before
        two epochs are kept."""
        if len(self.epochs) < 2:
            return None
        methods = list(self.strip)
        maps = torch.stack([self.strip[m] for m in methods])
        return epoch_strip(probe, maps, methods, self.epochs, alpha, colormap, title=title)

    def state_dict(self) -> dict[str, Any]:
        if not self.previous and not self.references:
            return {}
        return {self.STATE_KEY: {
            "indices": list(self.indices), "previous": dict(self.previous), "epochs": list(self.epochs),
            "strip": dict(self.strip), "strip_index": self.strip_index, "references": dict(self.references),
        }}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        stored = state_dict.get(self.STATE_KEY)
        if not stored:
            return
        self.indices = [int(i) for i in stored["indices"]]
        self.previous = {m: v.float().cpu() for m, v in stored["previous"].items()}
        self.epochs = [int(e) for e in stored["epochs"]]
        self.strip = {m: v.float().cpu() for m, v in stored["strip"].items()}
        index = stored.get("strip_index")
        self.strip_index = None if index is None else int(index)
        self.references = {int(p): int(r) for p, r in stored.get("references", {}).items()}
