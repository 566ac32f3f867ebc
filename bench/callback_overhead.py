"""Cost of the explanation callbacks on a validation epoch (by default the main job's,
``configs/cama_synthetic.yaml``).

Builds the config's data module and model from the YAML (random weights, or ``--ckpt``), then
runs ``trainer.validate`` on the whole validation set, interleaved: without callbacks, with the
YAML's explanation callbacks (``callbacks.*`` entries; ``--defaults`` uses their class defaults
instead), repeated ``--reps`` times after one warm-up run. Printed:

* the validation epoch's wall time with and without the callbacks (medians; from the epoch start
  to ``on_validation_end``, so the model's ranking metric is included), and the overhead;
* the time spent inside the callbacks' own hooks, and for each epoch with callbacks the ratio of
  that time to the rest of the *same* epoch: the overhead measured directly, far less sensitive to
  other processes on a shared machine than the difference of two epochs run minutes apart (the
  target is <= 10%).
* with ``--limit_val_batches`` below 1 (a real-size set whose whole epoch takes too long): the whole
  epoch estimated from the batches run (their time x all batches / batches run) and the hooks'
  share of that estimate -- an upper bound of the share, since probes the few batches did not hold
  are forwarded again by the callbacks.

Usage::

    .venv/bin/python bench/callback_overhead.py [--reps 2] [--ckpt PATH] [--defaults] [--threads N]

Images go to a TensorBoard logger in a temporary folder, as in the main job.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from cama.checkpoint_files import checkpoint_state_dict, read_checkpoint
from cama.loading import instantiate_callbacks, instantiate_config, read_config

REPO = Path(__file__).resolve().parents[1]


class EpochClock(pl.Callback):
    """Wall time from ``on_validation_epoch_start`` to ``on_validation_end`` (put it first), and of
    the batches (first batch start to last batch end) and of the epoch end (the callbacks' and the
    module's ``on_validation_epoch_end``, logging)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.batches: list[float] = []
        self._start = self._first = self._last = 0.0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        self._first = 0.0

    def on_validation_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self._first = self._first or time.perf_counter()

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._last = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.times.append(time.perf_counter() - self._start)
        self.batches.append(self._last - self._first)


HOOKS = (
    "on_validation_epoch_start",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_validation_epoch_end",
)


def timed_hooks(callback: pl.Callback, record: list[float]) -> pl.Callback:
    """Make the callback's validation hooks add their wall time to ``record``: one entry per epoch,
    summed over the hooks (the epoch-end hook closes the entry)."""
    pending = [0.0]

    def timed(name: str):
        hook = getattr(callback, name)

        def wrapped(*args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            hook(*args, **kwargs)
            pending[0] += time.perf_counter() - start
            if name == "on_validation_epoch_end":
                record.append(pending[0])
                pending[0] = 0.0

        return wrapped

    for name in HOOKS:
        setattr(callback, name, timed(name))
    return callback


def per_epoch_hooks(hook_times: list[float], count: int) -> list[float]:
    """The hooks' time of each epoch: ``count`` callbacks' entries summed."""
    return [sum(hook_times[i : i + count]) for i in range(0, len(hook_times), count)]


def explanation_callbacks(config: dict[str, Any], defaults: bool) -> list[pl.Callback]:
    """The config's ``callbacks.*`` entries, with their YAML arguments or (``defaults``) none."""
    if defaults:
        specs = (config.get("trainer") or {}).get("callbacks") or []
        config = {"trainer": {"callbacks": [{"class_path": s["class_path"]} for s in specs]}}
    found = instantiate_callbacks(config, prefix="callbacks.")
    if not found:
        raise SystemExit("the config enables no callbacks.* entry")
    return found


def settings(obj: Any, prefix: str = "") -> dict[str, Any]:
    """The plain settings of a callback (numbers, strings, flags, tuples) and of the collaborators it
    holds (its schedule, probes, scorer: one level down, as ``schedule.every_n_epochs``)."""
    out: dict[str, Any] = {}
    for k, v in vars(obj).items():
        if k.startswith("_") or callable(v):
            continue
        if v is None or isinstance(v, (bool, int, float, str, tuple)):
            out[prefix + k] = v
        elif not prefix and hasattr(v, "__dict__") and not isinstance(v, torch.Tensor):
            out.update(settings(v, f"{k}."))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO / "configs" / "cama_synthetic.yaml"))
    parser.add_argument("--ckpt", help="load these weights (a Lightning checkpoint) into the model")
    parser.add_argument("--reps", type=int, default=2, help="timed validation epochs of each kind")
    parser.add_argument(
        "--defaults", action="store_true", help="the callbacks' class defaults, not the YAML's"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--limit_val_batches", type=float, default=1.0, help="for a quick try only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = read_config(args.config)
    pl.seed_everything(int(config.get("seed_everything", 0)), verbose=False)
    model, datamodule = instantiate_config(config)
    if args.ckpt:
        model.load_state_dict(checkpoint_state_dict(read_checkpoint(args.ckpt, "--ckpt"), args.ckpt, "--ckpt"))
    datamodule.setup("validate")
    if hasattr(datamodule, "num_query"):  # re-ID
        evaluated = f"{datamodule.num_query} queries + {len(datamodule.gallery_dataset)} gallery images"
    else:  # episodes, or a labelled evaluation set
        loader = datamodule.val_dataloader()
        evaluated = f"{len(loader)} validation batches over {len(loader.dataset)} images"
    print(
        f"config {args.config}: {evaluated}, image size {datamodule.image_size}, "
        f"torch threads {torch.get_num_threads()}, cores {os.cpu_count()}"
    )

    hook_times: list[float] = []
    callbacks = [timed_hooks(cb, hook_times) for cb in explanation_callbacks(config, args.defaults)]
    for cb in callbacks:
        shown = settings(cb)
        print(f"  {type(cb).__name__}: " + ", ".join(f"{k}={v}" for k, v in shown.items() if not k.endswith("taus")))
    epochs: dict[str, list[float]] = {"without": [], "with": []}
    batch_times: list[float] = []  # the batches' time of each timed epoch without callbacks
    batches_run = [0]

    with tempfile.TemporaryDirectory() as tmp:

        def validate(kind: str, record: bool) -> None:
            clock = EpochClock()
            extra = callbacks if kind == "with" else []
            trainer = pl.Trainer(
                accelerator="cpu",
                devices=1,
                logger=TensorBoardLogger(tmp, name=kind),
                callbacks=[clock, *extra],
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                limit_val_batches=args.limit_val_batches,
            )
            before = len(hook_times)
            trainer.validate(model, datamodule=datamodule, verbose=False)
            if record:
                epochs[kind].append(clock.times[-1])
                if kind == "without":
                    batch_times.append(clock.batches[-1])
                    batches_run[0] = int(trainer.num_val_batches[0])
            else:
                del hook_times[before:]
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            tail = clock.times[-1] - clock.batches[-1]
            print(f"    batches {clock.batches[-1]:6.2f} s, before the first batch + epoch end {tail:5.2f} s")
            print(
                f"  {'timed' if record else 'warm-up'} {kind:>7}: {clock.times[-1]:7.2f} s (load {load:.2f})",
                flush=True,
            )

        validate("without", record=False)
        for _ in range(args.reps):
            validate("with", record=True)
            validate("without", record=True)

    if args.limit_val_batches < 1:
        total, run = len(datamodule.val_dataloader()), batches_run[0]
        whole = statistics.median(batch_times) * total / run
        share = 100 * statistics.median(per_epoch_hooks(hook_times, len(callbacks))) / whole
        print(f"whole epoch estimated from {run} of {total} batches: {whole:.0f} s; hooks / it: {share:.2f}%")
    without = statistics.median(epochs["without"])
    with_cb = statistics.median(epochs["with"])
    per_epoch = per_epoch_hooks(hook_times, len(callbacks))
    inside = statistics.median(per_epoch)
    ratios = [100 * h / (e - h) for h, e in zip(per_epoch, epochs["with"])]
    print(f"validation epoch without callbacks: {without:.2f} s (median of {len(epochs['without'])})")
    print(
        f"validation epoch with callbacks:    {with_cb:.2f} s (median of {len(epochs['with'])}): "
        f"{100 * (with_cb - without) / without:+.1f}%"
    )
    print(
        f"time inside the callbacks' hooks:   {inside:.2f} s per epoch (median) = "
        f"{100 * inside / without:.1f}% of the median epoch without them"
    )
    for i, cb in enumerate(callbacks):  # each callback's entry of every epoch (in callback order)
        print(f"  of which {type(cb).__name__}: {statistics.median(hook_times[i :: len(callbacks)]):.2f} s")
    print(
        "hooks / rest of the same epoch:     "
        + ", ".join(f"{r:.1f}%" for r in ratios)
        + f" -> median {statistics.median(ratios):.1f}% (target <= 10%)"
    )


if __name__ == "__main__":
    main()
