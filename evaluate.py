"""Score saved embeddings without the model: ``python evaluate.py runs/<run>/predictions/predictions.pt``.

The file is what ``train.py predict`` writes (:mod:`callbacks.embedding_writer`): ``embedding`` and
``index`` with, for re-ID, ``pid``, ``camid`` and ``is_query``, or, for retrieval, ``label``. Re-ID
files are scored by :class:`cama.metrics.ReIDRankMetric` (Market-1501 protocol: CMC, mAP, mINP),
retrieval files by :class:`cama.metrics.RetrievalMetric` (Recall@K, MAP@R) -- the code the
models' validation uses, so the numbers are those of ``train.py validate`` on the same weights;
``--rerank`` adds the k-reciprocal re-ranked ones (``*_rerank``). The results are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cama.errors import InputError, exit_on_input_error
from cama.metrics import ReIDRankMetric, RetrievalMetric

__all__ = ["evaluate_file", "main"]

REID_KEYS = ("embedding", "pid", "camid", "is_query", "index")
RETRIEVAL_KEYS = ("embedding", "label", "index")


def evaluate_file(
    path: str | Path, max_rank: int = 50, distance: str = "euclidean", rerank: bool = False
) -> dict[str, float]:
    """The metrics of a predictions file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"predictions file not found: {path}")
    try:
        table: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise InputError(f"{path} is not a predictions file written by `train.py predict`: {err}") from err
    if not isinstance(table, dict):
        raise InputError(f"{path} holds a {type(table).__name__}, not the dict `train.py predict` writes")
    if all(k in table for k in REID_KEYS):
        metric: Any = ReIDRankMetric(max_rank=max_rank, distance=distance, rerank=rerank)
        metric.update(*(table[k] for k in REID_KEYS))
    elif all(k in table for k in RETRIEVAL_KEYS):
        metric = RetrievalMetric(rerank=rerank)
        metric.update(*(table[k] for k in RETRIEVAL_KEYS))
    else:
        raise InputError(
            f"{path} has keys {sorted(table)}; a re-ID file needs {list(REID_KEYS)}, a retrieval file "
            f"{list(RETRIEVAL_KEYS)}"
        )
    return {name: float(value) for name, value in metric.compute().items()}


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", help="the .pt file `train.py predict` wrote")
    parser.add_argument("--max_rank", type=int, default=50, help="CMC length (re-ID)")
    parser.add_argument("--distance", default="euclidean", choices=["euclidean", "cosine"], help="re-ID ranking")
    parser.add_argument("--rerank", action="store_true", help="also the k-reciprocal re-ranked numbers (*_rerank)")
    args = parser.parse_args(argv)
    results = evaluate_file(args.predictions, args.max_rank, args.distance, args.rerank)
    print(json.dumps(results, indent=2, sort_keys=True))
    return results


if __name__ == "__main__":
    with exit_on_input_error("evaluate.py"):
        main()
    sys.exit(0)
