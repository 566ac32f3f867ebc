"""Real-scale rehearsal: every real config on synthetic data of the real data sets' sizes, on CPU.

    python bench/real_scale.py --data-root /tmp/real_scale_data [--configs cama_market1501 ...]
        [--out DIR] [--scale real] [--train-steps 3] [--episodes N] [--sanity-steps N] [--workers 2]

Each data set is written once in its real layout at its true sizes (``bench/real_scale_trees.py``;
cached under ``--data-root``: a tree is only written when its completion marker is absent). Then, per
config, ``train.py fit --config configs/<config>.yaml`` runs in a subprocess on that tree: a few
training steps (``--train-steps``), one full validation (after Lightning's sanity check, which stays
on unless ``--sanity-steps`` says otherwise), then the test of the best checkpoint. Overrides, the same
for every config of a family: CPU, one device, ``pretrained: null``, ``--workers`` loader processes,
re-ID input 64x32 (``--reid-size``), few-shot / retrieval input 48x48 (``--class-size``; retrieval
resizes to 54 before the crop), validation every epoch (at a ``--scale`` below real, on a tenth of the
training identities / classes held out, the configs' ``val_ids`` / ``val_classes`` being for the real sizes). ``--episodes N`` caps the few-shot validation
and test episodes (the table says so). Printed, and written to ``<out>/real_scale.md``: per config
the wall time of the subprocess, the peak memory (the process tree's summed PSS sampled every 0.5 s,
and the largest single process's peak RSS from ``wait4``), the times of training, of the validation
and test steps, of the rank evaluation (the model's ``on_validation_epoch_end`` /
``on_test_epoch_end``: the full query x gallery ranking) and of the explanation callbacks' hooks
(Lightning's SimpleProfiler), and the logged metric names (``fit_metrics.json`` /
``test_metrics.json``); a failed config shows FAILED and its last error line. The host's 2048x2048
float32 matmul GFLOP/s is measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from real_scale_trees import TreeInfo, ensure_tree  # noqa: E402

CONFIGS = ("cama_market1501", "ide_bn_market1501", "cama_dukemtmc", "cama_cuhk03", "cama_msmt17",
           "protonet_miniimagenet", "protonet_miniimagenet_5shot", "protonet_cub", "retrieval_cub200")
EXPLANATION_CALLBACKS = ("ExplanationImages", "LocalizationMetrics", "FewShotExplanations")
PAGE = os.sysconf("SC_PAGE_SIZE")
# profiled actions (regexes) of the table's time columns: training steps, validation steps, the model's
# validation epoch end (the rank evaluation), test steps, the model's test epoch end
TIMED_ACTIONS = (r"run_training_batch", r"\[Strategy\].*\.validation_step",
                 r"\[LightningModule\].*\.on_validation_epoch_end", r"\[Strategy\].*\.test_step",
                 r"\[LightningModule\].*\.on_test_epoch_end")


def config_family(config: str) -> tuple[str, str]:
    """``(tree, family)`` of a config: the data set it reads and ``reid`` / ``fewshot`` / ``retrieval``."""
    text = (REPO / "configs" / f"{config}.yaml").read_text()
    dataset = re.search(r"^\s+dataset:\s*(\w+)", text, re.M)
    if dataset is None:
        raise ValueError(f"configs/{config}.yaml names no data.init_args.dataset")
    tree = {"cub200": "cub"}.get(dataset.group(1), dataset.group(1))
    family = "reid" if "ReIDDataModule" in text else "fewshot" if "FewShotDataModule" in text else "retrieval"
    return tree, family


def overrides(config: str, data_path: Path, opts: argparse.Namespace, profile_dir: Path) -> list[str]:
    """The ``train.py fit`` arguments that turn a real config into a short CPU rehearsal."""
    _, family = config_family(config)
    args = ["--data.init_args.root", str(data_path), "--model.init_args.pretrained", "null",
            "--data.init_args.num_workers", str(opts.workers), "--trainer.accelerator", "cpu",
            "--trainer.devices", "1", "--trainer.max_epochs", str(opts.validations),
            "--trainer.limit_train_batches", str(opts.train_steps), "--trainer.check_val_every_n_epoch", "1",
            "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
            "--test_after_fit", str(not opts.no_test).lower(),
            "--trainer.profiler", "lightning.pytorch.profilers.SimpleProfiler",
            "--trainer.profiler.dirpath", str(profile_dir), "--trainer.profiler.filename", "profile"]
    if opts.sanity_steps is not None:
        args += ["--trainer.num_sanity_val_steps", str(opts.sanity_steps)]
    if family == "reid":
        args += ["--data.init_args.image_size", json.dumps(list(opts.reid_size))]
        if opts.eval_batch_size:
            args += ["--data.init_args.eval_batch_size", str(opts.eval_batch_size)]
    else:
        size = opts.class_size
        args += ["--data.init_args.image_size", json.dumps([size, size])]
    if family == "fewshot" and opts.episodes:
        args += ["--data.init_args.val_episodes", str(opts.episodes), "--data.init_args.test_episodes",
                 str(opts.episodes)]
    if opts.scale != "real" and family in ("reid", "retrieval"):
        # a fraction of the real data has a fraction of its identities / classes: hold a tenth out
        held = "val_ids" if family == "reid" else "val_classes"
        args += [f"--data.init_args.{held}", "null"]
    if family == "retrieval":
        args += ["--data.init_args.resize_size", str(round(opts.class_size * 256 / 227)),
                 "--trainer.max_steps", "-1", "--trainer.val_check_interval", "1.0"]
        if opts.eval_batch_size:
            args += ["--data.init_args.eval_batch_size", str(opts.eval_batch_size)]
    return args + list(opts.extra)


def _memory(pid: int) -> int:
    """Proportional set size of a process (bytes): its resident pages, each shared page divided among
    the processes that map it, so that a process tree's sum counts every page once (RSS if no PSS)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _tree_memory(root: int) -> int:
    """Summed memory (:func:`_memory`, bytes) of process ``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += _memory(pid)
        stack.extend(children.get(pid, ()))
    return total


@dataclass
class Run:
    """What one config's subprocess gave."""

    config: str
    returncode: int = -1
    wall_s: float = 0.0
    tree_peak: int = 0
    proc_peak: int = 0
    error: str = ""
    profile: dict[str, tuple[int, float]] = field(default_factory=dict)
    fit_metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)
    test_weights: str = ""  # what train.py says the test scored
    log: Path | None = None


