"""Benchmark of ``cama.metrics.evaluate_rank`` on a Market-1501-sized ranking problem.

    python bench/reid_eval.py [--naive] [--signal 0.0] [--repeats 3]

Problem (seeded): 3,368 queries and 15,913 gallery images, 751 identities, 6 cameras; the gallery
holds 12,620 identity images, 2,793 distractors (pid 0) and 500 junk images (pid -1); every query
identity has gallery images in other cameras.  Distances are uniform random (``--signal s`` pulls
true matches closer by ``s``); random distances are the worst case for ``evaluate_rank``, whose work
grows with the number of gallery images ranked before the last true match.

Prints the best wall time of ``--repeats`` runs after a warm-up, the peak extra memory of one run
measured in a fresh subprocess (peak RSS, ``VmHWM`` reset through ``/proc/self/clear_refs``), the
targets (1.5 s, 1.5 GB), the time of one full ``torch.argsort`` of the matrix for comparison and, with
``--naive``, a per-query numpy loop (torchreid-style) timed on a subset and extrapolated.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import torch

from cama.metrics import evaluate_rank  # noqa: E402

NUM_QUERY, NUM_GALLERY, NUM_IDS, NUM_CAMS = 3368, 15913, 751, 6
NUM_DISTRACTORS, NUM_JUNK = 2793, 500
TARGET_S, TARGET_BYTES = 1.5, 1.5e9


def make_problem(seed: int = 0, signal: float = 0.0):
    rng = np.random.default_rng(seed)
    n_id_imgs = NUM_GALLERY - NUM_DISTRACTORS - NUM_JUNK
    # gallery: every identity at least twice, the rest at random
    ids = np.arange(1, NUM_IDS + 1)
    g_ids = np.concatenate([np.tile(ids, 2), rng.integers(1, NUM_IDS + 1, n_id_imgs - 2 * NUM_IDS)])
    g_cams = rng.integers(0, NUM_CAMS, g_ids.size)
    # each identity's first two images (entries i and NUM_IDS + i) in different cameras
    second = np.arange(NUM_IDS, 2 * NUM_IDS)
    clash = g_cams[second] == g_cams[:NUM_IDS]
    g_cams[second] = np.where(clash, (g_cams[second] + 1) % NUM_CAMS, g_cams[second])
    g_pids = np.concatenate([g_ids, np.zeros(NUM_DISTRACTORS, np.int64), -np.ones(NUM_JUNK, np.int64)])
    g_camids = np.concatenate([g_cams, rng.integers(0, NUM_CAMS, NUM_DISTRACTORS + NUM_JUNK)])
    perm = rng.permutation(NUM_GALLERY)
    g_pids, g_camids = g_pids[perm], g_camids[perm]
    # queries: every identity at least 4 times, random cameras (each identity has >= 2 gallery cameras)
    q_pids = np.concatenate([np.repeat(ids, 4), rng.integers(1, NUM_IDS + 1, NUM_QUERY - 4 * NUM_IDS)])
    q_camids = rng.integers(0, NUM_CAMS, NUM_QUERY)
    gen = torch.Generator().manual_seed(seed)
    dist = torch.rand(NUM_QUERY, NUM_GALLERY, generator=gen)
    if signal:
        same = torch.from_numpy(q_pids)[:, None] == torch.from_numpy(g_pids)[None, :]
        dist -= signal * same
    ids_and_cams = (torch.from_numpy(a) for a in (q_pids, g_pids, q_camids, g_camids))
    return (dist, *ids_and_cams)


def naive_eval(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50):
    """Per-query loop in numpy (the torchreid / fast-reid way), for timing and cross-checks."""
    cmcs, aps = [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        gp, gc = g_pids[order], g_camids[order]
        keep = ~(((gp == q_pids[i]) & (gc == q_camids[i])) | (gp == -1))
        m = gp[keep] == q_pids[i]
        if not m.any():
            continue
        c = np.minimum(m.cumsum(), 1)
        cmcs.append(c[:max_rank])
        pos = np.flatnonzero(m)
        aps.append(np.mean(np.arange(1, pos.size + 1) / (pos + 1)))
    return np.mean(cmcs, 0), float(np.mean(aps))


def _vm(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def memory_child(seed: int, signal: float) -> None:
    """Runs in a fresh interpreter: peak RSS of one evaluate_rank call beyond the problem itself."""
    problem = make_problem(seed, signal)
    base = _vm("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    evaluate_rank(*problem)
    peak = _vm("VmHWM")
    print(f"{peak - base} {int(reset)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--signal", type=float, default=0.0, help="pull true matches closer by this much")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--naive", action="store_true", help="also time a per-query numpy loop on a subset")
    ap.add_argument("--naive-queries", type=int, default=300)
    ap.add_argument("--no-argsort", action="store_true", help="skip the full-argsort comparison")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.seed, args.signal)
        return

    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} "
          f"threads, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    dist, qp, gp, qc, gc = make_problem(args.seed, args.signal)
    print(f"problem: {dist.shape[0]} queries x {dist.shape[1]} gallery ({int((gp == 0).sum())} distractors, "
          f"{int((gp == -1).sum())} junk), {NUM_IDS} identities, {NUM_CAMS} cameras, signal {args.signal}")

    cmc, m_ap, m_inp = evaluate_rank(dist, qp, gp, qc, gc, return_minp=True)  # warm-up
    times, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        evaluate_rank(dist, qp, gp, qc, gc, return_minp=True)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    best = min(times)
    all_times = ", ".join(f"{t:.3f}" for t in times)
    print(f"evaluate_rank: best {best:.3f} s of {args.repeats} (all: {all_times}); "
          f"target < {TARGET_S} s -> {'OK' if best < TARGET_S else 'MISSED'}")
    print(f"  process CPU time (all threads) of the same runs: {', '.join(f'{c:.3f}' for c in cpu)} s")
    print(f"  rank1 {cmc[0]:.4f}  rank5 {cmc[4]:.4f}  rank10 {cmc[9]:.4f}  mAP {m_ap:.4f}  mINP {m_inp:.4f}")

    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--memory-child",
         "--seed", str(args.seed), "--signal", str(args.signal)]
        + (["--threads", str(args.threads)] if args.threads else []),
        capture_output=True, text=True, check=True,
    )
    extra, reset = (int(v) for v in out.stdout.split()[-2:])
    how = "VmHWM after clear_refs reset" if reset else "VmHWM (no reset: includes the problem's build)"
    print(f"peak extra memory: {extra / 1e6:.0f} MB ({how}); distmat itself {dist.numel() * 4 / 1e6:.0f} MB; "
          f"target < {TARGET_BYTES / 1e9:.1f} GB -> {'OK' if extra < TARGET_BYTES else 'MISSED'}")

    if not args.no_argsort:
        t0 = time.perf_counter()
        torch.argsort(dist, dim=1)
        t = time.perf_counter() - t0
        print(f"for comparison, one full torch.argsort of the matrix: {t:.3f} s "
              f"(evaluate_rank / argsort = {best / t:.2f})")

    if args.naive:
        n = min(args.naive_queries, dist.shape[0])
        d = dist[:n].numpy()
        t0 = time.perf_counter()
        ref_cmc, ref_ap = naive_eval(d, qp[:n].numpy(), gp.numpy(), qc[:n].numpy(), gc.numpy())
        t = time.perf_counter() - t0
        sub_cmc, sub_ap = evaluate_rank(dist[:n], qp[:n], gp, qc[:n], gc)
        agree = np.allclose(sub_cmc.numpy(), ref_cmc, atol=1e-6) and abs(sub_ap - ref_ap) < 1e-9
        print(f"naive per-query numpy loop: {t:.3f} s for {n} queries "
              f"-> ~{t * dist.shape[0] / n:.2f} s for all (same numbers on the subset: {agree})")


if __name__ == "__main__":
    main()
