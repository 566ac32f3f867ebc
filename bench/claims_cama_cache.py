"""The re-ID claims bench's results per (variant, seed), cached on disk so that the bench can run over
several sittings.

Each finished run is written at once to ``<root>/<variant>/seed<N>.json`` (``root`` is
``results/claims/cama`` for the bench, the variant's name without spaces and with ``+`` as ``_``:
``IDE_BN``, ``MltB-3_L_id``, ``CAMA-3``, ...): its test metrics and map measures (``measures``), each
test query's AP and rank-1 hit (``per_query``), the sanity check where the variant has one, its own
wall time (``seconds``) and the host's matmul rate, and the ``settings`` it ran with (a digest of the
config's data, model and trainer sections, the bench's data overrides, the epochs). A later sitting
reuses an entry whose settings match and runs the rest; entries of other settings are ignored (and
overwritten when that run is redone).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claims_common import RESULTS

from cama.loading import read_config

CACHE_ROOT = RESULTS / "claims" / "cama"


def variant_dir(name: str) -> str:
    """``"MltB-3 + L_id"`` -> ``"MltB-3_L_id"`` (as the checkpoints are named)."""
    return name.replace(" ", "").replace("+", "_")


def run_settings(config_path: Path, data_overrides: dict[str, Any], epochs: int | None) -> dict[str, Any]:
    """What a cached run must share with this sitting to count: the config's sections that decide the
    run (comments and loggers aside), the bench's data overrides and the epochs trained."""
    config = read_config(config_path)
    trainer = config.get("trainer") or {}
    decisive = {"data": config.get("data"), "model": config.get("model"),
                "max_epochs": trainer.get("max_epochs")}
    digest = hashlib.sha256(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"config": config_path.name, "config_digest": digest, "data_overrides": data_overrides,
            "epochs": int(epochs or trainer.get("max_epochs", 1))}


def host() -> dict[str, Any]:
    return {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}


@dataclass
class RunCache:
    """The cache of one bench setting (module docstring)."""

    root: Path
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def path(self, variant: str, seed: int) -> Path:
        return self.root / variant_dir(variant) / f"seed{seed}.json"

    def load(self, variant: str, seed: int) -> dict[str, Any] | None:
        """The cached entry, or None when there is none or it ran with other settings."""
        path = self.path(variant, seed)
        if not path.exists():
            return None
        entry = json.loads(path.read_text())
        if entry.get("settings") != self.settings:
            self.notes.append(f"{path}: other settings ({entry.get('settings')}), not used")
            return None
        return entry

    def save(self, variant: str, seed: int, entry: dict[str, Any]) -> Path:
        """Written whole or not at all (a temporary file renamed): an interrupted sitting leaves no
        half entry."""
        path = self.path(variant, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {**entry, "variant": variant, "seed": seed, "settings": self.settings, "host": host()}
        temporary = path.with_suffix(".json.part")
        temporary.write_text(json.dumps(entry, indent=1, sort_keys=True))
        temporary.replace(path)
        return path

    def cached_seeds(self, variants: list[str]) -> list[int]:
        """The seeds with an entry of these settings for every variant, ascending."""
        seeds: set[int] | None = None
        for variant in variants:
            files = (self.root / variant_dir(variant)).glob("seed*.json")
            names = [p.stem.removeprefix("seed") for p in files]
            found = {int(n) for n in names if n.isdigit()}
            found = {s for s in found if self.load(variant, s) is not None}
            seeds = found if seeds is None else seeds & found
        return sorted(seeds or ())

    def collect(self, variants: list[str], seeds: list[int]) -> dict[str, Any]:
        """The entries of ``seeds`` as the rows read them: ``per_seed[variant][measure] = [value per
        seed]``, ``per_query[variant] = [{"query", "ap", "rank1"} per seed]``, ``sanity[variant] =
        [result per seed]`` and ``seconds``: the runs' own wall times, summed."""
        per_seed: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
        per_query: dict[str, list[dict[str, list]]] = {v: [] for v in variants}
        sanity: dict[str, list[dict[str, Any]]] = {}
        seconds = 0.0
        for seed in seeds:
            for variant in variants:
                entry = self.load(variant, seed)
                if entry is None:
                    raise FileNotFoundError(f"no cached run of {variant} seed {seed} "
                                            f"({self.path(variant, seed)})")
                for key, value in entry["measures"].items():
                    per_seed[variant].setdefault(key, []).append(value)
                per_query[variant].append(entry["per_query"])
                if entry.get("sanity") is not None:
                    sanity.setdefault(variant, []).append(entry["sanity"])
                seconds += float(entry["seconds"])
        return {"per_seed": per_seed, "per_query": per_query, "sanity": sanity, "seconds": seconds}
