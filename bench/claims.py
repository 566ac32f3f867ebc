"""The four papers' claims in miniature, with intervals: runs the claims benches and writes
``results/claims.md``.

Each bench trains what it needs on the embedded synthetic data for every seed and writes its rows
to ``results/claims/<name>.json`` (:mod:`claims_common`):

* ``claims_cama.py``: cama-ram Tables 4 and 5, the branches' overlap, the part evidence the maps
  point at (items 1-2), and the sanity checks of the re-ID maps (item 6);
* ``claims_classifier.py --config cluttered``: dist-cam Table 1 and ltgrad-cam Tables 1-2 / Fig. 4-5
  (items 3-4) on the cluttered 128 px scene (``results/claims/classifier_cluttered.json``; the 64 px
  scene of ``--config synthetic`` is too coarse to decide them: its 4x4 maps, and a colour map
  without a network that beats every map, keep it out of the table);
* ``claims_fam.py``: fam Tables I, II, IV on the ProtoNet and the retrieval model (item 5), dist-cam
  Table 1's measures on both and Dist-CAM's eps (item 3), FAM on signed maps and the variants beyond
  the papers (descriptive rows, ``holds`` ``n/a``).

This script runs them one after the other (``--only`` picks some; ``--assemble`` runs none and only
rewrites the table from the JSON files), then writes the table: claim, the paper's number, ours
(mean ± half-width of the 95% t-interval over the seeds), whether it holds, and the sanity column:
how the explanation methods a row rests on fared in the cascading randomization test. Below the
table, ``bench/claims_reading.md``: a paragraph per item, written by hand from the table, on
whether each claim holds in miniature and why (read it again when the numbers change).

Usage::

    .venv/bin/python bench/claims.py [--seeds 0 1 2] [--only cama fam] [--assemble]

The re-ID bench caches each (variant, seed) run (``results/claims/cama/``), the FAM bench each seed
(``results/claims/fam/``), and they run only what is missing, so ``--only cama fam`` can be run over
several sittings.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from claims_common import REPO, RESULTS
from real_scale import matmul_gflops

#: bench -> (its command line in bench/, the rows' JSON in results/claims/)
BENCHES: dict[str, tuple[list[str], str]] = {
    "cama": (["claims_cama.py"], "cama"),
    "classifier": (["claims_classifier.py", "--config", "cluttered"], "classifier_cluttered"),
    "fam": (["claims_fam.py"], "fam"),
}
READING = REPO / "bench" / "claims_reading.md"


def run_benches(names: list[str], seeds: list[int] | None) -> None:
    """Each bench with ``seeds`` (None: its own default, 0 1 2 3 4 for every bench)."""
    for name in names:
        script, *options = BENCHES[name][0]
        command = [sys.executable, str(REPO / "bench" / script), *options]
        command += ["--seeds", *map(str, seeds)] if seeds is not None else []
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=REPO / "bench")


def sanity_column(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per method, how it fared: ``"passes"`` / ``"fails (rho 0.63 on CAMA-2)"``, over the models
    checked."""
    verdicts: dict[str, list[str]] = {}
    for r in rows:
        if "sanity_of" in r:
            mark = "passes" if r["holds"] == "yes" else "fails"
            verdicts.setdefault(r["sanity_of"], []).append(
                f"{mark} on {r['sanity_model']} (ρ {r['final_spearman']:.2f})"
            )
    return {method: "; ".join(sorted(v)) for method, v in verdicts.items()}  # the same order every run


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def assemble(command: str, seconds: float) -> Path:
    rows: list[dict[str, Any]] = []
    extras: dict[str, dict[str, Any]] = {}
    for name, (_, table) in BENCHES.items():
        path = RESULTS / "claims" / f"{table}.json"
        if path.exists():
            data = json.loads(path.read_text())
            rows += data["rows"]
            extras[name] = data
    sanity = sanity_column(rows)
    rows.sort(key=lambda r: int(re.match(r"\d+", r["item"]).group()) if re.match(r"\d+", r["item"]) else 99)
    gflops, threads = matmul_gflops()
    lines = [
        "# The papers' claims in miniature",
        "",
        f"Written by `{command}` ({seconds / 60:.0f} min of wall time for the benches run, "
        f"{platform.processor() or platform.machine()}, {threads} threads, 2048² float32 matmul "
        f"{gflops:.0f} GFLOP/s). Every figure: mean ± half-width of the 95% t-interval over the seeds "
        "(n), on test data unseen in training (re-ID: test identities; few-shot: test classes; "
        "classifier: held-out images). Per-seed numbers: `results/claims/*.json`.",
        "",
        "| item | claim | paper | ours | holds | maps' sanity check | note |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        checks = "; ".join(f"{m}: {sanity[m]}" for m in r.get("methods", []) if m in sanity)
        lines.append("| " + " | ".join(cell(x) for x in (
            r["item"], r["claim"], r["paper"], r["ours"], r["holds"], checks, r.get("note", "")
        )) + " |")
    lines += ["", "Wall time per bench: " + ", ".join(
        f"{name} {data.get('seconds', float('nan')) / 60:.1f} min" for name, data in extras.items()
    ) + ".", ""]
    if READING.exists():
        lines += ["## What each item says", "", READING.read_text().strip(), ""]
    plots = sorted((RESULTS / "claims").glob("*.png"))
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](claims/{p.name})" for p in plots] + [""]
    out = RESULTS / "claims.md"
    out.write_text("\n".join(lines))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="every bench's seeds (default: each bench's own)")
    parser.add_argument("--only", nargs="+", choices=list(BENCHES), default=list(BENCHES))
    parser.add_argument("--assemble", action="store_true", help="run no bench; rewrite the table from the JSON files")
    args = parser.parse_args()
    if not args.assemble:
        run_benches(args.only, args.seeds)
    # the benches' own wall times (a resumed bench counts its earlier sittings' runs too)
    tables = [RESULTS / "claims" / f"{table}.json" for _, table in BENCHES.values()]
    seconds = sum(json.loads(p.read_text()).get("seconds", 0.0) for p in tables if p.exists())
    command = "python bench/claims.py" + (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds else "")
    print(f"wrote {assemble(command, seconds)}")


if __name__ == "__main__":
    main()
