"""Learning-rate schedules (cama-ram Sec. 4.2; BoT, Luo et al. CVPR-W 2019, Sec. 3.1 Eq. 3)."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence

__all__ = ["check_milestones", "two_phase_lambdas"]


def two_phase_lambdas(
    base_lr: float,
    warmup_epochs: int,
    warmup_start_lr: float,
    step: int,
    gamma: float,
    freeze_backbone_during_warmup: bool,
    cosine_epochs: int | None = None,
    milestones: Sequence[int] | None = None,
) -> tuple[Callable[[int], float], Callable[[int], float]]:
    """Multipliers of ``base_lr`` per epoch for the heads and for the backbone (for ``LambdaLR``).

    Phase 1 (``warmup_epochs`` epochs): the learning rate rises linearly from ``warmup_start_lr``
    to ``base_lr`` (the last warm-up epoch uses ``base_lr``); the backbone gets 0 when
    ``freeze_backbone_during_warmup`` (the paper first fine-tunes the classifiers alone).
    Phase 2: every parameter at ``base_lr * gamma ** ((epoch - warmup_epochs) // step)``, or, with
    ``cosine_epochs`` (the run's last epoch + 1), on a half cosine from ``base_lr`` towards 0 over
    the epochs after the warm-up: ``0.5 * (1 + cos(pi * (epoch - warmup_epochs) / (cosine_epochs -
    warmup_epochs)))`` (SGDR without restarts; ``step`` and ``gamma`` are then unused), or, with
    ``milestones``, ``base_lr * gamma ** m`` where ``m`` counts the milestones ``<= epoch`` (epochs
    counted from 0, from the start of the run; ``step`` is then unused). BoT's schedule (Luo et al.,
    CVPR-W 2019, Sec. 3.1, Eq. 3, read as ``3.5e-4 * t / 10`` for its epochs ``t = 1..10``; the
    printed ``3.5e-5 * t / 10`` would not reach 3.5e-4) is ``base_lr=3.5e-4, warmup_epochs=10,
    warmup_start_lr=3.5e-5, milestones=(40, 70), gamma=0.1``: 3.5e-5, 7e-5, ... 3.5e-4 over the
    epochs 0-9, 3.5e-4 until epoch 39, 3.5e-5 from epoch 40, 3.5e-6 from epoch 70. A run no longer
    than its warm-up (``--trainer.max_epochs 1`` of a quick try) is all warm-up.
    """
    if warmup_epochs < 0 or step < 1:
        raise ValueError(f"warmup_epochs must be >= 0 and lr_step >= 1, got {warmup_epochs} and {step}")
    if cosine_epochs is not None and milestones is not None:
        raise ValueError("give cosine_epochs or milestones, not both")
    if milestones is not None:
        milestones = check_milestones(milestones, warmup_epochs)
    start = warmup_start_lr / base_lr

    def head(epoch: int) -> float:
        if epoch < warmup_epochs:
            if warmup_epochs == 1:
                return 1.0
            return start + (1.0 - start) * epoch / (warmup_epochs - 1)
        if cosine_epochs is not None:
            progress = min(1.0, (epoch - warmup_epochs) / max(1, cosine_epochs - warmup_epochs))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if milestones is not None:
            return gamma ** bisect.bisect_right(milestones, epoch)
        return gamma ** ((epoch - warmup_epochs) // step)

    def backbone(epoch: int) -> float:
        if epoch < warmup_epochs and freeze_backbone_during_warmup:
            return 0.0
        return head(epoch)

    return head, backbone


def check_milestones(milestones: Sequence[int], warmup_epochs: int) -> list[int]:
    """The decay epochs of a multi-step schedule as a list: strictly increasing integers, none
    inside the warm-up (a ``ValueError`` naming the bad value otherwise)."""
    values = list(milestones)
    if not values:
        raise ValueError("lr_milestones is empty: give the epochs of the decays, e.g. [40, 70] (BoT)")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"lr_milestones must be whole epochs, got {value!r} in {values}")
        if value < warmup_epochs:
            raise ValueError(f"lr_milestones must not fall inside the warm-up "
                             f"(epochs 0-{warmup_epochs - 1}), got {value} in {values}")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"lr_milestones must be strictly increasing, got {values}")
    return values
