"""Few-shot accuracy over episodes with its 95% confidence interval (``docs/evaluation.md#few-shot``).

The accuracy of an N-way episode is the fraction of its queries classified correctly; the reported
number is the mean over the episodes with the interval ``z * std / sqrt(episodes)``, ``z = 1.96``
(ProtoNet, FEAT, CAN and the FAM paper: "average values of classification accuracy and 95
confidence interval over the 2000 episodes").

**Standard deviation**: by default the *population* standard deviation over the episodes
(``ddof = 0``, ``numpy.std``, as in the ``compute_confidence_interval`` of FEAT / CAN);
``unbiased=True`` gives the sample standard deviation (``ddof = 1``, ``torch.std``). Over 600 or 2,000
episodes they differ by less than 0.1% of the interval.

Accuracies are fractions in [0, 1] (multiply by 100 for the papers' percentages).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from cama.metrics.states import mean_and_interval

__all__ = ["episode_accuracies", "few_shot_accuracy_ci", "FewShotAccuracy"]


def episode_accuracies(preds: Tensor, target: Tensor) -> Tensor:
    """Accuracy of each episode: ``[E]`` (float64).

    Args:
        preds: predicted episode classes ``[Q]`` (one episode) or ``[E, Q]`` (integers), or logits
            ``[Q, N]`` / ``[E, Q, N]`` (floating; the arg-max is taken over the last dimension).
        target: true episode classes ``[Q]`` or ``[E, Q]``.
    """
    if preds.is_floating_point():
        preds = preds.argmax(dim=-1)
    if preds.shape != target.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} do not match")
    if preds.ndim == 1:
        preds, target = preds[None], target[None]
    if preds.ndim != 2 or preds.shape[1] == 0:
        raise ValueError(f"expected [Q] or [E, Q] predictions with Q >= 1, got {tuple(preds.shape)}")
    return (preds == target).to(torch.float64).mean(dim=1)


def few_shot_accuracy_ci(
    per_episode_accuracies: Tensor | Any, z: float = 1.96, unbiased: bool = False
) -> tuple[Tensor, Tensor]:
    """``(mean, z * std / sqrt(E))`` of the per-episode accuracies ``[E]`` (float64 scalars).

    ``std`` is the population standard deviation unless ``unbiased`` (module docstring); a single
    episode gives an interval of 0.
    """
    acc = torch.as_tensor(per_episode_accuracies, dtype=torch.float64).reshape(-1)
    if acc.numel() == 0:
        raise ValueError("few_shot_accuracy_ci needs at least one episode")
    n = torch.tensor(acc.numel())
    mean, ci, _ = mean_and_interval(acc.sum(), acc.square().sum(), n, z, unbiased)
    return mean, ci


class FewShotAccuracy(Metric):
    """Mean episode accuracy and its ``z * std / sqrt(episodes)`` interval, correct under DDP.

    States are sums (``sum_acc``, ``sum_sq_acc``, ``num_episodes``, reduced by ``sum``), so every
    process may run different episodes. ``update(preds, target)`` takes one episode (``[Q]``
    predictions or ``[Q, N]`` logits) or a stack of episodes (``[E, Q]`` / ``[E, Q, N]``).
    ``compute()`` returns ``{"acc", "acc_ci95", "acc_std", "episodes"}`` (NaN before any update).

    Args:
        z: the normal quantile of the interval (1.96 for 95%).
        unbiased: sample instead of population standard deviation (module docstring).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    sum_acc: Tensor
    sum_sq_acc: Tensor
    num_episodes: Tensor

    def __init__(self, z: float = 1.96, unbiased: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.z = float(z)
        self.unbiased = bool(unbiased)
        self.add_state("sum_acc", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_sq_acc", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_episodes", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def result_names(self) -> tuple[str, ...]:
        """The keys of ``compute()``."""
        return ("acc", "acc_ci95", "acc_std", "episodes")

    def update(self, preds: Tensor, target: Tensor) -> None:
        acc = episode_accuracies(preds, target).to(self.sum_acc.device)
        self.sum_acc += acc.sum()
        self.sum_sq_acc += acc.square().sum()
        self.num_episodes += acc.numel()

    def compute(self) -> dict[str, Tensor]:
        if int(self.num_episodes) == 0:
            nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.sum_acc.device)
            return {"acc": nan, "acc_ci95": nan, "acc_std": nan, "episodes": self.num_episodes.clone()}
        mean, ci, std = mean_and_interval(
            self.sum_acc, self.sum_sq_acc, self.num_episodes, self.z, self.unbiased
        )
        return {"acc": mean, "acc_ci95": ci, "acc_std": std, "episodes": self.num_episodes.clone()}
