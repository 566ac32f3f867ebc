"""Person re-ID ranking metrics: CMC, mAP and mINP under the Market-1501 single-query protocol.

Protocol (``DESIGN.md``, "Re-ID ranking"), identical to torchreid's ``eval_market1501``:

* for each query, gallery images with the query's identity *and* camera are removed, and so are
  junk images (gallery pid ``-1``); distractors (pid ``0``) stay, as false matches;
* true matches are the remaining gallery images of the query's identity; a query without any is
  skipped (it counts neither in CMC nor in mAP);
* ``cmc[k - 1]`` = fraction of valid queries whose first true match is at rank ``<= k``;
* ``AP`` = mean over the true matches of the precision at their rank
  (``(i + 1) / rank_i`` for the i-th match, 0-based), ``mAP`` its mean over valid queries;
* ``INP`` (fast-reid) = ``num_matches / rank_of_the_last_match``, ``mINP`` its mean.

Ranks are counted among the kept gallery images. **Ties** are broken exactly like a stable argsort
of the query's row: among equal distances the gallery image with the smaller gallery index comes
first (torchreid uses numpy's default quicksort, whose order of equal distances is unspecified;
Zheng's MATLAB code uses a stable sort).

How it is fast without sorting rows: the rank of a true match is 1 + the number of kept gallery
images ordered before it, so only the few true matches of each query (their distances are the
"thresholds") need sorting.  Every distance of the row is mapped by a monotone function (an affine
map of the value clamped to ``_NUM_BINS`` uniform bins spanning the query's thresholds) to a bin,
and a ``bincount`` per row counts the images per bin.  A bin that holds no threshold lies strictly
between two consecutive thresholds, so its images are ordered exactly; the few images falling in a
bin that holds a threshold (the true matches themselves among them) are compared one by one with
the thresholds of their bin, ties by gallery index.  Same-camera images of the query's identity are
then subtracted, and a cumulative sum gives the rank of every match.  Cost: a few passes over each
row (no sort), in chunks of queries whose temporaries stay within ``chunk_bytes``.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from cama.explain.precision import at_least_float32
from cama.metrics.distances import pairwise_distance
from cama.metrics.ranking import EmbeddingSet, first_per_index

__all__ = ["evaluate_rank", "pairwise_distance", "ReIDRankMetric"]

# Bins per query row of the monotone histogram (see the module docstring), a power of two.  More
# bins leave fewer images to compare one by one but cost more per row; 1024 is the sweet spot for
# Market-sized galleries.  Rows x bins must stay within 2**23 (exact float32 bin offsets).
_NUM_BINS = 1024
_MAX_BIN_SLOTS = 1 << 23
# Default memory budget for the temporaries of one chunk of queries.
_CHUNK_BYTES = 256 * 1024 * 1024

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


def _as_tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    try:
        return torch.as_tensor(x)
    except Exception as err:  # pragma: no cover - message only
        raise TypeError(f"{name} must be a tensor, a numpy array or a sequence, got {type(x)}") from err


def _as_ids(x: Any, name: str, n: int, device: torch.device) -> Tensor:
    t = _as_tensor(x, name)
    if t.dim() != 1 or t.numel() != n:
        raise ValueError(f"{name} must be 1-D with {n} entries, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must hold integers, got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.long)


def _summary(t: Tensor, limit: int = 8) -> str:
    u = torch.unique(t).tolist()
    return str(u) if len(u) <= limit else f"{u[:limit]}... ({len(u)} values)"


class _Gallery:
    """Gallery-side index: images grouped by identity and by (identity, camera); junk columns."""

    def __init__(self, g_pids: Tensor, g_camids: Tensor, q_camids: Tensor):
        self.pids, self.cams = g_pids, g_camids
        self.size = int(g_pids.numel())
        junk = g_pids == -1
        self.junk_cols: Tensor | None = junk.nonzero().squeeze(1) if bool(junk.any()) else None
        # identity groups; stable order => gallery index ascending inside a group
        self.order = torch.argsort(g_pids, stable=True)
        self.sorted_pids = g_pids[self.order]
        # (identity, camera) groups, to count the same-camera images of the query's identity
        cams_all = torch.cat([g_camids, q_camids])
        self.cam_min = int(cams_all.min()) if cams_all.numel() else 0
        self.cam_span = (int(cams_all.max()) - self.cam_min + 1) if cams_all.numel() else 1
        self.sorted_keys = torch.sort(self._key(g_pids, g_camids)).values

    def _key(self, pids: Tensor, cams: Tensor) -> Tensor:
        return pids * self.cam_span + (cams - self.cam_min)

    def same_id_range(self, q_pids: Tensor) -> tuple[Tensor, Tensor]:
        start = torch.searchsorted(self.sorted_pids, q_pids)
        end = torch.searchsorted(self.sorted_pids, q_pids, right=True)
        return start, end - start

    def num_matches(self, q_pids: Tensor, q_camids: Tensor) -> tuple[Tensor, Tensor]:
        """Per query: (number of true matches, number of same-identity gallery images)."""
        _, n_same = self.same_id_range(q_pids)
        keys = self._key(q_pids, q_camids)
        n_same_cam = torch.searchsorted(self.sorted_keys, keys, right=True)
        n_same_cam -= torch.searchsorted(self.sorted_keys, keys)
        # a junk query (pid -1) never has a true match
        n_match = torch.where(q_pids == -1, torch.zeros_like(n_same), n_same - n_same_cam)
        return n_match, n_same


class _Workspace:
    """Flat buffers reused from chunk to chunk: fresh large allocations cost page faults."""

    def __init__(self) -> None:
        self._bufs: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> Tensor:
        n = shape[0] * shape[1]
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(n, dtype=dtype, device=device)
            self._bufs[name] = buf
        return buf[:n].view(shape)


class _RankAccumulator:
    """Accumulates CMC counts, AP and INP sums over chunks of queries against one gallery."""

    def __init__(self, gallery: _Gallery, max_rank: int, device: torch.device):
        self.gallery = gallery
        self.max_rank = max_rank
        self.cmc_counts = torch.zeros(max_rank, dtype=torch.long, device=device)
        self.ap_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.inp_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.num_valid = 0
        self.workspace = _Workspace()

    def add(self, dist: Tensor, q_pids: Tensor, q_camids: Tensor, max_bytes: int) -> None:
        """``dist`` [C, G]; every query of the chunk must have at least one true match."""
        ranks, num_m = _match_ranks(dist, q_pids, q_camids, self.gallery, self.workspace, max_bytes)
        c, mmax = ranks.shape
        first = ranks[:, 0].clamp(max=self.max_rank + 1)
        hist = torch.bincount(first, minlength=self.max_rank + 2)[1 : self.max_rank + 1]
        self.cmc_counts += hist.cumsum(0)
        jvalid = torch.arange(mmax, device=ranks.device) < num_m[:, None]
        prec = torch.arange(1, mmax + 1, device=ranks.device, dtype=torch.float64) / ranks.double()
        ap = torch.where(jvalid, prec, 0.0).sum(1) / num_m.double()  # padding entries are garbage
        last = ranks.gather(1, (num_m - 1)[:, None]).squeeze(1)
        inp = num_m.double() / last.double()
        self.ap_sum += ap.sum()
        self.inp_sum += inp.sum()
        self.num_valid += c

    def result(self) -> tuple[Tensor, Tensor, Tensor]:
        n = self.num_valid
        cmc = (self.cmc_counts.double() / n).float()
        return cmc, self.ap_sum / n, self.inp_sum / n


def _check_no_nan(dist: Tensor) -> None:
    if not dist.is_floating_point():
        return
    sums = dist.sum(1)  # one fast pass; NaN rows (and rows with both +inf and -inf) give NaN
    suspects = torch.isnan(sums).nonzero().squeeze(1)
    if suspects.numel() and bool(torch.isnan(dist.index_select(0, suspects)).any()):
        raise ValueError("distmat contains NaN")


def _match_ranks(
    dist: Tensor, q_pids: Tensor, q_camids: Tensor, gal: _Gallery, ws: _Workspace, max_bytes: int
) -> tuple[Tensor, Tensor]:
    """1-based ranks (among kept gallery images) of every true match of each query, ascending.

    Returns ``ranks`` [C, Mmax] (entries ``j >= num_matches[i]`` are padding) and ``num_matches`` [C].
    """
    device = dist.device
    c, g = dist.shape
    nb = _NUM_BINS
    if c * nb > _MAX_BIN_SLOTS:
        raise ValueError(f"chunk of {c} queries too large (max {_MAX_BIN_SLOTS // nb})")
    _check_no_nan(dist)

    # -- candidates: gallery images of the query's identity (gallery index ascending) -----------
    start, n_same = gal.same_id_range(q_pids)
    nmax = int(n_same.max())
    ar = torch.arange(nmax, device=device)
    in_group = ar < n_same[:, None]
    gidx = gal.order[(start[:, None] + ar).clamp_(max=gal.size - 1)]
    same_cam = gal.cams[gidx] == q_camids[:, None]
    is_match = in_group & ~same_cam
    removed = in_group & same_cam
    num_m = is_match.sum(1)
    mmax = int(num_m.max())
    vals = dist.gather(1, gidx)

    # -- thresholds: the true matches sorted by (distance, gallery index), matches first --------
    perm = torch.sort(vals, dim=1, stable=True).indices
    not_match = (~is_match.gather(1, perm)).to(torch.uint8)
    perm = perm.gather(1, torch.sort(not_match, dim=1, stable=True).indices)[:, :mmax]
    thr = vals.gather(1, perm)  # [C, Mmax]
    thr_idx = gidx.gather(1, perm)
    jvalid = torch.arange(mmax, device=device) < num_m[:, None]

    # -- per-row monotone binning: bins span [first, last] threshold ----------------------------
    tf = thr.float()
    fin = jvalid & torch.isfinite(tf)
    inf = torch.tensor(float("inf"), device=device)
    lo = torch.where(fin, tf, inf).amin(1)
    hi = torch.where(fin, tf, -inf).amax(1)
    degenerate = ~(hi > lo)
    if bool(degenerate.any()):  # a single distinct threshold: span up to the row maximum instead
        rows = degenerate.nonzero().squeeze(1)
        hi = hi.clone()
        hi[rows] = dist.index_select(0, rows).float().amax(1)
    inv = (nb - 4) / (hi - lo)
    bias = 1.5 - lo * inv
    # still degenerate (or out of float32 range): one bin for the whole row
    bad = ~(torch.isfinite(inv) & (inv > 0) & torch.isfinite(bias))
    inv = torch.where(bad, torch.zeros_like(inv), inv)[:, None]
    bias = torch.where(bad, torch.full_like(bias, 1.5), bias)[:, None]
    off = (torch.arange(c, device=device, dtype=torch.float32) * nb)[:, None]
    any_bad = bool(bad.any())

    def binf(x: Tensor, u: Tensor, out: Tensor) -> Tensor:
        """Global bin (row * nb + bin) of every entry of x [C, n]: monotone non-decreasing in x
        within a row, the same ops for gallery entries and thresholds."""
        if x.dtype == torch.float32:
            torch.mul(x, inv, out=u)
        else:
            u.copy_(x).mul_(inv)
        u.add_(bias)
        if any_bad:  # inv == 0 rows: inf * 0 = nan -> the row's single bin
            u.nan_to_num_(nan=1.5)
        u.clamp_(0, nb - 1).add_(off)
        return out.copy_(u)

    tb_u = torch.empty(c, mmax, device=device)
    tb = binf(thr, tb_u, torch.empty(c, mmax, dtype=torch.int32, device=device))
    tb = tb.long()
    tb_valid = tb[jvalid]  # global bins (row * nb + bin) of the real thresholds
    cnt_bin = torch.bincount(tb_valid, minlength=c * nb)  # thresholds per bin
    amb = cnt_bin > 0  # bins holding a threshold: their entries are compared one by one
    lower = cnt_bin.cumsum(0).sub_(cnt_bin)  # thresholds in lower bins, earlier rows included
    row_first = num_m.cumsum(0).sub_(num_m)  # thresholds of earlier rows
    row_start = (torch.arange(c, device=device) * nb)[:, None]
    tb_safe = torch.where(jvalid, tb, row_start)
    shift = nb.bit_length() - 1  # nb is a power of two
    kmax = int(cnt_bin.max())
    karange = torch.arange(kmax, device=device)
    # rank of threshold j - 1 = entries of bins without thresholds below its bin (`before`)
    #                         + entries of bins with thresholds ordered before it (cumsum of `hist_p`)
    before = torch.zeros(c, mmax, dtype=torch.long, device=device)
    hist_p = torch.zeros(c, mmax + 1, dtype=torch.long, device=device)
    hist_flat = hist_p.view(-1)

    def add_positions(x: Tensor, cols: Tensor | None, sign: int) -> None:
        """Counts (with ``sign``) the entries of x [C, n] ordered before each threshold of their row."""
        n = x.shape[1]
        u = ws.get("u", (c, n), torch.float32, device)
        idx = binf(x, u, ws.get("idx", (c, n), torch.int32, device)).view(-1)
        per_bin = torch.bincount(idx, minlength=c * nb).index_fill_(0, tb_valid, 0)
        cum = torch.cat([per_bin.new_zeros(1), per_bin.cumsum(0)])  # cum[k] = entries in bins < k
        before.add_(cum[tb_safe] - cum[row_start], alpha=sign)
        # entries in a bin holding thresholds: p = thresholds of the row ordered before-or-at the
        # entry (by distance, then gallery index); the entry precedes threshold j iff p <= j
        mask = torch.index_select(amb, 0, idx, out=ws.get("mask", (c, n), torch.bool, device).view(-1))
        pos = mask.nonzero().squeeze(1)
        if not pos.numel():
            return
        flat = x.reshape(-1)
        thr_flat, thr_idx_flat = thr.view(-1), thr_idx.view(-1)
        step = max(1, max_bytes // (64 * kmax))
        for s0 in range(0, pos.numel(), step):
            p = pos[s0 : s0 + step]
            gbin = idx.index_select(0, p).long()  # row * nb + bin
            r = gbin >> shift
            col = p - r * n
            if cols is not None:
                col = cols.index_select(0, col)
            v = flat.index_select(0, p)
            # thresholds of the row in lower bins, and in this bin
            base = lower.index_select(0, gbin) - row_first.index_select(0, r)
            cnt = cnt_bin.index_select(0, gbin)
            if kmax == 1:
                t = r * mmax + base.clamp(max=mmax - 1)
                tv, ti = thr_flat.index_select(0, t), thr_idx_flat.index_select(0, t)
                le = ((tv < v) | ((tv == v) & (ti <= col))) & (cnt > 0)
                after = base + le
            else:
                t = ((r * mmax)[:, None] + (base[:, None] + karange).clamp_(max=mmax - 1)).view(-1)
                tv = thr_flat.index_select(0, t).view(-1, kmax)
                ti = thr_idx_flat.index_select(0, t).view(-1, kmax)
                v, col = v[:, None], col[:, None]
                le = ((tv < v) | ((tv == v) & (ti <= col))) & (karange < cnt[:, None])
                after = base + le.sum(1)
            hist_flat.add_(torch.bincount(r * (mmax + 1) + after, minlength=hist_flat.numel()), alpha=sign)

    add_positions(dist, None, 1)
    if gal.junk_cols is not None:  # junk images are not ranked
        add_positions(dist.index_select(1, gal.junk_cols), gal.junk_cols, -1)

    # -- same identity, same camera: not ranked either (few: exact comparisons) -----------------
    rr, cc = removed.nonzero(as_tuple=True)
    if rr.numel():
        rv = vals[rr, cc][:, None]
        tv = thr[rr]
        le = ((tv < rv) | ((tv == rv) & (thr_idx[rr] <= gidx[rr, cc][:, None]))) & jvalid[rr]
        hist_flat.index_add_(0, rr * (mmax + 1) + le.sum(1), torch.full_like(rr, -1))

    ranks = hist_p.cumsum(1)[:, :mmax].add_(before).add_(1)
    return ranks, num_m


# ----------------------------------------------------------------------------------------------
# chunked driver shared by the functional form and the Metric
# ----------------------------------------------------------------------------------------------


def _no_valid_query_error(q_pids: Tensor, g_pids: Tensor, q_camids: Tensor, g_camids: Tensor) -> ValueError:
    qid = torch.unique(q_pids)
    shared = int(torch.isin(qid, g_pids[g_pids != -1]).sum())
    return ValueError(
        _NO_VALID_QUERY_MSG.format(
            nq=q_pids.numel(),
            ng=g_pids.numel(),
            nqid=qid.numel(),
            nshared=shared,
            qcams=_summary(q_camids),
            gcams=_summary(g_camids),
        )
    )


def _query_chunks(
    valid: Tensor, n_same: Tensor, bytes_per_row: int, chunk_size: int | None, chunk_bytes: int
) -> Iterator[Tensor]:
    """Consecutive runs of the valid query indices, each within the memory budget."""
    n = valid.numel()
    max_rows = _MAX_BIN_SLOTS // _NUM_BINS
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        base = min(chunk_size, max_rows)
    else:
        base = min(max_rows, max(1, chunk_bytes // max(1, bytes_per_row)))
    n_same = n_same.cpu()
    i = 0
    while i < n:
        rows = min(base, n - i)
        if chunk_size is None:  # identity groups are padded to the chunk's largest one
            while True:
                fit = max(1, chunk_bytes // (bytes_per_row + 96 * int(n_same[i : i + rows].max())))
                if fit >= rows:
                    break
                rows = fit
        yield valid[i : i + rows]
        i += rows


def _evaluate(
    block_fn,
    q_pids: Tensor,
    g_pids: Tensor,
    q_camids: Tensor,
    g_camids: Tensor,
    max_rank: int,
    bytes_per_row: int,
    chunk_size: int | None,
    chunk_bytes: int,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:
    """``block_fn(rows)`` returns the ``[len(rows), G]`` distances of queries ``rows`` to the gallery."""
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    gal = _Gallery(g_pids, g_camids, q_camids)
    num_m, n_same = gal.num_matches(q_pids, q_camids)
    valid = (num_m > 0).nonzero().squeeze(1)
    if valid.numel() == 0:
        raise _no_valid_query_error(q_pids, g_pids, q_camids, g_camids)
    acc = _RankAccumulator(gal, max_rank, device)
    for rows in _query_chunks(valid, n_same[valid], bytes_per_row, chunk_size, chunk_bytes):
        acc.add(block_fn(rows), q_pids[rows], q_camids[rows], chunk_bytes)
    return acc.result()


def evaluate_rank(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    return_minp: bool = False,
    *,
    chunk_size: int | None = None,
    chunk_bytes: int = _CHUNK_BYTES,
) -> tuple[Tensor, float] | tuple[Tensor, float, float]:
    """CMC and mAP (and mINP) of a query-gallery distance matrix, Market-1501 single-query protocol.

    Args:
        distmat: ``[Q, G]`` distances, smaller = more similar (tensor or numpy array, any real
            dtype, on any device; it is not copied as a whole).  NaN is rejected.
        q_pids, g_pids, q_camids, g_camids: integer identities / camera ids, ``[Q]`` and ``[G]``.
            Gallery pid ``-1`` = junk (ignored), pid ``0`` = distractor (a false match).
        max_rank: length of the returned CMC curve (kept even when the gallery is shorter: the
            curve then stays at its last value, where torchreid would truncate it).
        return_minp: also return mINP.
        chunk_size: queries per chunk (default: chosen from ``chunk_bytes``); results do not
            depend on it.
        chunk_bytes: memory budget for the temporaries of one chunk.

    Returns:
        ``(cmc, mAP)`` or ``(cmc, mAP, mINP)``: ``cmc`` a float32 CPU tensor of ``max_rank`` fractions,
        ``mAP``/``mINP`` python floats in [0, 1], averaged over the queries that have a true match.

    Ties between equal distances are broken as a stable argsort of the row does (smaller gallery
    index first).  Raises ``ValueError`` (naming the likely causes) when no query has a true match.
    """
    d = _as_tensor(distmat, "distmat")
    if d.dim() != 2:
        raise ValueError(f"distmat must be [num_query, num_gallery], got shape {tuple(d.shape)}")
    if d.is_complex():
        raise ValueError("distmat must be real")
    if d.dtype == torch.bool:
        d = d.to(torch.uint8)
    nq, ng = d.shape
    device = d.device
    qp = _as_ids(q_pids, "q_pids", nq, device)
    gp = _as_ids(g_pids, "g_pids", ng, device)
    qc = _as_ids(q_camids, "q_camids", nq, device)
    gc = _as_ids(g_camids, "g_camids", ng, device)

    # temporaries per query row: float32 + int32 + bool per gallery entry, a copy of the row when
    # the chunk's rows are not contiguous, the junk columns
    esize = d.element_size()
    bytes_per_row = ng * (9 + esize) + int((gp == -1).sum()) * esize

    def block(rows: Tensor) -> Tensor:
        r0, n = int(rows[0]), rows.numel()
        return d[r0 : r0 + n] if int(rows[-1]) - r0 == n - 1 else d.index_select(0, rows)

    cmc, m_ap, m_inp = _evaluate(
        block, qp, gp, qc, gc, max_rank, bytes_per_row, chunk_size, chunk_bytes, device
    )
    cmc = cmc.cpu()
    if return_minp:
        return cmc, float(m_ap), float(m_inp)
    return cmc, float(m_ap)


# ----------------------------------------------------------------------------------------------
# torchmetrics Metric
# ----------------------------------------------------------------------------------------------


def _branch_key(i: int) -> str:
    return "mAP_branches_1" if i == 1 else f"mAP_branches_1-{i}"


class ReIDRankMetric(Metric):
    """CMC / mAP / mINP of re-ID embeddings, Market-1501 single-query protocol (see ``evaluate_rank``).

    ``update(embeddings [B, D], pids [B], camids [B], is_query [B] bool, indices [B] long)`` collects
    query and gallery samples; ``indices`` are dataset indices, unique among the queries and among the
    gallery samples: ``compute()`` keeps one sample per (query or gallery, index) (the first) and
    orders samples by index, so the samples that DistributedSampler repeats to pad the last batch
    are dropped and 1 and N processes give the same numbers (ties included).

    ``compute()`` returns 0-d float tensors: ``"mAP"``, ``"mINP"``, ``"rank{k}"`` for each ``k`` in
    ``ranks`` and, when ``prefix_dims=[d1, d2, ...]`` gives the cumulative dimensions of the branches
    of a concatenated embedding, ``"mAP_branches_1"`` (features ``[:, :d1]``), ``"mAP_branches_1-2"``
    (``[:, :d2]``), ... Distances (``"euclidean"``: squared Euclidean, same ranking; ``"cosine"``:
    ``1 - cos``) are computed in chunks of queries (``chunk_bytes`` of temporaries, or ``chunk_size``
    queries), never as a whole matrix; gallery samples with pid ``-1`` (junk) are dropped first.

    Call ``update`` per batch and ``compute`` once per epoch: ``forward`` would rank each batch
    alone, which usually has no valid query (``compute`` raises ``ValueError`` then).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    embeddings: list[Tensor]
    pids: list[Tensor]
    camids: list[Tensor]
    is_query: list[Tensor]
    indices: list[Tensor]

    def __init__(
        self,
        max_rank: int = 50,
        ranks: Sequence[int] = (1, 5, 10),
        prefix_dims: Sequence[int] | None = None,
        distance: str = "euclidean",
        chunk_bytes: int = _CHUNK_BYTES,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_rank < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        ranks = tuple(int(k) for k in ranks)
        if any(k < 1 or k > max_rank for k in ranks):
            raise ValueError(f"ranks must lie in [1, max_rank={max_rank}], got {ranks}")
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
        if prefix_dims is not None:
            prefix_dims = [int(p) for p in prefix_dims]
            if any(p < 1 for p in prefix_dims) or any(b <= a for a, b in zip(prefix_dims, prefix_dims[1:])):
                raise ValueError(f"prefix_dims must be increasing positive ints, got {prefix_dims}")
        self.max_rank = int(max_rank)
        self.ranks = ranks
        self.prefix_dims = prefix_dims
        self.distance = distance
        self.chunk_bytes = int(chunk_bytes)
        self.chunk_size = chunk_size  # queries per distance chunk; None = from chunk_bytes
        for name in ("embeddings", "pids", "camids", "is_query", "indices"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self, embeddings: Tensor, pids: Tensor, camids: Tensor, is_query: Tensor, indices: Tensor
    ) -> None:
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be [B, D], got shape {tuple(embeddings.shape)}")
        n = embeddings.shape[0]
        for name, t in (("pids", pids), ("camids", camids), ("is_query", is_query), ("indices", indices)):
            if t.dim() != 1 or t.numel() != n:
                raise ValueError(f"{name} must be [B] with B={n}, got shape {tuple(t.shape)}")
        # at least float32; float64 stays float64 (finite values beyond the float32 range are
        # scaled, not cast to inf, when the distances are computed)
        self.embeddings.append(at_least_float32(embeddings.detach()))
        self.pids.append(pids.detach().long())
        self.camids.append(camids.detach().long())
        self.is_query.append(is_query.detach().long())  # long: all_gather of bool is not portable
        self.indices.append(indices.detach().long())

    @property
    def result_names(self) -> tuple[str, ...]:
        """The keys of ``compute()``."""
        names = ["mAP", "mINP", *(f"rank{k}" for k in self.ranks)]
        names += [_branch_key(i) for i in range(1, len(self.prefix_dims or ()) + 1)]
        return tuple(names)

    def _gathered(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        cat = lambda xs: torch.cat(xs) if isinstance(xs, list) else xs  # noqa: E731
        if isinstance(self.indices, list) and not self.indices:
            raise ValueError("ReIDRankMetric.compute() called before any update()")
        emb, pids, cams = cat(self.embeddings), cat(self.pids), cat(self.camids)
        isq, idx = cat(self.is_query), cat(self.indices)
        # query and gallery may number their samples independently (two dataloaders)
        first = first_per_index(idx, isq)
        return emb[first], pids[first], cams[first], isq[first].bool(), idx[first]

    def embedding_set(self) -> EmbeddingSet:
        """This epoch's embeddings of every process, one per (query or gallery, dataset index).

        A collective when distributed (the states are gathered): call it on every process.
        """
        with self.sync_context(should_sync=True, should_unsync=True):
            if isinstance(self.indices, list) and not self.indices:
                empty = torch.zeros(0, dtype=torch.long, device=self.device)
                return EmbeddingSet(torch.zeros(0, 0, device=self.device), empty, empty, empty,
                                    empty.bool(), self.distance)
            emb, pids, cams, isq, idx = self._gathered()
        return EmbeddingSet(emb, pids, idx, cams, isq, self.distance)

    def _rank_features(self, qf: Tensor, gf: Tensor, qp: Tensor, gp: Tensor, qc: Tensor, gc: Tensor):
        keep = gp != -1  # junk gallery samples are never ranked: drop them before computing distances
        if not bool(keep.all()):
            gf, gp, gc = gf[keep], gp[keep], gc[keep]

        def block(rows: Tensor) -> Tensor:
            return pairwise_distance(qf.index_select(0, rows), gf, self.distance)

        bytes_per_row = gf.shape[0] * (4 + 9)
        return _evaluate(
            block, qp, gp, qc, gc, self.max_rank, bytes_per_row, self.chunk_size, self.chunk_bytes, qf.device
        )

    def compute(self) -> dict[str, Tensor]:
        emb, pids, cams, isq, _ = self._gathered()
        q, g = isq, ~isq
        if not bool(q.any()) or not bool(g.any()):
            raise ValueError(
                f"ReIDRankMetric needs query and gallery samples, got {int(q.sum())} queries and "
                f"{int(g.sum())} gallery samples (is_query flags wrong?)"
            )
        qf, gf = emb[q], emb[g]
        args = (pids[q], pids[g], cams[q], cams[g])
        cmc, m_ap, m_inp = self._rank_features(qf, gf, *args)
        out: dict[str, Tensor] = {"mAP": m_ap.float(), "mINP": m_inp.float()}
        for k in self.ranks:
            out[f"rank{k}"] = cmc[k - 1].to(m_ap.device)
        if self.prefix_dims is not None:
            dim = emb.shape[1]
            for i, d in enumerate(self.prefix_dims, start=1):
                if d > dim:
                    raise ValueError(f"prefix_dims entry {d} exceeds the embedding dimension {dim}")
                if d == dim:
                    out[_branch_key(i)] = out["mAP"].clone()
                else:
                    out[_branch_key(i)] = self._rank_features(qf[:, :d], gf[:, :d], *args)[1].float()
        return out
