"""``FaithfulnessBudget``: on which scored epochs the perturbed forwards of a callback run.

AD / IC (fam Eq. 21-22) and RISE's deletion / insertion curves score *perturbed* queries, each a forward
of the model: a fixed number per epoch (:meth:`cama.map_scoring.ProbeScorer.perturbed_forwards`), however
small the validation. On a held-out validation split of a few hundred images that is a large share of
the validation's own forwards (one per image): 316, with 64 AD / IC queries and three methods, against
the 743 images of CUHK03's held-out validation. The budget
spreads them over the epochs: they run on the first scored epoch and then on every ``period``-th, the
period the smallest whole number with

    forwards / period <= budget * validation images,

so that averaged over the run they cost at most ``budget`` of the validation's forwards (the maps
themselves, the localization scores and the pictures run every scored epoch). The period is fixed at the
first scored epoch, from that epoch's sizes, and kept in the ``state_dict`` with the count of scored
epochs, so a resumed run keeps the rhythm. ``budget=None``: every scored epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["FaithfulnessBudget"]


class FaithfulnessBudget:
    """Whether a scored epoch runs the perturbed forwards (module docstring).

    Args:
        budget: the largest average share of the validation's forwards they may take (> 0); None: no
            limit, every scored epoch.
    """

    def __init__(self, budget: float | None) -> None:
        if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
            raise ValueError(
                f"faithfulness_budget must be a number > 0, or None (every epoch), got {budget!r}"
            )
        self.budget = None if budget is None else float(budget)
        self.period = 0  # 0: not fixed yet (fixed at the first scored epoch)
        self.epochs = 0  # scored epochs counted

    def period_for(self, forwards: int, validation_images: int) -> int:
        """The smallest period with ``forwards / period <= budget * validation_images`` (1 without a
        budget)."""
        if self.budget is None or forwards <= 0:
            return 1
        return max(1, math.ceil(forwards / (self.budget * max(1, validation_images)) - 1e-9))

    def due(self, forwards: int, validation_images: int, say: Callable[[str], None] | None = None) -> bool:
        """Count one scored epoch; whether it runs its ``forwards`` perturbed forwards. The first call
        fixes the period from ``validation_images`` (the validation's forwards) and, when it is above
        1, tells ``say`` why."""
        if self.period == 0:
            self.period = self.period_for(forwards, validation_images)
            if self.period > 1 and say is not None:
                share = forwards / max(1, validation_images)
                say(
                    f"AD / IC and the deletion / insertion curves cost {forwards} forwards of perturbed "
                    f"queries, "
                    f"{share:.0%} of this validation's {validation_images} images: they run once every "
                    f"{self.period} scored epochs (the first included), {share / self.period:.1%} on "
                    f"average, "
                    f"within faithfulness_budget={self.budget:g} (null: every epoch)"
                )
        due = self.epochs % self.period == 0
        self.epochs += 1
        return due

    def state_dict(self) -> dict[str, Any]:
        return {"faithfulness_period": self.period, "faithfulness_epochs": self.epochs}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.period = int(state_dict.get("faithfulness_period", 0))
        self.epochs = int(state_dict.get("faithfulness_epochs", 0))
