"""Score saved embeddings without the model: ``python evaluate.py runs/<run>/predictions/predictions.pt``.

The file is what ``train.py predict`` writes (:mod:`callbacks.embedding_writer`): ``embedding`` and
``index`` with, for re-ID, ``pid``, ``camid`` and ``is_query``, or, for retrieval, ``label``. Re-ID
files are scored by :class:`cama.metrics.ReIDRankMetric` (Market-1501 protocol: CMC, mAP, mINP),
retrieval files by :class:`cama.metrics.RetrievalMetric` (Recall@K, MAP@R) -- the code the
models' validation uses, so the numbers are those of ``train.py validate`` on the same weights;
``--rerank`` adds the k-reciprocal re-ranked ones (``*_rerank``). The results are printed as JSON.

The file's ``task`` (``cama-predictions-2``) says which: a few-shot or classification file is refused
by name (its accuracy comes from ``train.py test``), and so is a file whose keys do not fit its task;
a file without ``task`` (``cama-predictions-1``) is scored by its keys. A missing, empty, truncated
or foreign file ends with one line naming it (:func:`cama.checkpoint_files.read_torch_file`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cama.errors import InputError, exit_on_input_error
from cama.metrics import ReIDRankMetric, RetrievalMetric
from cama.checkpoint_files import read_torch_file

__all__ = ["evaluate_file", "main"]

REID_KEYS = ("embedding", "pid", "camid", "is_query", "index")
RETRIEVAL_KEYS = ("embedding", "label", "index")
#: the tasks of the predictions files that evaluate.py does not score, and where their numbers come from
NOT_SCORED = {
    "few-shot": "the few-shot accuracy comes from `train.py test` (it classifies the test episodes)",
    "classification": "the classification accuracy comes from `train.py test`",
}


def evaluate_file(
    path: str | Path, max_rank: int = 50, distance: str = "euclidean", rerank: bool = False
) -> dict[str, float]:
    """The metrics of a predictions file (see the module docstring)."""
    path = Path(path)
    table = read_torch_file(str(path), "predictions file", "a predictions file written by `train.py predict`")
    if not isinstance(table, dict):
        raise InputError(f"{path} holds a {type(table).__name__}, not the dict `train.py predict` writes")
    task = _task(table, path)
    if task == "re-id":
        metric: Any = ReIDRankMetric(max_rank=max_rank, distance=distance, rerank=rerank)
        metric.update(*(table[k] for k in REID_KEYS))
    else:
        metric = RetrievalMetric(rerank=rerank)
        metric.update(*(table[k] for k in RETRIEVAL_KEYS))
    return {name: float(value) for name, value in metric.compute().items()}


def _task(table: dict[str, Any], path: Path) -> str:
    """``"re-id"`` or ``"retrieval"``: the file's ``task`` when its keys fit it, else by its keys (an
    older file without ``task``); :class:`InputError` for any other task or keys."""
    task = table.get("task")
    if isinstance(task, str) and task in NOT_SCORED:
        raise InputError(f"{path} holds {task} predictions (task {task!r}); evaluate.py scores re-ID and "
                         f"retrieval files; {NOT_SCORED[task]}")
    if task not in (None, "re-id", "retrieval"):
        raise InputError(f"{path} holds predictions of an unknown task {task!r}; evaluate.py scores the "
                         "tasks 're-id' and 'retrieval'")
    by_keys = "re-id" if all(k in table for k in REID_KEYS) else "retrieval" if all(
        k in table for k in RETRIEVAL_KEYS) else None
    if by_keys is None or (task is not None and task != by_keys):
        said = f"says task {task!r} but " if task is not None else ""
        needed = f"a re-ID file needs {list(REID_KEYS)}, a retrieval file {list(RETRIEVAL_KEYS)}"
        raise InputError(f"{path} {said}has keys {sorted(table)}; {needed}")
    return by_keys


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
