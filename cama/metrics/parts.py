"""Which parts of a person an explanation map looks at, against part-level ground truth.

The synthetic re-ID data draws people of parts (head, upper, lower, shoes, accessory), with one mask
per part, and marks for every item the parts that tell its identity from its look-alikes (its
``evidence`` vector, :func:`datamodules.synthetic.people.discriminative_parts`). cama-ram claims that
the branches of a multi-branch model together look at more of the discriminative evidence than a
single-branch model; these scores measure that:

* :func:`part_energy_share`: the share of a map's energy on the selected (discriminative) parts,
  next to those parts' share of the person's area, the share a map spread evenly over the person
  would put there. Their ratio above 1 means the map prefers the discriminative parts.
* :func:`parts_covered`: how many distinct parts the union of the branches' top-k regions touches;
  :func:`branch_parts`: the part each branch's top region covers most.
* :class:`PartEvidence`: the three, summed over an epoch (``dist_reduce_fx="sum"``).

Maps and part masks share one resolution (upsample the maps to the image size first); maps are
expected non-negative (ReLU'd or normalised) and are used as they are, without rescaling.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from cama.losses import resolve_topk
from cama.metrics.boxes import any_along, check_maps
from cama.metrics.segmentation import ratio, topk_masks
from cama.metrics.states import add_sum_states

__all__ = ["part_energy_share", "parts_covered", "branch_parts", "PartEvidence"]


def _check_parts(part_masks: Tensor, batch: int, size: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless ``part_masks`` is ``[batch, P, *size]``."""
    if part_masks.ndim != 4 or part_masks.shape[0] != batch or tuple(part_masks.shape[-2:]) != size:
        raise ValueError(f"part_masks must be [B={batch}, P, {size[0]}, {size[1]}] (the maps' size), "
                         f"got shape {tuple(part_masks.shape)}")


def _check_branches(maps: Tensor) -> None:
    if maps.ndim != 4:
        raise ValueError(f"maps must be [B, N, H, W] (N branches), got shape {tuple(maps.shape)}")


def part_energy_share(
    maps: Tensor, part_masks: Tensor, selected: Tensor, within_person: bool = False
) -> tuple[Tensor, Tensor]:
    """The share of each map's energy on the selected parts, and their share of the person's area.

    ``energy_share = sum_{x in S} L(x) / sum_x L(x)`` over the whole map (energy off the person
    counts in the denominator, as in the energy pointing game, fam Eq. 19), or with
    ``within_person`` over the person only (``sum_{x in person} L(x)``: which parts of the person
    the map prefers, whatever it puts on the background), and
    ``area_share = |S| / |person|``, where ``S`` is the union of the selected parts' masks (a pixel
    in two selected parts counts once) and the person is the union of all parts. A map spread evenly
    over the person, and nowhere else, has ``energy_share == area_share``.

    Args:
        maps: ``[B, H, W]`` non-negative maps, used as they are.
        part_masks: ``[B, P, H, W]`` bool (or 0/1) masks of the parts.
        selected: ``[B, P]`` bool, the parts to score (e.g. the item's ``evidence``).
        within_person: the energy share of the person's energy instead of the whole map's.

    Returns:
        ``(energy_share [B], area_share [B])`` float32; both NaN in a row where no selected part is
        visible (none selected, or all of them absent / occluded in that image) or the map has no
        positive energy (on the person, with ``within_person``): such rows say nothing and a caller
        leaves them out.
    """
    check_maps(maps)
    _check_parts(part_masks, maps.shape[0], tuple(maps.shape[-2:]))
    if selected.shape != part_masks.shape[:2]:
        raise ValueError(f"selected must be [B, P] = {tuple(part_masks.shape[:2])}, got {tuple(selected.shape)}")
    whole, on_person, on_chosen, area, person = _energy_sums(maps, part_masks, selected)
    return _shares(on_chosen, on_person if within_person else whole, area, person)