def run_command(cmd: list[str], cwd: Path, log: Path, timeout_s: float, env: dict[str, str]) -> Run:
    """Run ``cmd`` (output to ``log``), sampling its tree's memory; wall time, peaks, return code."""
    run = Run(config="", log=log)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            run.tree_peak = max(run.tree_peak, _tree_memory(proc.pid))
            if time.perf_counter() - start > timeout_s:
                os.killpg(proc.pid, 9)
                run.error = f"timed out after {timeout_s:.0f} s"
            time.sleep(0.5)
    proc.returncode = run.returncode = os.waitstatus_to_exitcode(status)
    run.wall_s = time.perf_counter() - start
    run.proc_peak = usage.ru_maxrss * 1024
    return run


def last_error_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", ln)]
    return (errors or lines or ["(no output)"])[-1][:300]


def parse_profiles(folder: Path) -> dict[str, tuple[int, float]]:
    """``action -> (calls, total seconds)`` from the SimpleProfiler reports in ``folder``.

    The test report of ``fit`` + ``test`` also holds the fit's actions (one profiler for both), so
    each action keeps its largest count over the reports rather than their sum."""
    row = re.compile(r"^\|\s*(\S.*?)\s*\|\s*[\d.eE+-]+\s*\|\s*(\d+)\s*\|\s*([\d.eE+-]+)\s*\|")
    out: dict[str, tuple[int, float]] = {}
    for path in sorted(folder.glob("*.txt")):
        for line in path.read_text().splitlines():
            m = row.match(line)
            if m:
                calls, total = int(m.group(2)), float(m.group(3))
                out[m.group(1)] = max(out.get(m.group(1), (0, 0.0)), (calls, total), key=lambda ct: ct[1])
    return out


