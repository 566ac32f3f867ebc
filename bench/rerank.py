"""Benchmark of k-reciprocal re-ranking (``cama.metrics.rerank``) at Market-1501 or MSMT17 size.

    python bench/rerank.py [--scale 1.0] [--dim 512] [--k1 20 --k2 6]
    python bench/rerank.py --dataset msmt17 [--scale 1.0] [--dim 6144] [--metric-rerank]
    python bench/rerank.py --dataset retrieval [--scale 1.0] [--dim 512]

``--dataset market1501`` (default): ``scale`` x (3,368 queries, 15,913 gallery images) unit
embeddings of dimension ``--dim`` (512), drawn around 1,501 identity centres (Market-1501's count)
plus noise, so that the neighbourhoods look like a trained model's; distances are squared
Euclidean, as torchreid passes them.  Times one ``re_ranking`` call on the three distance matrices
(after they are built).  Targets: 60 s, 6 GB.

``--dataset msmt17``: ``scale`` x (11,659 queries, 82,161 gallery images) around the 3,060
identities of MSMT17's test split (noise ``--noise`` 4.5: a harder problem, mAP about 0.5 without
re-ranking, as a trained model's on MSMT17), 15 cameras, dimension ``--dim`` (6,144: CAMA's embedding in
``configs/cama_market1501.yaml``, 3 branches of ResNet-50's 2,048 channels).  Times, from the
embeddings: ``re_ranked_distances`` (no ``[N, N]`` matrix; targets 20 minutes, 12 GB), the protocol
on its ``[Q, G]`` result (``evaluate_rank``), and ``ReIDRankMetric.compute`` without re-ranking
(and with it, ``--metric-rerank``: the two together plus the metric's copies).

``--dataset retrieval``: ``scale`` x 60,502 images of 11,316 classes (Stanford Online Products' test
split; noise ``--noise``), dimension ``--dim`` (512), every image a query against the others.  Times
``RetrievalMetric.compute`` without re-ranking and with it (``rerank=True``: the plain figures, then
each query's nearest re-ranked neighbours of the split against itself, no ``[N, N]`` matrix).

Each figure comes with the peak RSS during the call (``VmHWM`` reset through
``/proc/self/clear_refs``; else the process's ``ru_maxrss``) and how far it rose above the RSS
before the call (the inputs), and the host's 2048 x 2048 float32 matmul GFLOP/s measured in the
same run, before and after.
"""
from __future__ import annotations

import argparse
import resource
import time
from functools import partial

import torch

from cama.metrics import ReIDRankMetric, RetrievalMetric, evaluate_rank
from cama.metrics.rerank import re_ranked_distances, re_ranking

SIZES = {  # queries, gallery, identities, cameras
    "market1501": (3368, 15913, 1501, 6),
    "msmt17": (11659, 82161, 3060, 15),
    "retrieval": (60502, 0, 11316, 1),  # images (all queries and references), classes
}
TARGETS = {"market1501": (60.0, 6e9), "msmt17": (1200.0, 12e9)}  # seconds, bytes
DEFAULT_DIM = {"market1501": 512, "msmt17": 6144, "retrieval": 512}
DEFAULT_NOISE = {"msmt17": 4.5, "retrieval": 2.3}


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Resets the peak RSS (``VmHWM``) to the current RSS, where Linux allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def measured(what: str, fn, inputs_bytes: int, target: tuple[float, float] | None = None):
    """Runs ``fn()`` once, prints its wall time and peak RSS; returns its result."""
    was_reset = reset_peak_rss()
    before = _status_bytes("VmRSS") if was_reset else peak_rss_bytes()
    t = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t
    after = peak_rss_bytes()
    goal = f" (target {target[0]:.0f} s)" if target else ""
    how = "during the call" if was_reset else "of the process (peak not resettable here)"
    print(f"{what}: {secs:.1f} s{goal}", flush=True)
    print(f"  peak RSS {how}: {after / 1e9:.2f} GB, {(after - before) / 1e9:.2f} GB above the RSS before the "
          f"call ({before / 1e9:.2f} GB, of which the inputs {inputs_bytes / 1e9:.2f} GB)"
          + (f"; target {target[1] / 1e9:.0f} GB" if target else ""), flush=True)
    return out


