"""The ranks of the true matches of re-ID queries, without sorting the rows (the fast path of
:func:`cama.metrics.reid.evaluate_rank`).

The rank of a true match is 1 + the number of kept gallery images ordered before it (by distance,
ties by gallery index), so only the few true matches of each query -- the *thresholds* -- need
sorting.  :func:`match_ranks` is a short sequence of steps:

1. :func:`identity_candidates`: the gallery images of each query's identity, split by the exclusion
   rule (:func:`cama.metrics.ranking.excluded_pairs`) into true matches and removed images;
2. :func:`sorted_thresholds`: the true matches of each row sorted by (distance, gallery index);
3. :func:`fit_row_bins`: a monotone map of each row's distances to ``_NUM_BINS`` uniform bins
   spanning its thresholds (an affine map of the clamped value, the same ops for every entry);
4. :func:`locate_thresholds`: the bin of every threshold and how many thresholds each bin holds;
5. :func:`count_before_thresholds` over the whole row, then with sign ``-1`` over the junk
   columns: a ``bincount`` per row counts the images per bin; a bin without a threshold lies
   strictly between two consecutive thresholds, so its images are ordered exactly
   (:func:`count_clear_bins`); the few images in a bin that holds a threshold (the true matches
   among them) are compared one by one with its thresholds (:func:`count_in_threshold_bins`);
6. :func:`subtract_removed`: the same-identity same-camera images are taken out (exact comparisons);
7. a cumulative sum gives the rank of every match.

Cost: a few passes over each row (no sort), in chunks of queries whose temporaries stay within a
byte budget.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cama.metrics.ranking import excluded_pairs, is_junk

__all__ = ["Gallery", "Workspace", "match_ranks", "max_chunk_rows"]

# Bins per query row of the monotone histogram, a power of two.  More bins leave fewer images to
# compare one by one but cost more per row; 1024 is the sweet spot for Market-sized galleries.
# Rows x bins must stay within 2**23 (exact float32 bin offsets).
_NUM_BINS = 1024
_MAX_BIN_SLOTS = 1 << 23
# Candidate slots (queries x largest identity group) per pass when counting the true matches.
_COUNT_SLOTS = 1 << 22


def max_chunk_rows() -> int:
    """The most queries one call of :func:`match_ranks` takes (exact float32 bin offsets)."""
    return _MAX_BIN_SLOTS // _NUM_BINS


class Gallery:
    """Gallery-side index: the images grouped by identity (gallery index ascending); junk columns."""

    def __init__(self, g_pids: Tensor, g_camids: Tensor):
        self.pids, self.cams = g_pids, g_camids
        self.size = int(g_pids.numel())
        junk = is_junk(g_pids)
        self.junk_cols: Tensor | None = junk.nonzero().squeeze(1) if bool(junk.any()) else None
        self.order = torch.argsort(g_pids, stable=True)  # stable: gallery index ascending in a group
        self.sorted_pids = g_pids[self.order]

    def same_id_range(self, q_pids: Tensor) -> tuple[Tensor, Tensor]:
        """Per query: the first position in :attr:`order` of its identity, and the group's size."""
        start = torch.searchsorted(self.sorted_pids, q_pids)
        end = torch.searchsorted(self.sorted_pids, q_pids, right=True)
        return start, end - start

    def num_matches(self, q_pids: Tensor, q_camids: Tensor) -> tuple[Tensor, Tensor]:
        """Per query: (number of true matches, number of same-identity gallery images)."""
        _, n_same = self.same_id_range(q_pids)
        n_match = torch.zeros_like(n_same)
        count = q_pids.numel()
        rows = max(1, _COUNT_SLOTS // max(1, int(n_same.max()) if count else 1))
        for s in range(0, count, rows):  # the counts come from the one exclusion rule
            _, in_group, excluded = identity_candidates(self, q_pids[s : s + rows], q_camids[s : s + rows])
            n_match[s : s + rows] = (in_group & ~excluded).sum(1)
        return n_match, n_same


class Workspace:
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


def check_no_nan(dist: Tensor) -> None:
    """Raise ``ValueError`` when ``dist`` holds a NaN (one fast pass over the rows' sums)."""
    if not dist.is_floating_point():
        return
    sums = dist.sum(1)  # NaN rows (and rows with both +inf and -inf) give NaN
    suspects = torch.isnan(sums).nonzero().squeeze(1)
    if suspects.numel() and bool(torch.isnan(dist.index_select(0, suspects)).any()):
        raise ValueError("distmat contains NaN")


def identity_candidates(gal: Gallery, q_pids: Tensor, q_camids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The gallery images of each query's identity, ``[C, Nmax]`` (gallery index ascending):
    ``(gallery index, in the group (else padding), excluded by the Market-1501 rule)``."""
    start, n_same = gal.same_id_range(q_pids)
    nmax = int(n_same.max()) if n_same.numel() else 0
    ar = torch.arange(nmax, device=q_pids.device)
    in_group = ar < n_same[:, None]
    gidx = gal.order[(start[:, None] + ar).clamp_(max=gal.size - 1)]
    excluded = excluded_pairs(q_pids[:, None], q_camids[:, None], gal.pids[gidx], gal.cams[gidx])
    return gidx, in_group, excluded


def precedes_or_ties(tv: Tensor, ti: Tensor, v: Tensor, col: Tensor) -> Tensor:
    """Whether threshold ``(tv, ti)`` (distance, gallery index) is ordered before-or-at the image
    ``(v, col)``: the stable-argsort order of a row, ties by gallery index."""
    return (tv < v) | ((tv == v) & (ti <= col))


@dataclass
class Thresholds:
    """The true matches of each row sorted by (distance, gallery index): ``[C, Mmax]``."""

    values: Tensor  # distances
    cols: Tensor  # gallery indices
    valid: Tensor  # bool, entry j < the row's number of matches (the rest is padding)
    num: Tensor  # [C] number of matches


def sorted_thresholds(vals: Tensor, gidx: Tensor, is_match: Tensor) -> Thresholds:
    """:class:`Thresholds` of the candidates ``vals``/``gidx`` ``[C, Nmax]`` flagged ``is_match``
    (two stable sorts of the short candidate rows: by distance, then matches first)."""
    num_m = is_match.sum(1)
    mmax = int(num_m.max())
    perm = torch.sort(vals, dim=1, stable=True).indices
    not_match = (~is_match.gather(1, perm)).to(torch.uint8)
    perm = perm.gather(1, torch.sort(not_match, dim=1, stable=True).indices)[:, :mmax]
    valid = torch.arange(mmax, device=vals.device) < num_m[:, None]
    return Thresholds(vals.gather(1, perm), gidx.gather(1, perm), valid, num_m)


@dataclass
class RowBins:
    """A monotone map of the entries of each row to global bins ``row * nb + bin``."""

    inv: Tensor  # [C, 1] bins per unit of distance (0: the row's single bin)
    bias: Tensor  # [C, 1]
    off: Tensor  # [C, 1] float32 row * nb
    any_bad: bool  # some row has a single bin
    nb: int

    def __call__(self, x: Tensor, u: Tensor, out: Tensor) -> Tensor:
        """Global bin of every entry of ``x`` ``[C, n]`` into ``out`` (int32; ``u`` float32 scratch):
        monotone non-decreasing in ``x`` within a row, the same ops for images and thresholds."""
        if x.dtype == torch.float32:
            torch.mul(x, self.inv, out=u)
        else:
            u.copy_(x).mul_(self.inv)
        u.add_(self.bias)
        if self.any_bad:  # inv == 0 rows: inf * 0 = nan -> the row's single bin
            u.nan_to_num_(nan=1.5)
        u.clamp_(0, self.nb - 1).add_(self.off)
        return out.copy_(u)


def fit_row_bins(dist: Tensor, thr: Thresholds, nb: int) -> RowBins:
    """:class:`RowBins` whose ``nb - 4`` inner bins span each row's ``[first, last]`` finite
    threshold (up to the row's maximum when they are all equal; one bin when still degenerate)."""
    device = dist.device
    tf = thr.values.float()
    fin = thr.valid & torch.isfinite(tf)
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
    off = (torch.arange(dist.shape[0], device=device, dtype=torch.float32) * nb)[:, None]
    return RowBins(inv, bias, off, bool(bad.any()), nb)


@dataclass
class ThresholdBins:
    """Where the thresholds fall in the global bins (``C * nb`` of them)."""

    valid_bins: Tensor  # global bins of the real thresholds
    count: Tensor  # [C * nb] thresholds per bin
    holds: Tensor  # [C * nb] bool, count > 0: their images are compared one by one
    lower: Tensor  # [C * nb] thresholds in lower bins, earlier rows included
    row_first: Tensor  # [C] thresholds of earlier rows
    row_start: Tensor  # [C, 1] global bin of each row's bin 0
    safe_bins: Tensor  # [C, Mmax] bin of each threshold (padding: the row's bin 0)
    kmax: int  # the most thresholds in one bin
    nb: int  # bins per row


def locate_thresholds(thr: Thresholds, bins: RowBins) -> ThresholdBins:
    """:class:`ThresholdBins` of the thresholds under the row map ``bins``."""
    c, mmax = thr.values.shape
    device = thr.values.device
    nb = bins.nb
    scratch = torch.empty(c, mmax, device=device)
    tb = bins(thr.values, scratch, torch.empty(c, mmax, dtype=torch.int32, device=device)).long()
    valid_bins = tb[thr.valid]
    count = torch.bincount(valid_bins, minlength=c * nb)
    row_start = (torch.arange(c, device=device) * nb)[:, None]
    return ThresholdBins(
        valid_bins=valid_bins,
        count=count,
        holds=count > 0,
        lower=count.cumsum(0).sub_(count),
        row_first=thr.num.cumsum(0).sub_(thr.num),
        row_start=row_start,
        safe_bins=torch.where(thr.valid, tb, row_start),
        kmax=int(count.max()),
        nb=nb,
    )


@dataclass
class RankCounts:
    """rank of threshold ``j`` - 1 = ``before[:, j]`` (images of bins without thresholds below its
    bin) + ``hist[:, :j + 1].sum(1)`` (images of bins with thresholds ordered before it)."""

    before: Tensor  # [C, Mmax] long
    hist: Tensor  # [C, Mmax + 1] long: images by the number of the row's thresholds before-or-at them

    @classmethod
    def zeros(cls, c: int, mmax: int, device: torch.device) -> RankCounts:
        return cls(
            torch.zeros(c, mmax, dtype=torch.long, device=device),
            torch.zeros(c, mmax + 1, dtype=torch.long, device=device),
        )

    def ranks(self) -> Tensor:
        """``[C, Mmax]`` 1-based ranks of the thresholds."""
        mmax = self.before.shape[1]
        return self.hist.cumsum(1)[:, :mmax].add_(self.before).add_(1)


def count_clear_bins(idx: Tensor, tbins: ThresholdBins, counts: RankCounts, sign: int) -> None:
    """Add (with ``sign``) to ``counts.before`` the images (global bins ``idx``) that lie in bins
    without a threshold below each threshold's bin: ordered before it exactly."""
    per_bin = torch.bincount(idx, minlength=tbins.count.numel()).index_fill_(0, tbins.valid_bins, 0)
    cum = torch.cat([per_bin.new_zeros(1), per_bin.cumsum(0)])  # cum[k] = entries in bins < k
    counts.before.add_(cum[tbins.safe_bins] - cum[tbins.row_start], alpha=sign)


def count_in_threshold_bins(
    x: Tensor,
    idx: Tensor,
    pos: Tensor,
    cols: Tensor | None,
    thr: Thresholds,
    tbins: ThresholdBins,
    counts: RankCounts,
    sign: int,
    max_bytes: int,
) -> None:
    """Add (with ``sign``) to ``counts.hist`` the images at flat positions ``pos`` of ``x`` ``[C, n]``
    (in bins holding thresholds): ``p`` = the row's thresholds ordered before-or-at the image
    (:func:`precedes_or_ties`); the image precedes threshold ``j`` iff ``p <= j``.  ``cols`` maps
    the columns of ``x`` to gallery indices (None: the identity)."""
    c, mmax = thr.values.shape
    n, nb, kmax = x.shape[1], tbins.nb, tbins.kmax
    shift = nb.bit_length() - 1  # nb is a power of two
    karange = torch.arange(kmax, device=x.device)
    flat, hist_flat = x.reshape(-1), counts.hist.view(-1)
    thr_flat, thr_idx_flat = thr.values.view(-1), thr.cols.view(-1)
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
        base = tbins.lower.index_select(0, gbin) - tbins.row_first.index_select(0, r)
        cnt = tbins.count.index_select(0, gbin)
        if kmax == 1:
            t = r * mmax + base.clamp(max=mmax - 1)
            tv, ti = thr_flat.index_select(0, t), thr_idx_flat.index_select(0, t)
            after = base + (precedes_or_ties(tv, ti, v, col) & (cnt > 0))
        else:
            t = ((r * mmax)[:, None] + (base[:, None] + karange).clamp_(max=mmax - 1)).view(-1)
            tv = thr_flat.index_select(0, t).view(-1, kmax)
            ti = thr_idx_flat.index_select(0, t).view(-1, kmax)
            le = precedes_or_ties(tv, ti, v[:, None], col[:, None]) & (karange < cnt[:, None])
            after = base + le.sum(1)
        hist_flat.add_(torch.bincount(r * (mmax + 1) + after, minlength=hist_flat.numel()), alpha=sign)


def count_before_thresholds(
    x: Tensor,
    cols: Tensor | None,
    sign: int,
    thr: Thresholds,
    bins: RowBins,
    tbins: ThresholdBins,
    counts: RankCounts,
    ws: Workspace,
    max_bytes: int,
) -> None:
    """Add (with ``sign``) to ``counts`` the images of ``x`` ``[C, n]`` ordered before each threshold
    of their row: by bins where that is exact, one by one in the bins holding thresholds."""
    c, n = x.shape
    idx = bins(x, ws.get("u", (c, n), torch.float32, x.device), ws.get("idx", (c, n), torch.int32, x.device))
    idx = idx.view(-1)
    count_clear_bins(idx, tbins, counts, sign)
    mask = torch.index_select(tbins.holds, 0, idx, out=ws.get("mask", (c, n), torch.bool, x.device).view(-1))
    pos = mask.nonzero().squeeze(1)
    if pos.numel():
        count_in_threshold_bins(x, idx, pos, cols, thr, tbins, counts, sign, max_bytes)


def subtract_removed(
    vals: Tensor, gidx: Tensor, removed: Tensor, thr: Thresholds, counts: RankCounts
) -> None:
    """Take the removed candidates (same identity, same camera: few) out of ``counts.hist``."""
    rr, cc = removed.nonzero(as_tuple=True)
    if rr.numel():
        rv = vals[rr, cc][:, None]
        le = precedes_or_ties(thr.values[rr], thr.cols[rr], rv, gidx[rr, cc][:, None]) & thr.valid[rr]
        mmax = thr.values.shape[1]
        counts.hist.view(-1).index_add_(0, rr * (mmax + 1) + le.sum(1), torch.full_like(rr, -1))


def match_ranks(
    dist: Tensor, q_pids: Tensor, q_camids: Tensor, gal: Gallery, ws: Workspace, max_bytes: int
) -> tuple[Tensor, Tensor]:
    """1-based ranks (among kept gallery images) of every true match of each query, ascending.

    Every query of ``dist`` ``[C, G]`` must have a true match.  Returns ``ranks`` ``[C, Mmax]``
    (entries ``j >= num_matches[i]`` are padding) and ``num_matches`` ``[C]``.
    """
    c = dist.shape[0]
    if c * _NUM_BINS > _MAX_BIN_SLOTS:
        raise ValueError(f"chunk of {c} queries too large (max {max_chunk_rows()})")
    check_no_nan(dist)
    gidx, in_group, excluded = identity_candidates(gal, q_pids, q_camids)
    vals = dist.gather(1, gidx)
    thr = sorted_thresholds(vals, gidx, in_group & ~excluded)
    bins = fit_row_bins(dist, thr, _NUM_BINS)
    tbins = locate_thresholds(thr, bins)
    counts = RankCounts.zeros(c, thr.values.shape[1], dist.device)
    count_before_thresholds(dist, None, 1, thr, bins, tbins, counts, ws, max_bytes)
    if gal.junk_cols is not None:  # junk images are not ranked
        junk = dist.index_select(1, gal.junk_cols)
        count_before_thresholds(junk, gal.junk_cols, -1, thr, bins, tbins, counts, ws, max_bytes)
    subtract_removed(vals, gidx, in_group & excluded, thr, counts)
    return counts.ranks(), thr.num
