"""What a map is computed against: explicit targets, decided in one place.

A map of a sample is always a map *against* an embedding: the reference it is ranked or classified
against, or its own. The rule that varies with the method lives here, not in the callers:

* :class:`ProbeAgainst` -- a probe explained against its reference (the top-ranked gallery image,
  the prototype of its predicted class): every method compares the probe with the reference, except
  RAM, which shows the probe's own ``R_q^q`` (cama-ram Sec. 3.4, Fig. 4: the query's map is against
  its own embedding, the gallery image's against the query's);
* :class:`Against` -- every method against the given embedding (a gallery image against its query,
  ``R_g^q``);
* :class:`Own` -- every method against the sample's own embedding;
* :class:`Contrast` -- not one embedding but the difference of two similarity scores,
  ``s(x, negative) - s(x, positive)`` (contrastive ranking maps, :mod:`cama.explain.contrastive`):
  RAM the map of the difference (exact, Eq. 10 is linear in its target), the gradient methods the
  gradient of the difference, Dist-CAM and FAM the difference of the two maps.

:meth:`cama.viz.ModelExplainer.explain` takes any of them (a bare ``[B, D]`` tensor means :class:`Against`).

>>> import torch
>>> reference = torch.zeros(2, 4)
>>> own = torch.ones(2, 4)
>>> ProbeAgainst(reference).embedding("ram", own) is own, ProbeAgainst(reference).embedding("fam", own) is reference
(True, True)
>>> Against(torch.zeros(1, 4)).embedding("ram", own).shape    # one embedding for the whole batch
torch.Size([2, 4])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["Target", "Against", "ProbeAgainst", "Own", "Contrast", "as_target"]

#: the methods that explain a probe against its own embedding (cama-ram Sec. 3.4)
OWN_EMBEDDING_METHODS = ("ram",)


@runtime_checkable
class Target(Protocol):
    """The embedding ``[B, D]`` a method's maps of a batch are computed against."""

    def embedding(self, method: str, own: Tensor) -> Tensor:
        """The target of ``method`` for samples whose own embeddings are ``own`` ``[B, D]``."""
        ...


@dataclass(frozen=True)
class Against:
    """Every method against ``reference`` ``[B, D]`` (or ``[1, D]``, the same for every sample)."""

    reference: Tensor

    def embedding(self, method: str, own: Tensor) -> Tensor:
        return self.reference.expand(own.shape[0], -1) if self.reference.shape[0] == 1 else self.reference


@dataclass(frozen=True)
class ProbeAgainst:
    """A probe against its ``reference`` ``[B, D]``: RAM the probe's own ``R_q^q``, every other
    method against the reference."""

    reference: Tensor

    def embedding(self, method: str, own: Tensor) -> Tensor:
        return own if method in OWN_EMBEDDING_METHODS else Against(self.reference).embedding(method, own)


@dataclass(frozen=True)
class Own:
    """Every method against the sample's own embedding."""

    def embedding(self, method: str, own: Tensor) -> Tensor:
        return own


@dataclass(frozen=True)
class Contrast:
    """``s(x, negative) - s(x, positive)``: the difference of the similarities to two embeddings
    ``[B, D]`` (or ``[1, D]``); either may be None (that term left out), not both.

    Not a :class:`Target`: :class:`cama.viz.ModelExplainer` reads it as a difference (module
    docstring). A probe ``q`` whose false match ``g-`` outranks its true match ``g+``:
    ``Contrast(e_g-, e_g+)`` on ``q``, ``Contrast(e_q, None)`` on ``g-``, ``Contrast(None, e_q)`` on ``g+``.
    """

    negative: Tensor | None = None
    positive: Tensor | None = None

    def __post_init__(self) -> None:
        if self.negative is None and self.positive is None:
            raise ValueError("Contrast needs a negative or a positive embedding, got neither")

    def sides(self, own: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``(negative, positive)`` ``[B, D]`` each (or None) for samples whose own embeddings are ``own``."""
        return tuple(None if side is None else Against(side).embedding("", own)  # type: ignore[return-value]
                     for side in (self.negative, self.positive))


def as_target(target: Target | Tensor) -> Target:
    """A :class:`Target`; a bare ``[B, D]`` tensor is :class:`Against` it."""
    return Against(target) if isinstance(target, Tensor) else target
