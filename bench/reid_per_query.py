"""Per-query average precision and rank-1 hit of a re-ID model on its data module's test split.

:func:`cama.metrics.evaluate_rank` returns the means only; the paired bootstrap over queries
(:mod:`paired_bootstrap`) needs each query's value. :func:`per_query_rank` takes them from
:func:`cama.metrics.reid_queries.per_query_rank`, the per-query scores the metric averages, under the
same protocol: the query's identity in its own camera and junk gallery images are not ranked, queries
without a true match are left out; ``AP`` = mean over the true matches of ``(i + 1) / rank_i``. Its
mean is the model's test mAP (:func:`test_embeddings` embeds as ``CAMA.forward`` does, the test
step's feature).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from cama.metrics.reid import pairwise_distance
from cama.metrics.reid_queries import CHUNK_BYTES
from cama.metrics.reid_queries import per_query_rank as cama_per_query_rank

__all__ = ["per_query_rank", "test_embeddings", "model_per_query"]


@torch.no_grad()
def test_embeddings(model: torch.nn.Module, dataset: Any, batch_size: int = 128) -> tuple[torch.Tensor, ...]:
    """``(embeddings [N, D], pids [N], camids [N])`` of ``dataset`` in its order."""
    embeddings, pids, camids = [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        embeddings.append(model(batch["image"].to(model.device)).float().cpu())
        pids.append(torch.as_tensor(batch["pid"]).long())
        camids.append(torch.as_tensor(batch["camid"]).long())
    return torch.cat(embeddings), torch.cat(pids), torch.cat(camids)


def per_query_rank(
    distances: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor, q_camids: torch.Tensor,
    g_camids: torch.Tensor, chunk_bytes: int = CHUNK_BYTES,
) -> dict[str, torch.Tensor]:
    """``{"query": positions of the queries with a true match, "ap": their AP, "rank1": 1.0 where
    the first true match is ranked first}`` of a ``[Q, G]`` distance matrix
    (:func:`cama.metrics.reid_queries.per_query_rank`)."""
    scores = cama_per_query_rank(distances, q_pids, g_pids, q_camids, g_camids, chunk_bytes=chunk_bytes)
    return {"query": scores.query, "ap": scores.ap, "rank1": (scores.first_rank == 1).double()}


def model_per_query(model: torch.nn.Module, datamodule: Any) -> dict[str, list[float] | list[int]]:
    """:func:`per_query_rank` of ``model`` on the test split (``datamodule.query_dataset`` against
    ``datamodule.gallery_dataset``), squared Euclidean distances as the test metric ranks; JSON-able."""
    distance = getattr(getattr(model, "test_metric", None), "distance", "euclidean")
    q, q_pids, q_cams = test_embeddings(model, datamodule.query_dataset)
    g, g_pids, g_cams = test_embeddings(model, datamodule.gallery_dataset)
    out = per_query_rank(pairwise_distance(q, g, distance), q_pids, g_pids, q_cams, g_cams)
    return {"query": out["query"].tolist(), "ap": out["ap"].tolist(), "rank1": out["rank1"].tolist()}