def run_config(config: str, tree: TreeInfo, out_dir: Path, opts: argparse.Namespace) -> Run:
    """``train.py fit`` of ``config`` on ``tree`` in ``<out_dir>/<config>``; the measurements."""
    work = out_dir / config
    work.mkdir(parents=True, exist_ok=True)
    profile_dir = work / "profile"
    config_path = REPO / "configs" / f"{config}.yaml"
    cmd = [sys.executable, str(REPO / "train.py"), "fit", "--config", str(config_path),
           *overrides(config, tree.path, opts, profile_dir)]
    (work / "command.txt").write_text(" ".join(cmd) + "\n")
    paths = [str(REPO), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    run = run_command(cmd, work, work / "log.txt", opts.timeout, env)
    run.config = config
    if run.returncode != 0:
        run.error = run.error or last_error_line(work / "log.txt")
    run.profile = parse_profiles(profile_dir) if profile_dir.is_dir() else {}
    for name in ("fit", "test"):
        found = sorted(work.glob(f"runs/**/{name}_metrics.json"))
        if found:
            values = json.loads(found[-1].read_text())
            setattr(run, f"{name}_metrics", {k: v for k, v in values.items() if isinstance(v, (int, float))})
            if name == "test":
                run.test_weights = str(values.get("weights", ""))
    return run


def hook_seconds(profile: dict[str, tuple[int, float]], pattern: str) -> str:
    """Total seconds (and calls) of the profiled actions matching the regex ``pattern``."""
    hits = [(c, t) for name, (c, t) in profile.items() if re.fullmatch(pattern, name)]
    if not hits:
        return "-"
    return f"{sum(t for _, t in hits):.1f} ({sum(c for c, _ in hits)}x)"


def callback_seconds(profile: dict[str, tuple[int, float]]) -> str:
    parts = []
    for cb in EXPLANATION_CALLBACKS:
        total = sum(t for name, (_, t) in profile.items() if name.startswith(f"[Callback]{cb}"))
        if total:
            parts.append(f"{cb} {total:.1f}")
    return " + ".join(parts) or "-"


def callback_share(profile: dict[str, tuple[int, float]]) -> str:
    """The explanation callbacks' hooks against the validation they ride on (its steps and the model's
    rank evaluation), over every validation of the run, in percent."""
    hooks = sum(t for name, (_, t) in profile.items()
                if any(name.startswith(f"[Callback]{cb}") for cb in EXPLANATION_CALLBACKS))
    validation = sum(t for name, (_, t) in profile.items() if re.fullmatch(TIMED_ACTIONS[1], name)
                     or re.fullmatch(TIMED_ACTIONS[2], name))
    return f"{100 * hooks / validation:.1f}%" if validation and hooks else "-"


def matmul_gflops(n: int = 2048, repeats: int = 5) -> tuple[float, int]:
    """Best-of-``repeats`` float32 ``n x n`` matmul rate (GFLOP/s) with torch's current threads."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9, torch.get_num_threads()


def format_report(runs: list[Run], trees: dict[str, TreeInfo], opts: argparse.Namespace,
                  gflops: tuple[float, int], command: str) -> str:
    gb = 1024**3
    sanity = "default (2 steps)" if opts.sanity_steps is None else f"{opts.sanity_steps} steps"
    episodes = (f"CAPPED at {opts.episodes} (val and test)" if opts.episodes
                else "the configs' (600 val, 2000 test)")
    lines = [f"# Real-scale rehearsal ({datetime.datetime.now():%Y-%m-%d %H:%M})", "",
             f"Command: `{command}`", "",
             f"Host: {os.cpu_count()} CPU cores; 2048x2048 float32 matmul: {gflops[0]:.1f} GFLOP/s "
             f"(torch, {gflops[1]} thread(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}).",
             f"Settings: CPU, pretrained null, {opts.validations} epoch(s) of {opts.train_steps} training "
             f"steps "
             f"and a validation{', no test' if opts.no_test else ''}, re-ID input "
             f"{opts.reid_size[0]}x{opts.reid_size[1]}, few-shot / retrieval input "
             f"{opts.class_size}x{opts.class_size}, {opts.workers} loader workers, sanity check {sanity}; "
             f"few-shot episodes: {episodes}.",
             "", "## Data trees", "",
             "| tree | images | written in (s) | size on disk (MB) | counts vs targets | path |",
             "|---|---|---|---|---|---|"]
    for t in trees.values():
        images = sum(v for k, v in t.counts.items() if k.endswith("images") and ("/" in k or k == "images"))
        when = f"{t.seconds:.0f}" + (" (cached)" if t.cached else "")
        check = "exact" if t.counts == t.targets else ("; ".join(t.mismatches()) or "within 1%")
        lines.append(f"| {t.name} | {images} | {when} | {t.bytes_on_disk / 1e6:.0f} | {check} | {t.path} |")
    lines += ["", "## Runs", "",
              "| config | status | wall (s) | peak memory: tree PSS / largest RSS (GB) | train steps (s) "
              "| val steps (s) | val rank eval (s) | test steps (s) | test rank eval (s) "
              "| explanation callbacks (s) | callbacks / validation | metrics fit / test |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        p = r.profile
        status = "ok" if r.returncode == 0 else f"FAILED: {r.error}"
        lines.append(
            f"| {r.config} | {status} | {r.wall_s:.0f} | {r.tree_peak / gb:.2f} / {r.proc_peak / gb:.2f} "
            f"| {' | '.join(hook_seconds(p, pattern) for pattern in TIMED_ACTIONS)} "
            f"| {callback_seconds(p)} | {callback_share(p)} | {len(r.fit_metrics)} / {len(r.test_metrics)} |")
    lines += ["", "In parentheses: the number of calls (validation: the sanity check's and the "
              f"{opts.validations} full one(s)). Callbacks / validation: the explanation callbacks' hooks "
              "over the validation steps "
              "and rank evaluations, every validation of the run (the sanity check's too). "
              "Memory: the largest sum of PSS over train.py and its loader workers (sampled every 0.5 s), "
              "and the peak RSS of the largest single process (wait4).",
              "", "## Logged metrics", ""]
    for r in runs:
        lines.append(f"* {r.config}: fit: {', '.join(sorted(r.fit_metrics)) or '-'}; "
                     f"test: {', '.join(sorted(r.test_metrics)) or '-'}"
                     + (f" (scored: {r.test_weights})" if r.test_weights else ""))
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True, help="where the data trees are written once and reused")
    p.add_argument("--out", default=None,
                   help="logs, profiles, runs and real_scale.md (default: a new folder under /tmp)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS, metavar="CONFIG")
    p.add_argument("--scale", default="real", help="'real' or a fraction of the real sizes, e.g. 0.05")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="native size of the written images (default: the generators', 128x64 and 84x84)")
    p.add_argument("--train-steps", type=int, default=3, help="training steps per epoch (at least 2: "
                   "Lightning reads 1 as the whole epoch)")
    p.add_argument("--validations", type=int, default=1,
                   help="epochs of --train-steps steps, each followed by a full validation (the callbacks' "
                        "schedules: a faithfulness budget's period needs that many to be averaged over)")
    p.add_argument("--no-test", action="store_true", help="no test after the fit")
    p.add_argument("--reid-size", type=int, nargs=2, default=(64, 32), metavar=("H", "W"))
    p.add_argument("--class-size", type=int, default=48)
    p.add_argument("--eval-batch-size", type=int, default=None,
                   help="re-ID / retrieval evaluation batch size (default: the configs')")
    p.add_argument("--episodes", type=int, default=None, help="cap of the few-shot val and test episodes")
    p.add_argument("--sanity-steps", type=int, default=None,
                   help="override num_sanity_val_steps (default: keep Lightning's 2)")
    p.add_argument("--workers", type=int, default=2, help="loader workers and tree-writing processes")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per config")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further train.py arguments (last)")
    opts = p.parse_args(argv)
    if opts.train_steps < 2:
        p.error(f"--train-steps must be >= 2 (Lightning reads limit_train_batches=1 as the whole epoch), "
                f"got {opts.train_steps}")
    if opts.validations < 1:
        p.error(f"--validations must be >= 1, got {opts.validations}")
    return opts


def main(argv: list[str] | None = None) -> list[Run]:
    opts = parse_args(argv)
    out = Path(opts.out or f"/tmp/real_scale_{datetime.datetime.now():%Y%m%d_%H%M%S}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["bench/real_scale.py", *(sys.argv[1:] if argv is None else argv)])
    trees: dict[str, TreeInfo] = {}
    for config in opts.configs:
        tree = config_family(config)[0]
        if tree not in trees:
            trees[tree] = ensure_tree(opts.data_root, tree, opts.scale, workers=opts.workers,
                                      size=tuple(opts.image_size) if opts.image_size else None)
            t = trees[tree]
            when = "cached" if t.cached else f"written in {t.seconds:.0f} s"
            misses = "".join(f"\n  MISS {m}" for m in t.mismatches())
            size = f"{t.bytes_on_disk / 1e6:.0f} MB"
            print(f"[real_scale] {tree}: {t.path} ({when}, {size}){misses}", flush=True)
    gflops = matmul_gflops()
    runs = []
    for config in opts.configs:
        print(f"[real_scale] {config} ...", flush=True)
        run = run_config(config, trees[config_family(config)[0]], out, opts)
        print(f"[real_scale] {config}: {'ok' if run.returncode == 0 else 'FAILED: ' + run.error} "
              f"in {run.wall_s:.0f} s (log {run.log})", flush=True)
        runs.append(run)
    report = format_report(runs, trees, opts, gflops, command)
    (out / "real_scale.md").write_text(report)
    print(report, flush=True)
    print(f"[real_scale] report written to {out / 'real_scale.md'}")
    return runs


if __name__ == "__main__":
    sys.exit(0 if all(r.returncode == 0 for r in main()) else 1)
