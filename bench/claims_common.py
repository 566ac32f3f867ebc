"""What the claims benches share: training a config's model per seed, 95% intervals, result rows.

Each ``bench/claims_<paper>.py`` trains what it needs from the synthetic data with
:func:`train_config` (in this process, no callbacks, no checkpoints on disk: the last epoch's
weights), measures on the test split, and writes its rows with :func:`write_rows` to
``results/claims/<name>.json``; ``bench/claims.py`` runs them and assembles ``results/claims.md``.

A row is one claim: ``{"item", "claim", "paper", "ours", "holds", "note"}`` where ``ours`` is
already formatted (``mean +- half-width`` of a 95% t-interval over seeds, :func:`mean_ci`) and
``holds`` is ``"yes"``, ``"no"`` or ``"partly"``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from explain import build_datamodule, build_model_from_config, load_config  # noqa: E402

RESULTS = REPO / "results"
DEFAULT_SEEDS = (0, 1, 2)


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
    config = load_config(config_path)
    pl.seed_everything(seed, workers=True)
    datamodule = build_datamodule(config, data_overrides)
    model = build_model_from_config(config, getattr(datamodule, "num_classes", 0), model_overrides)
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


def row(item: str, claim: str, paper: str, ours: str, holds: str, note: str = "") -> dict[str, str]:
    if holds not in ("yes", "no", "partly"):
        raise ValueError(f"holds must be yes, no or partly, not {holds!r}")
    return {"item": item, "claim": claim, "paper": paper, "ours": ours, "holds": holds, "note": note}


def write_rows(name: str, rows: list[dict[str, str]], extra: dict[str, Any] | None = None) -> Path:
    """``results/claims/<name>.json``: the rows plus ``extra`` (raw per-seed numbers, wall time)."""
    path = RESULTS / "claims" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows, **(extra or {})}, indent=2, sort_keys=True))
    return path


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
