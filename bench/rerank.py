"""Benchmark of ``cama.metrics.rerank.re_ranking`` (k-reciprocal re-ranking) on a Market-1501-sized problem.

    python bench/rerank.py [--scale 1.0] [--dim 512] [--k1 20 --k2 6]

Problem (seeded): ``scale`` x (3,368 queries, 15,913 gallery images) unit embeddings of dimension
``--dim``, drawn around 1,501 identity centres (Market-1501's count) plus noise, so that the
neighbourhoods look like a trained model's; distances are squared Euclidean, as torchreid passes
them.  Prints the wall time of one ``re_ranking`` call (after the distance matrices are built),
the peak RSS during the call (``VmHWM`` reset through ``/proc/self/clear_refs``; else the
process's ``ru_maxrss``) and how far it rose above the RSS before the call (the inputs), the host's
2048 x 2048 float32 matmul GFLOP/s measured in the same run, and the targets (60 s, 6 GB).
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from cama.metrics.rerank import re_ranking  # noqa: E402

NUM_QUERY, NUM_GALLERY, NUM_IDS = 3368, 15913, 1501
TARGET_S, TARGET_BYTES = 60.0, 6e9


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


def make_problem(nq: int, ng: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(NUM_IDS, dim, generator=g), dim=1)
    ids = torch.randint(0, NUM_IDS, (nq + ng,), generator=g)
    x = centres[ids] + 0.8 * torch.randn(nq + ng, dim, generator=g) / dim**0.5
    x = torch.nn.functional.normalize(x, dim=1)
    q, gal = x[:nq], x[nq:]

    def sq_euclidean(a, b):
        return (2 - 2 * a @ b.T).clamp_(min=0)

    return sq_euclidean(q, gal), sq_euclidean(q, q), sq_euclidean(gal, gal)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the Market-1501 sizes")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k1", type=int, default=20)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--lambda-value", type=float, default=0.3)
    args = p.parse_args()
    nq, ng = round(NUM_QUERY * args.scale), round(NUM_GALLERY * args.scale)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"matmul 2048x2048 float32: {matmul_gflops():.1f} GFLOP/s")
    qg, qq, gg = make_problem(nq, ng, args.dim)
    inputs = sum(t.numel() * t.element_size() for t in (qg, qq, gg))
    was_reset = reset_peak_rss()
    before = _status_bytes("VmRSS") if was_reset else peak_rss_bytes()
    t = time.perf_counter()
    out = re_ranking(qg, qq, gg, k1=args.k1, k2=args.k2, lambda_value=args.lambda_value)
    secs = time.perf_counter() - t
    after = peak_rss_bytes()
    n = nq + ng
    print(f"problem: {nq} queries, {ng} gallery (N={n}), dim {args.dim}, k1={args.k1}, k2={args.k2}")
    print(f"re_ranking: {secs:.1f} s (target {TARGET_S:.0f} s), output {tuple(out.shape)}")
    what = "during the call" if was_reset else "of the process (peak not resettable here)"
    print(f"peak RSS {what}: {after / 1e9:.2f} GB, {(after - before) / 1e9:.2f} GB above the RSS before the "
          f"call ({before / 1e9:.2f} GB, of which the input distances {inputs / 1e9:.2f} GB); "
          f"target {TARGET_BYTES / 1e9:.0f} GB; one N x N float32 = {4 * n * n / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
