"""What the claims benches share: training a config's model per seed, 95% intervals, result rows.

Each ``bench/claims_<paper>.py`` trains what it needs from the synthetic data with
:func:`train_config` (in this process, no callbacks, no checkpoints on disk: the last epoch's
weights), measures on the test split, and writes its rows with :func:`write_rows` to
``results/claims/<name>.json``; ``bench/claims.py`` runs them and assembles ``results/claims.md``.

A row is one claim: ``{"item", "claim", "paper", "ours", "holds", "note"}`` where ``ours`` is
already formatted (``mean +- half-width`` of a 95% t-interval over seeds, :func:`mean_ci`) and
``holds`` is ``"yes"``, ``"no"`` or ``"partly"`` (``"n/a"``: a descriptive row, no claim to decide).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from scipy import stats

from cama.loading import instantiate_config, read_config

REPO = Path(__file__).resolve().parents[1]

RESULTS = REPO / "results"
DEFAULT_SEEDS = (0, 1, 2)
#: a row's verdicts; "n/a": a descriptive row (:func:`row`)
HOLDS = ("yes", "no", "partly", "n/a")


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the two-sided ``confidence`` t-interval (half-width 0 for one value)."""
    values = [float(v) for v in values]
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)


def fmt(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    """``mean +- half-width`` (95%) of ``values * scale``, and the number of seeds."""
    mean, half = mean_ci([v * scale for v in values])
    return f"{mean:.{digits}f} ± {half:.{digits}f} (n={len(values)})"


def train_config(
    config_path: str | Path,
    seed: int,
    model_overrides: dict[str, Any] | None = None,
    data_overrides: dict[str, Any] | None = None,
    max_epochs: int | None = None,
    root: str | Path | None = None,
) -> tuple[pl.LightningModule, pl.LightningDataModule, dict[str, float]]:
    """Train the YAML's model on its data module with ``seed``; return the model (last epoch, eval
    mode), the data module (set up for ``test``) and the test loop's metrics.

    The trainer is the config's length (``max_epochs`` overrides it) with no validation, callbacks,
    logger or checkpoints: a bench run leaves nothing behind but what the caller writes.
    """
    config = read_config(config_path)
    pl.seed_everything(seed, workers=True)
    model, datamodule = instantiate_config(config, data_overrides, model_overrides)
    trainer_cfg = config.get("trainer") or {}
    trainer = pl.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=int(max_epochs or trainer_cfg.get("max_epochs", 1)),
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root or RESULTS / "claims" / "tmp"),
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    results = trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    metrics["train_seconds"] = time.perf_counter() - start
    model.eval()
    return model, datamodule, metrics


def train_and_measure(
    config_path: str | Path,
    seed: int,
    data_overrides: dict[str, Any] | None,
    max_epochs: int | None,
    threads: int | None,
    measure: Any,
) -> dict[str, Any]:
    """:func:`train_config`, then ``measure(model, datamodule, metrics, device)`` on ``threads`` CPU
    threads (the callbacks' :func:`~callbacks.base.cpu_threads`; training keeps torch's), timed:
    the returned dict gets ``train_seconds`` and ``seconds``."""
    from callbacks.base import cpu_threads

    start = time.perf_counter()
    model, datamodule, metrics = train_config(config_path, seed, data_overrides=data_overrides, max_epochs=max_epochs)
    device = pick_device()
    model.to(device).eval()
    trained = time.perf_counter()
    with cpu_threads(threads, device):
        out = measure(model, datamodule, metrics, device)
    out["train_seconds"], out["seconds"] = trained - start, time.perf_counter() - start
    return out


def row(
    item: str, claim: str, paper: str, ours: str, holds: str, note: str = "", methods: Sequence[str] = ()
) -> dict[str, Any]:
    """One claim. ``holds``: ``"yes"``, ``"no"``, ``"partly"``, or ``"n/a"`` for a descriptive row (a
    measurement with no paper claim to decide, e.g. a variant beyond the papers or a numerical
    setting). ``methods``: the explanation methods its numbers rest on (the table's sanity column
    shows how each fared in the cascading randomization test)."""
    if holds not in HOLDS:
        raise ValueError(f"holds must be one of {HOLDS}, not {holds!r}")
    return {"item": item, "claim": claim, "paper": paper, "ours": ours, "holds": holds, "note": note,
            "methods": list(methods)}


def write_rows(name: str, rows: list[dict[str, str]], extra: dict[str, Any] | None = None) -> Path:
    """``results/claims/<name>.json``: the rows plus ``extra`` (raw per-seed numbers, wall time)."""
    path = RESULTS / "claims" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows, **(extra or {})}, indent=2, sort_keys=True))
    return path


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def line_plot(
    series: dict[str, Sequence[float]],
    x_labels: Sequence[str],
    path: str | Path,
    title: str,
    y_label: str,
    y_range: tuple[float, float] = (0.0, 1.0),
    errors: dict[str, Sequence[float]] | None = None,
    size: tuple[int, int] = (720, 420),
) -> Path:
    """A PNG line chart (Pillow only: no plotting library is a dependency): one line per series
    over the categorical ``x_labels``, optional error bars (``errors``: half-widths), a legend."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = size
    left, right, top, bottom = 64, 170, 36, 56
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    lo, hi = y_range

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (width - left - right) * (i / max(len(x_labels) - 1, 1))
        y = top + (height - top - bottom) * (1 - (min(max(v, lo), hi) - lo) / (hi - lo))
        return x, y

    draw.text((left, 8), title, fill="black", font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for t in range(6):
        v = lo + (hi - lo) * t / 5
        _, y = xy(0, v)
        draw.line([left - 4, y, left, y], fill="black")
        draw.line([left + 1, y, width - right - 1, y], fill=(225, 225, 225))
        draw.text((8, y - 7), f"{v:.2f}", fill="black", font=font)
    for i, label in enumerate(x_labels):
        x, _ = xy(i, lo)
        draw.text((x - 3 * len(label), height - bottom + 6), label, fill="black", font=font)
    draw.text((left, height - 22), y_label, fill="black", font=font)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
               (140, 86, 75), (227, 119, 194), (127, 127, 127)]
    for n, (name, values) in enumerate(series.items()):
        colour = colours[n % len(colours)]
        points = [xy(i, v) for i, v in enumerate(values) if v == v]  # NaN left out
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for i, (x, y) in enumerate(points):
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
            if errors and name in errors:
                half = errors[name][i]
                _, y_hi = xy(i, values[i] + half)
                _, y_lo = xy(i, values[i] - half)
                draw.line([x, y_lo, x, y_hi], fill=colour)
        ly = top + 6 + 18 * n
        draw.line([width - right + 10, ly + 7, width - right + 30, ly + 7], fill=colour, width=3)
        draw.text((width - right + 36, ly), name, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
