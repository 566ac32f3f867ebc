"""Explain a trained model outside training: where it looks, as PNGs, for all three tasks.

Re-ID and retrieval (a model with ``evaluation_embeddings`` / ``reference_provider``)::

    # the evaluation set of a config's data module (the synthetic set needs no files)
    python explain.py --checkpoint runs/cama_synthetic/version_0/checkpoints/last.ckpt \\
        --config configs/cama_synthetic.yaml --methods ram dist_cam fam --top_k 10 --output explanations

    # image files / folders (Market-1501 file names give identities and cameras: green/red frames)
    python explain.py --checkpoint PATH --query q1.jpg q2.jpg --gallery bounding_box_test/ --output out

For every query and method: ``<output>/<query>_<method>.png``, the query and its ``top_k`` ranked
images (green / red frames when identities or classes are known), one row of maps per branch and
one for the summed map (cama-ram Fig. 4 / Fig. 8) and, when a false match comes before the first
true match of the list, a row *why rank r beat the true match* (the map of ``s(q, g-) - s(q, g+)``
on the query and both images, :mod:`cama.explain.contrastive`; ``--no_contrastive``: without it),
and ``rankings.json``. With ``--deletion_steps N``
also ``curves.png`` and ``curves.json``: RISE's deletion and insertion curves of every method's map on
the queries, next to a random map's and a centred prior's, in ``N`` steps, the removed pixels
replaced by ``--deletion_baseline`` (ROAD's noisy linear imputation by default); the scores are the
similarity to the top-ranked image and, when identities are known, the AP and ``1 / rank`` of the
first true match over the whole gallery (:mod:`explain_command.curves`; ``--rerank`` does not
apply to them). With ``--max_sensitivity N`` also ``sensitivity.json``: each method's max-sensitivity
(Yeh et al. 2019) on the queries, ``N`` noisy copies of each in the L-inf ball of
``--sensitivity_radius`` on the ``[0, 1]`` picture scale, the map against the top-ranked image (the
sanity-check callback's maps), the mean over the queries with its 95% interval and each query's value
(:mod:`explain_command.sensitivity`).

Few-shot (a model with ``episode_references``, e.g. ProtoNet)::

    python explain.py --checkpoint PATH --config configs/protonet_synthetic.yaml --methods dist_cam fam --episodes 4
    python explain.py --checkpoint PATH --support supports/ --query q1.jpg queries/ --output out

For every episode and method: ``<output>/<episode>_<method>.png``, as the training callback draws it
(query | first support of the predicted class | map on the query | map on the support), under each
misclassified query a row *why class c- beat the true class* (the map on the query of
``s(q, p_c-) - s(q, p_c+)``, the prototypes of the predicted and the true class,
:mod:`cama.viz.episode_contrast`; ``--no_contrastive``: without it), and ``predictions.json``
(``--max_sensitivity N``: ``sensitivity.json`` too, of the maps on the queries against their
prototype). The maps, references and pictures are the callbacks' (:mod:`cama.viz`,
:mod:`cama.references`). ``rankings.json`` / ``predictions.json`` are rewritten after each query /
episode, so a failure later loses nothing already explained.

Image files (``--query``, ``--gallery``, ``--support``) are decoded once before any work, whatever
their bit depth or colour mode (:func:`datamodules.images.load_image`); an unreadable one is named on
stderr (``explain.py: skipped <file>: <why>``) and left out, and the others are explained.

The model is the checkpoint's (its class saved by ``train.py``, or ``--model_class``), read with
``weights_only=True`` (:func:`cama.loading.load_model`). With ``--config`` the data module is the
config's ``data`` section, read by LightningCLI's parser as ``train.py`` reads it
(:func:`cama.loading.instantiate_data`); ``--data KEY=VALUE`` overrides its init arguments (values
read as YAML, e.g. ``--data image_size=[64,32]``; a dotted key sets a field of a nested option,
``--data synthetic.num_train_ids=10``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from cama.errors import exit_on_input_error
from cama.explain import LAYER_NORMS
from cama.map_scoring import CurveOptions
from cama.metrics.imputation import BASELINES
from cama.loading import (
    checkpoint_image_size,
    instantiate_data,
    load_model,
    read_config,
)
from cama.protocols import EpisodeTask, RankingTask
from cama.references import choose_probes
from cama.viz import METHODS, ModelExplainer, check_methods
from explain_command.common import ExplainError, image_files, readable_images
from explain_command.episodes import datamodule_episodes, explain_episodes, folder_episode
from explain_command.ranking import DatasetRanking, FileRanking, explain_rankings
from explain_command.sensitivity import SensitivityOptions

__all__ = ["main"]


def parse_data_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``--data`` items (``KEY=VALUE``, YAML values; ``outer.inner=VALUE`` sets a field of a nested
    option such as ``synthetic``) as the mapping the data module's options are updated with."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ExplainError(f"--data expects KEY=VALUE, got {item!r}")
        *outer, last = parts = key.strip().split(".")  # synthetic.num_classes=8: a field of a nested option
        if not all(parts):
            raise ExplainError(f"--data: {item!r} has an empty name between its dots")
        place = overrides
        for name in outer:
            place = place.setdefault(name, {})
            if not isinstance(place, dict):
                raise ExplainError(f"--data: {item!r} sets a field of {name!r}, which an earlier item set to "
                                   f"{place!r}")
        place[last] = yaml.safe_load(value)
    return overrides


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="explain.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="Lightning checkpoint (.ckpt) of the model")
    parser.add_argument("--config", help="LightningCLI YAML: the data module (and model class) to use")
    parser.add_argument(
        "--data",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override init arguments of the config's data module (YAML values; synthetic.FIELD=VALUE for the "
        "nested synthetic options)",
    )
    parser.add_argument("--query", nargs="+", help="query image files or folders (instead of --config)")
    parser.add_argument("--gallery", nargs="+", help="gallery folders or files (with --query; re-ID, retrieval)")
    parser.add_argument("--support", help="few-shot: a folder with one sub-folder of support images per class")
    parser.add_argument("--episodes", type=int, default=2, help="few-shot: test episodes explained (with --config)")
    parser.add_argument(
        "--methods", nargs="+", default=["ram", "dist_cam", "fam"], help=f"any of {list(METHODS)}"
    )
    parser.add_argument("--top_k", type=int, default=10, help="gallery images per ranking list")
    parser.add_argument("--no_contrastive", action="store_true",
                        help="no row 'why rank r beat the true match' (the map of s(q, g-) - s(q, g+)) in "
                        "the ranking pictures, nor 'why class c- beat the true class' (s(q, p-) - s(q, p+)) "
                        "in the few-shot pictures")
    parser.add_argument("--rerank", action="store_true",
                        help="re-ID / retrieval: rank by k-reciprocal re-ranked distances (the explained queries as the probe pool)")
    parser.add_argument("--num_queries", type=int, default=8, help="queries explained (few-shot: per episode)")
    parser.add_argument("--query_indices", type=int, nargs="+", help="query indices (with --config)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the query choice (with --config)")
    parser.add_argument("--output", default="explanations", help="folder for the PNGs")
    parser.add_argument(
        "--model_class", help="LightningModule class path (default: the class saved in the checkpoint)"
    )
    parser.add_argument(
        "--image_size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input size for --query/--gallery files (default: the checkpoint's data module)",
    )
    parser.add_argument(
        "--batch_size", type=int, default=64,
        help="images per forward (also Score-CAM's masked and Ablation-CAM's ablated images)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--gradient_layers", nargs="+", help="layers of the layer CAMs (gradient and gradient-free methods)"
    )
    parser.add_argument(
        "--truncation", type=float,
        help="truncation trick percentile (the gradient methods; not Score-CAM, Ablation-CAM, EigenCAM)",
    )
    parser.add_argument(
        "--layer_norm", default="minmax", choices=list(LAYER_NORMS),
        help="several gradient layers: min-max normalise each layer's map before the sum (minmax) or "
        "sum the raw maps as ltgrad-cam Eq. 8 writes (none)",
    )
    parser.add_argument(
        "--deletion_steps", type=int, default=0,
        help="re-ID / retrieval: deletion / insertion curves of the queries in this many steps (curves.png, "
        "curves.json; 0: none)",
    )
    parser.add_argument(
        "--deletion_baseline", default="noisy_linear", choices=list(BASELINES),
        help="what replaces the removed pixels of the curves (noisy_linear: ROAD's imputation)",
    )
    parser.add_argument(
        "--max_sensitivity", "--max-sensitivity", type=int, default=0, metavar="N",
        help="max-sensitivity (Yeh et al. 2019) of every method's map on the queries from N noisy copies of "
        "each (sensitivity.json; 0: none)",
    )
    parser.add_argument(
        "--sensitivity_radius", type=float, default=0.02,
        help="the L-inf radius of the max-sensitivity's uniform noise, on the [0, 1] picture scale",
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity")
    parser.add_argument("--colormap", default="jet", choices=["jet", "turbo"])
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def _ranking_queries(args: argparse.Namespace, data: DatasetRanking) -> list[int]:
    if not args.query_indices:
        return choose_probes(data.provider.probe_candidates(), args.num_queries, args.seed)
    count = int(data.dataset.num_query) if data.reid else len(data.dataset)  # re-ID: the queries; retrieval: all
    bad = [i for i in args.query_indices if not 0 <= i < count]
    if bad:
        raise ExplainError(f"--query_indices {bad} are not queries of the evaluation set (0..{count - 1})")
    return list(args.query_indices)


def _curves(args: argparse.Namespace, queries: int) -> CurveOptions:
    """The deletion / insertion curves asked for (``--deletion_steps``, ``--deletion_baseline``)."""
    try:
        return CurveOptions(queries, args.deletion_steps, args.deletion_baseline, args.seed, args.batch_size)
    except ValueError as err:
        raise ExplainError(str(err)) from err


def _explainer(args: argparse.Namespace, model: Any) -> ModelExplainer:
    """The model's maps with the layer CAMs' options (``--gradient_layers``, ``--truncation``,
    ``--layer_norm``) and ``--batch_size`` images per masked / ablated forward: every task's."""
    return ModelExplainer(model, args.gradient_layers, args.truncation, layer_norm=args.layer_norm,
                          forward_batch_size=args.batch_size)


