"""Input checks of the re-ID ranking metric (:mod:`cama.metrics.reid`): tensors, ids, and the
error raised when no query has a true match."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from cama.metrics.ranking import is_junk

_NO_VALID_QUERY_MSG = (
    "Re-ID evaluation: no query has a valid true match in the gallery (every query would be "
    "skipped), so CMC/mAP are undefined. Likely causes: (1) all query and gallery images come from "
    "the same camera, so every true match is removed as a same-identity same-camera image; "
    "(2) the query identities are missing from the gallery (wrong split, or the gallery holds only "
    "distractors pid 0 / junk pid -1); (3) pids and camids were swapped or wrongly parsed from the "
    "file names (e.g. all parsed as -1 or 0). Got {nq} queries, {ng} gallery images, "
    "{nqid} query identities of which {nshared} appear in the gallery, "
    "query cameras {qcams}, gallery cameras {gcams}."
)


def as_tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    try:
        return torch.as_tensor(x)
    except Exception as err:  # pragma: no cover - message only
        raise TypeError(f"{name} must be a tensor, a numpy array or a sequence, got {type(x)}") from err


def as_ids(x: Any, name: str, n: int, device: torch.device) -> Tensor:
    t = as_tensor(x, name)
    if t.dim() != 1 or t.numel() != n:
        raise ValueError(f"{name} must be 1-D with {n} entries, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must hold integers, got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.long)


def summary(t: Tensor, limit: int = 8) -> str:
    u = torch.unique(t).tolist()
    return str(u) if len(u) <= limit else f"{u[:limit]}... ({len(u)} values)"


def no_valid_query_error(q_pids: Tensor, g_pids: Tensor, q_camids: Tensor, g_camids: Tensor) -> ValueError:
    qid = torch.unique(q_pids)
    shared = int(torch.isin(qid, g_pids[~is_junk(g_pids)]).sum())
    return ValueError(
        _NO_VALID_QUERY_MSG.format(
            nq=q_pids.numel(),
            ng=g_pids.numel(),
            nqid=qid.numel(),
            nshared=shared,
            qcams=summary(q_camids),
            gcams=summary(g_camids),
        )
    )
