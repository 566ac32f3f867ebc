"""Metrics (torchmetrics Metrics and their functional forms)."""
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
from cama.metrics.parts import PartEvidence, branch_parts, part_energy_share, parts_covered

__all__ += ["PartEvidence", "branch_parts", "part_energy_share", "parts_covered"]
