"""Metrics (torchmetrics Metrics and their functional forms): re-ID ranking (CMC, mAP, mINP),
retrieval (Recall@K, MAP@R), few-shot accuracy, and the scores of explanation maps (boxes,
energy, Otsu segmentation, branch overlap, Average Drop / Increase in Confidence, max-sensitivity); their
definitions: ``docs/evaluation.md`` and ``docs/map-scores.md``.

Examples (hand-checkable). One query of identity 1 seen by camera 0, three gallery images: identity
2 (camera 1, distance 0.1), identity 1 (camera 1, 0.2) and identity 1 by the query's own camera
(0.05, which the Market-1501 protocol excludes). The true match comes second: rank-1 0, rank-2 1,
AP 1/2:

>>> import torch
>>> from cama.metrics import AverageDropIncrease, evaluate_rank
>>> cmc, m_ap = evaluate_rank(torch.tensor([[0.1, 0.2, 0.05]]), torch.tensor([1]), torch.tensor([2, 1, 1]),
...                           torch.tensor([0]), torch.tensor([1, 1, 0]), max_rank=2)
>>> cmc, m_ap
(tensor([0., 1.]), 0.5)

Average Drop and Increase in Confidence (fam Eq. 21-22) of two probes whose scores ``Y = [0.8, 0.4]``
become ``O = [0.4, 0.5]`` when masked by their maps: drops ``0.4 / 0.8`` and 0 (AD 25%), one
increase in two (IC 50%):

>>> metric = AverageDropIncrease()
>>> metric.update(torch.tensor([0.8, 0.4]), torch.tensor([0.4, 0.5]))
>>> {k: round(float(v), 2) for k, v in metric.compute().items() if k in ("ad", "ic")}
{'ad': 25.0, 'ic': 50.0}
"""

from cama.metrics.reid import ReIDRankMetric, evaluate_rank

__all__ = ["evaluate_rank", "ReIDRankMetric"]
from cama.metrics.faithfulness import AverageDropIncrease, average_drop, increase_in_confidence, mask_images
from cama.metrics.localization import (
    BoxLocalization,
    BranchOverlap,
    CenteredBoxBaseline,
    EnergyPointingGame,
    OtsuSegmentation,
    box_from_map,
    box_iou,
    boxes_from_maps,
    branch_overlap_iou,
    energy_pointing_game,
    max_box_accuracy,
    otsu_segmentation,
    otsu_threshold,
    segmentation_counts,
    segmentation_scores,
    top1_localization_error,
)

__all__ += [
    "AverageDropIncrease",
    "average_drop",
    "increase_in_confidence",
    "mask_images",
    "BoxLocalization",
    "BranchOverlap",
    "CenteredBoxBaseline",
    "EnergyPointingGame",
    "OtsuSegmentation",
    "box_from_map",
    "box_iou",
    "boxes_from_maps",
    "branch_overlap_iou",
    "energy_pointing_game",
    "max_box_accuracy",
    "otsu_segmentation",
    "otsu_threshold",
    "segmentation_counts",
    "segmentation_scores",
    "top1_localization_error",
]
from cama.metrics.fewshot import FewShotAccuracy, episode_accuracies, few_shot_accuracy_ci

__all__ += ["episode_accuracies", "few_shot_accuracy_ci", "FewShotAccuracy"]
from cama.metrics.retrieval import RetrievalMetric, retrieval_metrics

__all__ += ["RetrievalMetric", "retrieval_metrics"]
from cama.metrics.map_scores import MapScores

__all__ += ["MapScores"]
from cama.metrics.sensitivity import MaxSensitivity

__all__ += ["MaxSensitivity"]
from cama.metrics.parts import PartEvidence, branch_parts, part_energy_share, parts_covered

__all__ += ["PartEvidence", "branch_parts", "part_energy_share", "parts_covered"]
