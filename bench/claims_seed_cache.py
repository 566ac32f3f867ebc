"""Per-seed results of a claims bench kept on disk, so that a bench can run over several sittings.

A seed's results go to one JSON file as soon as the seed finishes, with the settings that produced
them; the next run reads them back instead of training again when the settings are the same (and it
is not told ``fresh``), and runs the seed again when they differ.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["cached_seed"]


def cached_seed(path: Path, settings: dict[str, Any], fresh: bool,
                compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """``(results, reused)``: the results stored at ``path`` for these ``settings``, or ``compute()``'s,
    written there (atomically: a sitting cut short leaves no half-written file)."""
    if not fresh and path.exists():
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError:
            stored = {}
        if stored.get("settings") == settings and "results" in stored:
            return stored["results"], True
        if stored:
            print(f"  {path.name}: stored with other settings {stored.get('settings')}: running it again",
                  flush=True)
    results = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps({"settings": settings, "results": results}, indent=1, sort_keys=True))
    os.replace(partial, path)
    return results, False
