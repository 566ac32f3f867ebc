"""Training throughput of the three synthetic jobs: where the time of a training step goes.

    python bench/train_throughput.py [--configs cama_synthetic protonet_synthetic retrieval_synthetic]
        [--steps 6] [--loop-steps 12] [--compile] [--workers 0 1 2] [--job-epochs N]
        [--parts bare loop job] [--job-args ARG ...]

For each config, built from its YAML (data module and model, random weights), printed in one table:

* **bare step**: images/s of the model's own ``training_step`` + backward + optimizer step on one
  batch held in memory (no data loading, no logging, no callbacks), the FLOPs of that step counted
  by ``torch.utils.flop_counter.FlopCounterMode`` and the GFLOP/s it achieves, next to a 2048x2048
  float32 matmul measured in the same run; for each variant tried: default, ``channels_last``,
  bf16 autocast (where the CPU runs it), one thread instead of all, and ``torch.compile`` with
  ``--compile`` (slow to compile);
* **training loop**: images/s of ``Trainer.fit`` over ``--loop-steps`` batches (validation off) and
  the share of its time spent waiting for data (between one batch's end and the next one's start),
  in the rest of the loop (logging, hooks) and in the steps themselves, with 0, 1 and 2 data-loader
  workers;
* **the whole job**: ``train.py fit --config configs/<config>.yaml`` as ``make train`` runs it
  (``--job-epochs N`` shortens it), under Lightning's ``SimpleProfiler``: its wall time from the
  start of the process, split into training steps, waiting for data, validation and test steps,
  the explanation callbacks, the model's end-of-epoch evaluation (ranking, metrics), checkpoints,
  and the rest (start-up, logging, progress bar); and the test metrics it reached.

The validation epoch with and without the explanation callbacks in detail is
``bench/callback_overhead.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import runpy
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.profilers import SimpleProfiler
from torch.utils.flop_counter import FlopCounterMode

from cama.loading import instantiate_config, read_config

REPO = Path(__file__).resolve().parents[1]

CONFIGS = ("cama_synthetic", "protonet_synthetic", "retrieval_synthetic")


def matmul_gflops(size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """The best of ``repeats`` ``size x size`` float32 matmuls on ``device``, in GFLOP/s."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    best = min(_timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn: Any, device: str = "cpu") -> float:
    """Seconds of ``fn()``, the device's queued work waited for (CUDA runs asynchronously)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _optimizer(model: pl.LightningModule, max_epochs: int) -> torch.optim.Optimizer:
    # a schedule may read the run's length (cosine to the last epoch): attach an idle Trainer of that length
    model.trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False,
                               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    config = model.configure_optimizers()
    model.trainer = None  # detached again: the timed steps log nowhere
    if isinstance(config, dict):
        return config["optimizer"]
    return config[0][0] if isinstance(config, (list, tuple)) and isinstance(config[0], list) else config


def _build(name: str) -> tuple[Any, pl.LightningModule, dict[str, Any]]:
    config = read_config(REPO / "configs" / f"{name}.yaml")
    pl.seed_everything(int(config.get("seed_everything", 0)), verbose=False)
    model, datamodule = instantiate_config(config)
    datamodule.setup("fit")
    return datamodule, model, config


def bare_step(model: pl.LightningModule, batch: dict[str, Any], steps: int, variant: str,
              max_epochs: int) -> dict[str, float]:
    """Images/s and GFLOP/s of training_step + backward + optimizer step on one batch in memory."""
    model.train()
    optimizer = _optimizer(model, max_epochs)
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        batch = {**batch, "image": batch["image"].contiguous(memory_format=torch.channels_last)}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if variant == "bf16" else contextlib.nullcontext()
    forward = torch.compile(model.training_step) if variant == "compile" else model.training_step

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = forward(batch, 0)["loss"]  # training_step returns the total and its terms
        loss.backward()
        optimizer.step()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        step()  # warm-up (and compilation)
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        seconds = min(_timed(step) for _ in range(steps))
    images = int(batch["image"].shape[0])
    return {"images/s": images / seconds, "step s": seconds, "GFLOP": counter.get_total_flops() / 1e9,
            "GFLOP/s": counter.get_total_flops() / seconds / 1e9}


class LoopClock(pl.Callback):
    """Time inside training steps, waiting for data, and in total, over a fit."""

    def __init__(self) -> None:
        self.step = self.wait = 0.0
        self.images = 0
        self._start = self._end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._end is not None:
            self.wait += now - self._end
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._end = time.perf_counter()
        self.step += self._end - self._start
        self.images += int(batch["image"].shape[0])


def training_loop(name: str, steps: int, workers: int | None = None) -> dict[str, float]:
    datamodule, model, config = _build(name)
    if workers is not None:
        datamodule.num_workers = workers
    clock = LoopClock()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=steps, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[clock], num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        total = time.perf_counter() - start
    rest = max(0.0, total - clock.step - clock.wait)
    return {"images/s": clock.images / total, "data wait %": 100 * clock.wait / total,
            "steps %": 100 * clock.step / total, "other %": 100 * rest / total}


# SimpleProfiler actions -> the phases of a job (an action counted in one phase only)
PHASES = {
    "training steps": lambda a: a == "run_training_batch",
    "data wait": lambda a: a.endswith("_dataloader_next") or a.endswith("].val_next") or a.endswith("].test_next"),
    "validation steps": lambda a: a.endswith(".validation_step"),
    "test steps": lambda a: a.endswith(".test_step"),
    "explanation callbacks": lambda a: a.startswith("[Callback]") and a[len("[Callback]"):].startswith(
        ("ExplanationImages", "LocalizationMetrics", "FewShotExplanations", "EmbeddingWriter")),
    "evaluation (epoch end)": lambda a: a.startswith("[LightningModule]") and a.endswith(
        ("on_validation_epoch_end", "on_test_epoch_end")),
    "checkpoints": lambda a: a == "save_checkpoint",
}


def whole_job(name: str, epochs: int | None, extra: Sequence[str] = ()) -> dict[str, float]:
    """``train.py fit`` of the config under ``SimpleProfiler``: seconds per phase, and the test metric."""
    train_main = runpy.run_path(str(REPO / "train.py"), run_name="train")["main"]  # the command, not a package

    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        # the profiler's table goes to a file in the run's folder, not over this script's own table
        profiler = '{"class_path": "lightning.pytorch.profilers.SimpleProfiler", "init_args": {"filename": "profile"}}'
        args = ["fit", "--config", str(REPO / "configs" / f"{name}.yaml"), "--trainer.profiler", profiler,
                "--trainer.enable_progress_bar", "false"]
        if epochs:
            args += ["--trainer.max_epochs", str(epochs)]
        args += list(extra)
        os.chdir(tmp)  # the config's relative runs/ folder (logs, checkpoints) goes there
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cli = train_main(args)
        finally:
            os.chdir(here)
        total = time.perf_counter() - start
        profile = cli.trainer.profiler
        assert isinstance(profile, SimpleProfiler)
        seconds = {phase: 0.0 for phase in PHASES}
        for action, durations in profile.recorded_durations.items():
            for phase, matches in PHASES.items():
                if matches(action):
                    seconds[phase] += sum(durations)
                    break
        seconds["other"] = max(0.0, total - sum(seconds.values()))
        seconds["total"] = total
        metrics = cli.trainer.callback_metrics
        monitor = next(m for m in ("test/mAP", "test/acc", "test/recall@1") if m in metrics)
        seconds[monitor] = float(metrics[monitor])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=6, help="timed bare steps per variant (the best is kept)")
    parser.add_argument("--loop-steps", type=int, default=12, help="batches of the timed training loop")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile (minutes to compile)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="data-loader workers of the loop")
    parser.add_argument("--job-epochs", type=int, default=None,
                        help="epochs of the whole-job profile (default: the config's; 0: skip it)")
    parser.add_argument("--parts", nargs="+", choices=("bare", "loop", "job"), default=["bare", "loop", "job"],
                        help="which of the three tables to measure")
    parser.add_argument("--job-args", nargs=argparse.REMAINDER, default=[],
                        help="the rest of the line goes to train.py fit of the whole job, e.g. "
                             "--job-args --data.init_args.num_workers 0")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"host: {os.cpu_count()} cores, torch {torch.__version__}, {threads} threads; 2048x2048 float32 matmul "
          f"{matmul_gflops():.1f} GFLOP/s ({threads} threads)")
    if "bare" in args.parts:
        print_bare_steps(args.configs, args.steps, args.compile)
    if "loop" in args.parts:
        print_loops(args.configs, args.loop_steps, args.workers)
    if "job" in args.parts and args.job_epochs != 0:
        print_jobs(args.configs, args.job_epochs, args.job_args)


def print_bare_steps(configs: Sequence[str], steps: int, compile_: bool) -> None:
    variants = ["default", "channels_last", "bf16", "1 thread"] + (["compile"] if compile_ else [])
    print("| config | variant | batch | images/s | step (s) | GFLOP/step | GFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in configs:
        for variant in variants:
            datamodule, model, config = _build(name)
            batch = next(iter(datamodule.train_dataloader()))
            previous = torch.get_num_threads()
            if variant == "1 thread":
                torch.set_num_threads(1)
            try:
                result = bare_step(model, batch, steps, variant, int(config["trainer"].get("max_epochs", 1)))
            except Exception as err:  # noqa: BLE001 - a variant this CPU or model cannot run is reported
                print(f"| {name} | {variant} | - | failed: {type(err).__name__}: {str(err)[:60]} | | | |")
                continue
            finally:
                torch.set_num_threads(previous)
            print(f"| {name} | {variant} | {int(batch['image'].shape[0])} | {result['images/s']:.1f} | "
                  f"{result['step s']:.3f} | {result['GFLOP']:.1f} | {result['GFLOP/s']:.1f} |", flush=True)


def print_loops(configs: Sequence[str], steps: int, workers: Sequence[int]) -> None:
    print("\n| config | workers | loop images/s | data wait % | steps % | other % |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in configs:
        for count in workers:
            loop = training_loop(name, steps, count)
            print(f"| {name} | {count} | {loop['images/s']:.1f} | {loop['data wait %']:.1f} | "
                  f"{loop['steps %']:.1f} | {loop['other %']:.1f} |", flush=True)


def print_jobs(configs: Sequence[str], epochs: int | None, extra: Sequence[str]) -> None:
    phases = [*PHASES, "other"]
    print("\n| config | wall (s) | " + " | ".join(f"{p} %" for p in phases) + " | test metric |")
    print("| --- " * (len(phases) + 3) + "|")
    for name in configs:
        job = whole_job(name, epochs, extra)
        metric = next(k for k in job if k.startswith("test/"))
        print(f"| {name} | {job['total']:.1f} | " + " | ".join(f"{100 * job[p] / job['total']:.1f}" for p in phases)
              + f" | {metric} {job[metric]:.4f} |", flush=True)


if __name__ == "__main__":
    main()