def _sensitivity(args: argparse.Namespace) -> SensitivityOptions:
    """The max-sensitivity asked for (``--max_sensitivity``, ``--sensitivity_radius``, ``--seed``)."""
    try:
        return SensitivityOptions(args.max_sensitivity, args.sensitivity_radius, args.seed, args.batch_size)
    except ValueError as err:
        raise ExplainError(str(err)) from err


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Run the command; returns the PNG paths written."""
    args = _parser().parse_args(argv)
    try:
        methods = check_methods(args.methods)
    except ValueError as err:
        raise ExplainError(str(err)) from err
    if args.top_k < 1:
        raise ExplainError("--top_k must be >= 1")
    if args.deletion_steps < 0:
        raise ExplainError(f"--deletion_steps must be >= 0 (0: no curves), got {args.deletion_steps}")
    sensitivity = _sensitivity(args)
    device = torch.device(args.device)
    config = read_config(args.config) if args.config else None
    files = bool(args.query and (args.gallery or args.support))
    if config is None and not files:
        raise ExplainError("give --config (a data module), or --query with --gallery (ranking) or --support (few-shot)")
    model = load_model(args.checkpoint, args.model_class, device, ((config or {}).get("model") or {}).get("class_path"))
    image_size = tuple(args.image_size) if args.image_size else None
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    drawing = dict(device=device, progress=progress, alpha=args.alpha, colormap=args.colormap)
    datamodule = None if files else instantiate_data(config or {}, parse_data_overrides(args.data))

    if isinstance(model, EpisodeTask):  # few-shot: episodes of a data module, or support folders
        class_names = None
        if files:
            size = image_size or checkpoint_image_size(args.checkpoint, (84, 84))
            batch, shows, class_names = folder_episode(args.support or "", args.query, size, progress)
            episodes: Any = [("files", batch)]
        else:
            episodes, shows = datamodule_episodes(datamodule, args.episodes), datamodule
        written = explain_episodes(
            model, episodes, shows, methods, output, args.num_queries, **drawing, class_names=class_names,
            explainer=_explainer(args, model), sensitivity=sensitivity, contrastive=not args.no_contrastive,
        )
    elif files:  # re-ID / retrieval on image files
        size = image_size or checkpoint_image_size(args.checkpoint)
        found = readable_images({"query": image_files(args.query, "query"),
                                 "gallery": image_files(args.gallery or [], "gallery")}, progress)
        data: Any = FileRanking(found["query"], found["gallery"], size)
        queries = list(range(len(data.files) - len(data.gallery)))
        written = explain_rankings(data, queries, _explainer(args, model), methods, output, args.top_k,
                                   args.batch_size,
                                   rerank=args.rerank, contrastive=not args.no_contrastive,
                                   curves=_curves(args, len(queries)), sensitivity=sensitivity, **drawing)
    else:
        if not isinstance(model, RankingTask):
            raise ExplainError(f"{type(model).__name__} neither ranks (re-ID, retrieval) nor classifies episodes")
        datamodule.setup("test")
        dataset = datamodule.test_dataloader().dataset
        try:
            data = DatasetRanking(dataset, model.reference_provider(dataset), datamodule)
        except AttributeError as err:
            raise ExplainError(f"{type(datamodule).__name__}'s evaluation set does not fit {type(model).__name__}: {err}")
        if not data.gallery:
            raise ExplainError("the evaluation set has no gallery image to rank the queries against")
        queries = _ranking_queries(args, data)
        written = explain_rankings(data, queries, _explainer(args, model), methods, output, args.top_k,
                                   args.batch_size,
                                   rerank=args.rerank, contrastive=not args.no_contrastive,
                                   curves=_curves(args, len(queries)), sensitivity=sensitivity, **drawing)
    print(f"explain.py: wrote {len(written)} PNGs to {output}")
    return written


if __name__ == "__main__":
    with exit_on_input_error("explain.py"):  # bad input: one line naming it, exit status 2
        main()
