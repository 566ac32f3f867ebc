"""Metrics (torchmetrics Metrics and their functional forms)."""
from cama.metrics.reid import ReIDRankMetric, evaluate_rank

__all__ = ["evaluate_rank", "ReIDRankMetric"]