def _energy_sums(maps: Tensor, part_masks: Tensor, selected: Tensor) -> list[Tensor]:
    """Five ``[B]`` float64 sums: each map's energy on the whole image, on the person, on the union
    of the selected parts, and the pixel counts of that union and of the person."""
    parts = part_masks.to(maps.device).bool().flatten(2)  # [B, P, H*W]
    person = any_along(parts, 1)
    chosen = any_along(parts & selected.to(maps.device).bool()[:, :, None], 1)
    energy = maps.flatten(1).double()
    sums = [energy.sum(1), (energy * person).sum(1), (energy * chosen).sum(1), chosen.sum(1), person.sum(1)]
    return [s.double() for s in sums]


def _shares(on_chosen: Tensor, total: Tensor, area: Tensor, person: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`part_energy_share`'s result: ``on_chosen / total`` and ``area / person`` where both are
    defined (``area > 0``, ``total > 0``), NaN elsewhere."""
    valid = (area > 0) & (total > 0)
    nan = torch.full_like(total, float("nan"))
    energy_share = torch.where(valid, on_chosen / total.clamp_min(1e-300), nan)
    area_share = torch.where(valid, area / person.clamp_min(1.0), nan)
    return energy_share.float(), area_share.float()


def _part_hits(maps: Tensor, part_masks: Tensor, topk: float | int) -> tuple[Tensor, Tensor]:
    """Each branch's top-k region ``[B, N, H*W]`` (bool) and the parts as ``[B, P, H*W]`` (bool)."""
    _check_branches(maps)
    _check_parts(part_masks, maps.shape[0], tuple(maps.shape[-2:]))
    k = resolve_topk(topk, maps.shape[-2] * maps.shape[-1])
    top = topk_masks(maps, k).flatten(2) & (maps > 0).flatten(2)  # ties at zero are not looked at
    return top, part_masks.to(maps.device).bool().flatten(2)


def parts_covered(maps: Tensor, part_masks: Tensor, topk: float | int = 0.2, min_share: float = 0.1) -> Tensor:
    """The number of distinct parts the union of the branches' top-k regions covers.

    Each branch's top region is its ``k`` highest pixels (``topk``: a fraction of the ``H * W``
    pixels or a count, :func:`cama.losses.resolve_topk`, as for the OAP and
    :class:`~cama.metrics.localization.BranchOverlap`; ties broken by ``torch.topk``) that are
    positive (a map with fewer positive pixels has a smaller region). A part is
    covered when at least ``min_share`` of its own visible pixels lie in the union of the regions
    (a share of the part, not of the region: a small part such as the shoes counts as readily as a
    large one, and a region on the background covers nothing). A part without visible pixels is never
    covered. One branch (``N = 1``) gives the single-branch model's count.

    Args:
        maps: ``[B, N, H, W]``, one map per branch.
        part_masks: ``[B, P, H, W]`` bool (or 0/1) masks of the parts.
        topk: pixels per branch region.
        min_share: share of a part's pixels that must be in the union, in ``(0, 1]``.

    Returns:
        ``[B]`` long, in ``[0, P]``.
    """
    if not 0.0 < min_share <= 1.0:
        raise ValueError(f"min_share must be in (0, 1], got {min_share}")
    top, parts = _part_hits(maps, part_masks, topk)
    union = any_along(top, 1)  # [B, H*W]
    inside = (parts & union[:, None]).sum(-1)  # [B, P]
    size = parts.sum(-1)
    return ((size > 0) & (inside >= min_share * size)).sum(1)


def branch_parts(maps: Tensor, part_masks: Tensor, topk: float | int = 0.2) -> Tensor:
    """The part each branch's top-k region covers most: ``[B, N]`` long part indices.

    The part with the most pixels in the branch's region (:func:`parts_covered` for ``topk``); the
    lowest index among equals; -1 for a region that touches no part.
    """
    top, parts = _part_hits(maps, part_masks, topk)
    counts = torch.einsum("bnx,bpx->bnp", top.float(), parts.float())  # [B, N, P]
    best = counts.max(-1)
    return torch.where(best.values > 0, best.indices, torch.full_like(best.indices, -1))


class PartEvidence(Metric):
    """The energy a map puts on the discriminative parts, and how many parts its branches cover.

    ``update(maps [B, H, W], part_masks [B, P, H, W], selected [B, P], branch_maps=None)``: the
    energy shares are those of ``maps`` (the summed map of a multi-branch model); the parts covered
    are those of the union of ``branch_maps`` ``[B, N, H, W]`` (its branches' maps) when given, else
    of ``maps``' own top region. Rows where the shares are undefined (:func:`part_energy_share`) are
    left out of them; rows without a visible person are left out of the coverage.

    ``compute()`` returns 0-d float32 tensors (0 when nothing was counted):

    * ``person_energy``: mean share of the map's energy on the person (the rest is background);
    * ``evidence_energy``: mean share of the energy *on the person* that lies on the selected parts;
    * ``evidence_area``: mean area share of those parts in the person, over the same rows;
    * ``evidence_ratio``: ``evidence_energy / evidence_area`` (a ratio of means); above 1, the maps
      prefer the selected parts to the rest of the person, whatever they put on the background;
    * ``parts_covered``: mean number of distinct parts covered.

    Args:
        topk: pixels of each branch's top region (:func:`parts_covered`), as a fraction of the map
            or a count of its pixels.
        min_share: share of a part's pixels the union must hold for the part to be covered.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, topk: float | int = 0.2, min_share: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        resolve_topk(topk, 1)  # validates
        if not 0.0 < min_share <= 1.0:
            raise ValueError(f"min_share must be in (0, 1], got {min_share}")
        self.topk = topk
        self.min_share = float(min_share)
        add_sum_states(
            self, "person_sum", "person_total", "energy_sum", "area_sum", "evidence_total", "covered_sum", "covered_total"
        )

    def update(self, maps: Tensor, part_masks: Tensor, selected: Tensor, branch_maps: Tensor | None = None) -> None:
        check_maps(maps)
        _check_parts(part_masks, maps.shape[0], tuple(maps.shape[-2:]))
        whole, on_person_energy, on_chosen, area, person_area = _energy_sums(maps, part_masks, selected)
        # the person's share of the whole map (its "selected parts": every part), then the evidence's
        on_person, _ = _shares(on_person_energy, whole, person_area, person_area)
        shown = ~on_person.isnan()
        self.person_sum += on_person.double().nan_to_num(0.0).sum().to(self.person_sum.device)
        self.person_total += shown.sum().to(self.person_total)
        energy, area = _shares(on_chosen, on_person_energy, area, person_area)
        valid = ~energy.isnan() & ~area.isnan()  # no host sync: the sums take the masked values
        self.energy_sum += torch.where(valid, energy.double(), 0.0).sum().to(self.energy_sum.device)
        self.area_sum += torch.where(valid, area.double(), 0.0).sum().to(self.area_sum.device)
        self.evidence_total += valid.sum().to(self.evidence_total)
        # a row without a visible person covers nothing (0) and is not counted
        regions = branch_maps if branch_maps is not None else maps[:, None]
        covered = parts_covered(regions, part_masks, self.topk, self.min_share)
        person = any_along(part_masks.to(maps.device).bool().flatten(1), 1)
        self.covered_sum += covered.sum().to(self.covered_sum)
        self.covered_total += person.sum().to(self.covered_total)

    def compute(self) -> dict[str, Tensor]:
        return {
            "person_energy": ratio(self.person_sum, self.person_total).float(),
            "evidence_energy": ratio(self.energy_sum, self.evidence_total).float(),
            "evidence_area": ratio(self.area_sum, self.evidence_total).float(),
            "evidence_ratio": ratio(self.energy_sum, self.area_sum).float(),
            "parts_covered": ratio(self.covered_sum, self.covered_total).float(),
        }