def make_embeddings(nq: int, ng: int, dim: int, ids: int, cams: int, noise: float, seed: int = 0):
    """Unit embeddings around ``ids`` identity centres (plus their identity and camera labels), noise
    of norm about ``noise`` added to each unit centre before normalising, a block at a time."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(ids, dim, generator=g), dim=1)
    pids = torch.randint(0, ids, (nq + ng,), generator=g)
    x = torch.empty(nq + ng, dim)
    for s in range(0, nq + ng, 4096):
        e = min(nq + ng, s + 4096)
        x[s:e] = centres[pids[s:e]] + noise * torch.randn(e - s, dim, generator=g) / dim**0.5
        x[s:e] = torch.nn.functional.normalize(x[s:e], dim=1)
    camids = torch.randint(0, cams, (nq + ng,), generator=g)
    return x, pids + 1, camids


def make_problem(nq: int, ng: int, dim: int, seed: int = 0):
    """The Market-1501-sized problem: the three squared Euclidean distance matrices."""
    g = torch.Generator().manual_seed(seed)
    num_ids = SIZES["market1501"][2]
    centres = torch.nn.functional.normalize(torch.randn(num_ids, dim, generator=g), dim=1)
    ids = torch.randint(0, num_ids, (nq + ng,), generator=g)
    x = centres[ids] + 0.8 * torch.randn(nq + ng, dim, generator=g) / dim**0.5
    x = torch.nn.functional.normalize(x, dim=1)
    q, gal = x[:nq], x[nq:]

    def sq_euclidean(a, b):
        return (2 - 2 * a @ b.T).clamp_(min=0)

    return sq_euclidean(q, gal), sq_euclidean(q, q), sq_euclidean(gal, gal)


def market(args, nq: int, ng: int) -> None:
    qg, qq, gg = make_problem(nq, ng, args.dim)
    inputs = sum(t.numel() * t.element_size() for t in (qg, qq, gg))
    out = measured("re_ranking (distance matrices)",
                   lambda: re_ranking(qg, qq, gg, k1=args.k1, k2=args.k2, lambda_value=args.lambda_value),
                   inputs, TARGETS["market1501"])
    n = nq + ng
    print(f"  output {tuple(out.shape)}; one N x N float32 = {4 * n * n / 1e9:.2f} GB")


def msmt17(args, nq: int, ng: int) -> None:
    _, _, ids, cams = SIZES["msmt17"]
    x, pids, camids = make_embeddings(nq, ng, args.dim, ids, cams, args.noise)
    q, g = x[:nq], x[nq:]  # views
    inputs = x.numel() * 4
    qp, gp, qc, gc = pids[:nq], pids[nq:], camids[:nq], camids[nq:]
    n = nq + ng
    print(f"  one N x N float32 = {4 * n * n / 1e9:.1f} GB; the [Q, G] result {4 * nq * ng / 1e9:.2f} GB", flush=True)
    dist = measured("re_ranked_distances (embeddings)",
                    lambda: re_ranked_distances(q, g, k1=args.k1, k2=args.k2, lambda_value=args.lambda_value),
                    inputs, TARGETS["msmt17"])
    cmc, m_ap, m_inp = measured("evaluate_rank of the re-ranked distances",
                                partial(evaluate_rank, dist, qp, gp, qc, gc, return_minp=True),
                                inputs + dist.numel() * 4)
    print(f"  re-ranked: mAP {m_ap:.4f}, mINP {m_inp:.4f}, rank-1 {cmc[0]:.4f}", flush=True)
    del dist
    runs = [("ReIDRankMetric.compute (no re-ranking)", {})]
    if args.metric_rerank:
        runs.append(("ReIDRankMetric.compute (rerank=True)", {"rerank": True}))
    for what, options in runs:
        metric = ReIDRankMetric(k1=args.k1, k2=args.k2, lambda_value=args.lambda_value, **options)
        metric.update(x, pids, camids, torch.arange(n) < nq, torch.arange(n))  # holds x itself
        out = measured(what, metric.compute, inputs)
        print("  " + ", ".join(f"{k} {float(v):.4f}" for k, v in out.items()), flush=True)
        del metric, out


def retrieval(args, n: int, _: int) -> None:
    classes = max(2, round(SIZES["retrieval"][2] * args.scale))
    x, labels, _ = make_embeddings(n, 0, args.dim, classes, 1, args.noise)
    inputs = x.numel() * 4
    print(f"  {classes} classes; one N x N float32 = {4 * n * n / 1e9:.2f} GB", flush=True)
    for what, rerank in (("RetrievalMetric.compute (no re-ranking)", False),
                         ("RetrievalMetric.compute (rerank=True)", True)):
        metric = RetrievalMetric(knn="torch", rerank=rerank, k1=args.k1, k2=args.k2,
                                 lambda_value=args.lambda_value)
        metric.update(x, labels, torch.arange(n))  # holds x itself
        out = measured(what, metric.compute, inputs)
        print("  " + ", ".join(f"{k} {float(v):.4f}" for k, v in out.items()), flush=True)
        del metric, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(SIZES), default="market1501")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the data set's sizes")
    p.add_argument("--dim", type=int, default=None, help="embedding size (market1501: 512, msmt17: 6144)")
    p.add_argument("--k1", type=int, default=20)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--lambda-value", type=float, default=0.3)
    p.add_argument("--noise", type=float, default=None,
                   help="msmt17, retrieval: noise norm around the unit class centres (msmt17: 4.5, mAP "
                        "about 0.5 without re-ranking; retrieval: 2.3, Recall@1 about 0.8)")
    p.add_argument("--metric-rerank", action="store_true", help="msmt17: also ReIDRankMetric(rerank=True)")
    args = p.parse_args()
    args.dim = args.dim or DEFAULT_DIM[args.dataset]
    args.noise = DEFAULT_NOISE.get(args.dataset) if args.noise is None else args.noise
    nq, ng = (round(s * args.scale) for s in SIZES[args.dataset][:2])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"matmul 2048x2048 float32: {matmul_gflops():.1f} GFLOP/s", flush=True)
    print(f"problem: {args.dataset}, {nq} queries, {ng} gallery (N={nq + ng}), dim {args.dim}, "
          f"k1={args.k1}, k2={args.k2}, lambda={args.lambda_value}"
          + (f", noise {args.noise}" if args.noise is not None else ""), flush=True)
    {"market1501": market, "msmt17": msmt17, "retrieval": retrieval}[args.dataset](args, nq, ng)
    print(f"matmul 2048x2048 float32 after: {matmul_gflops():.1f} GFLOP/s")


if __name__ == "__main__":
    main()
