"""Learning-rate schedules (cama-ram Sec. 4.2)."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["two_phase_lambdas"]


def two_phase_lambdas(
    base_lr: float,
    warmup_epochs: int,
    warmup_start_lr: float,
    step: int,
    gamma: float,
    freeze_backbone_during_warmup: bool,
    cosine_epochs: int | None = None,
) -> tuple[Callable[[int], float], Callable[[int], float]]:
    """Multipliers of ``base_lr`` per epoch for the heads and for the backbone (for ``LambdaLR``).

    Phase 1 (``warmup_epochs`` epochs): the learning rate rises linearly from ``warmup_start_lr``
    to ``base_lr`` (the last warm-up epoch uses ``base_lr``); the backbone gets 0 when
    ``freeze_backbone_during_warmup`` (the paper first fine-tunes the classifiers alone).
    Phase 2: every parameter at ``base_lr * gamma ** ((epoch - warmup_epochs) // step)``, or, with
    ``cosine_epochs`` (the run's last epoch + 1), on a half cosine from ``base_lr`` towards 0 over
    the epochs after the warm-up: ``0.5 * (1 + cos(pi * (epoch - warmup_epochs) / (cosine_epochs -
    warmup_epochs)))`` (SGDR without restarts; ``step`` and ``gamma`` are then unused). A run no
    longer than its warm-up (``--trainer.max_epochs 1`` of a quick try) is all warm-up.
    """
    if warmup_epochs < 0 or step < 1:
        raise ValueError(f"warmup_epochs must be >= 0 and lr_step >= 1, got {warmup_epochs} and {step}")
    start = warmup_start_lr / base_lr

    def head(epoch: int) -> float:
        if epoch < warmup_epochs:
            if warmup_epochs == 1:
                return 1.0
            return start + (1.0 - start) * epoch / (warmup_epochs - 1)
        if cosine_epochs is not None:
            progress = min(1.0, (epoch - warmup_epochs) / max(1, cosine_epochs - warmup_epochs))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return gamma ** ((epoch - warmup_epochs) // step)

    def backbone(epoch: int) -> float:
        if epoch < warmup_epochs and freeze_backbone_during_warmup:
            return 0.0
        return head(epoch)

    return head, backbone
