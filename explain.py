"""Explain a trained re-ID model outside training: ranking lists with maps per branch, as PNGs.

Two ways to give the data::

    # the evaluation set of a config's data module (the synthetic set needs no files)
    python explain.py --checkpoint runs/cama_synthetic/checkpoints/last.ckpt \\
        --config configs/cama_synthetic.yaml --methods ram dist_cam fam --top_k 10 --output explanations

    # image files / folders (Market-1501 file names give identities and cameras: green/red frames)
    python explain.py --checkpoint PATH --query q1.jpg q2.jpg --gallery bounding_box_test/ --output out

For every query and method it writes ``<output>/<query>_<method>.png``: the query and its ``top_k``
gallery images (framed green for a true match, red for a false one when identities are known), then
one row of maps per branch and one for the summed map (cama-ram Fig. 4 / Fig. 8). The maps are those
of the training callbacks (:mod:`cama.viz.explainer`): on the query, RAM is its own
``R_q^q`` and every other method is against the top-1 gallery image; on each gallery image the map
is against the query (RAM ``R_g^q``). ``<output>/rankings.json`` lists the ranking of each query.

The model class comes from ``--model_class``, else the config's ``model.class_path``, else
``cama.models.CAMA``, and is loaded with its ``load_from_checkpoint``. With ``--config`` the data
module is built from the YAML's ``data`` section (``class_path`` + ``init_args``); ``--data
KEY=VALUE`` overrides its init arguments (values read as YAML, e.g. ``--data image_size=[64,32]``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor
from torch.utils.data import default_collate
from torchvision.io import write_png
from torchvision.transforms import v2
from tqdm import tqdm

from cama.metrics.ranking import reid_excluded, top_k
from cama.references import ReIDReferences, choose_probes
from cama.viz import METHODS, Explainer, check_methods, ranking_figure, to_uint8
from datamodules.images import IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, denormalize_images, load_image

__all__ = [
    "main",
    "import_class",
    "load_config",
    "load_model",
    "checkpoint_image_size",
    "build_datamodule",
    "build_model_from_config",
]


MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


class ExplainError(SystemExit):
    """A user error: the message is printed and the command exits with status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(f"explain.py: error: {message}")


# --------------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------------
def import_class(path: str) -> type:
    """``"package.module.Class"`` -> the class."""
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise ExplainError(f"not a class path: {path!r}")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ExplainError(f"cannot import {path!r}: {err}") from err


def load_config(path: str | Path) -> dict[str, Any]:
    """The YAML config of a LightningCLI run as a dict."""
    path = Path(path)
    if not path.is_file():
        raise ExplainError(f"config file not found: {path}")
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        raise ExplainError(f"config {path} is not a YAML mapping")
    return config


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ExplainError(f"--data expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def build_datamodule(config: dict[str, Any], overrides: dict[str, Any] | None = None) -> Any:
    """Instantiate the config's ``data`` section (``class_path`` + ``init_args``, plus ``overrides``)."""
    spec = config.get("data")
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ExplainError("the config has no data.class_path")
    kwargs = dict(spec.get("init_args") or {})
    kwargs.update(overrides or {})
    return import_class(spec["class_path"])(**kwargs)


def build_model_from_config(
    config: dict[str, Any], num_classes: int, overrides: dict[str, Any] | None = None
) -> Any:
    """Instantiate the config's ``model`` section with ``num_classes`` (as ``train.py`` links it)."""
    spec = config.get("model")
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ExplainError("the config has no model.class_path")
    kwargs = dict(spec.get("init_args") or {})
    kwargs.update(overrides or {})
    kwargs["num_classes"] = num_classes
    return import_class(spec["class_path"])(**kwargs)


# --------------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------------
def _image_files(paths: Sequence[str], what: str) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ExplainError(f"{what} folder {path} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ExplainError(f"{what} path not found: {path}")
    if not files:
        raise ExplainError(f"no {what} image given")
    return files


def _identity(path: Path) -> tuple[int, int] | None:
    match = MARKET_NAME.match(path.name)
    return (int(match.group(1)), int(match.group(2)) - 1) if match else None


class _FileSet:
    """Image files as an evaluation set: ``[query files..., gallery files...]``."""

    def __init__(self, queries: list[Path], gallery: list[Path], image_size: tuple[int, int]) -> None:
        self.load_image = load_image  # the project's decoder (clear error per file)
        self.files = queries + gallery
        self.num_query = len(queries)
        ids = [_identity(p) for p in self.files]
        self.known = all(i is not None for i in ids)
        self.pids = torch.tensor([i[0] if i else -2 for i in ids])
        self.camids = torch.tensor([i[1] if i else -1 for i in ids])
        self.transform = v2.Compose(
            [
                v2.Resize(image_size, antialias=True),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def denormalize(self, images: Tensor, as_uint8: bool = False) -> Tensor:
        """The pictures of network inputs (:class:`cama.protocols.ShowsImages`)."""
        return denormalize_images(images, IMAGENET_MEAN, IMAGENET_STD, as_uint8)

    def load(self, indices: Sequence[int], device: torch.device) -> dict[str, Tensor]:
        images = torch.stack([self.transform(self.load_image(str(self.files[i]))) for i in indices])
        return {
            "image": images.to(device),
            "pid": self.pids[list(indices)].to(device),
            "camid": self.camids[list(indices)].to(device),
        }

    def name(self, index: int) -> str:
        return self.files[index].stem


class _DataModuleSet:
    """A data module's evaluation set (queries then gallery)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.references = ReIDReferences.from_dataset(dataset)
        self.num_query = self.references.num_query
        self.pids, self.camids = self.references.pids, self.references.camids
        self.known = True

    def load(self, indices: Sequence[int], device: torch.device) -> dict[str, Tensor]:
        batch = default_collate([self.dataset[int(i)] for i in indices])
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def name(self, index: int) -> str:
        kind = "query" if index < self.num_query else "gallery"
        return f"{kind}{index:05d}_pid{int(self.pids[index])}_cam{int(self.camids[index])}"


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
        help="override init arguments of the config's data module (YAML values)",
    )
    parser.add_argument("--query", nargs="+", help="query image files or folders (instead of --config)")
    parser.add_argument("--gallery", nargs="+", help="gallery folders or files (with --query)")
    parser.add_argument(
        "--methods", nargs="+", default=["ram", "dist_cam", "fam"], help=f"any of {list(METHODS)}"
    )
    parser.add_argument("--top_k", type=int, default=10, help="gallery images per ranking list")
    parser.add_argument("--num_queries", type=int, default=8, help="queries explained (with --config)")
    parser.add_argument("--query_indices", type=int, nargs="+", help="query indices (with --config)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the query choice (with --config)")
    parser.add_argument("--output", default="explanations", help="folder for the PNGs")
    parser.add_argument(
        "--model_class", help="LightningModule class path (default: config, else cama.models.CAMA)"
    )
    parser.add_argument(
        "--image_size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input size for --query/--gallery files (default: the checkpoint's data module)",
    )
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--gradient_layers", nargs="+", help="layers of the gradient methods")
    parser.add_argument("--truncation", type=float, help="truncation trick percentile (gradient methods)")
    parser.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity")
    parser.add_argument("--colormap", default="jet", choices=["jet", "turbo"])
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def load_model(
    checkpoint: str | Path, config: dict[str, Any] | None, device: torch.device, model_class: str | None = None
) -> Any:
    """The LightningModule of ``checkpoint`` in eval mode on ``device``: class ``model_class``, else the
    config's ``model.class_path``, else ``cama.models.CAMA``."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ExplainError(f"checkpoint not found: {checkpoint}")
    class_path = model_class or ((config or {}).get("model") or {}).get("class_path") or "cama.models.CAMA"
    cls = import_class(class_path)
    try:
        model = cls.load_from_checkpoint(str(checkpoint), map_location=device)
    except Exception as err:  # noqa: BLE001 - report any loading failure with the file name
        raise ExplainError(f"cannot load {checkpoint} as {class_path}: {err}") from err
    return model.to(device).eval()


def checkpoint_image_size(checkpoint: str | Path, default: tuple[int, int] = (256, 128)) -> tuple[int, int]:
    """The input size the checkpoint's data module used (its ``image_size``), else ``default``."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    size = (state.get("datamodule_hyper_parameters") or {}).get("image_size")
    return (int(size[0]), int(size[1])) if size else default


@torch.no_grad()
def _embed(
    explainer: Explainer, data: Any, indices: list[int], batch_size: int, device: torch.device, progress: bool
) -> Tensor:
    chunks = []
    for start in tqdm(range(0, len(indices), batch_size), desc="gallery", disable=not progress, unit="batch"):
        batch = data.load(indices[start : start + batch_size], device)
        chunks.append(explainer.features(batch["image"]).embedding.float())
    return torch.cat(chunks) if chunks else torch.zeros(0, 0, device=device)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Run the command; returns the PNG paths written."""
    args = _parser().parse_args(argv)
    try:
        methods = check_methods(args.methods)
    except ValueError as err:
        raise ExplainError(str(err)) from err
    if args.top_k < 1:
        raise ExplainError("--top_k must be >= 1")
    device = torch.device(args.device)
    config = load_config(args.config) if args.config else None
    if config is None and not (args.query and args.gallery):
        raise ExplainError("give --config (a data module) or both --query and --gallery (image files)")
    model = load_model(args.checkpoint, config, device, args.model_class)
    explainer = Explainer(model, args.gradient_layers, args.truncation)
    progress = not args.no_progress

    datamodule = None
    if args.query and args.gallery:
        data: Any = _FileSet(
            _image_files(args.query, "query"), _image_files(args.gallery, "gallery"),
            tuple(args.image_size) if args.image_size else checkpoint_image_size(args.checkpoint)
        )
        queries = list(range(data.num_query))
    else:
        assert config is not None
        datamodule = build_datamodule(config, _parse_overrides(args.data))
        datamodule.setup("test")
        dataset = getattr(datamodule, "eval_dataset", None)
        if dataset is None or not all(hasattr(dataset, a) for a in ("num_query", "pids", "camids")):
            raise ExplainError(f"{type(datamodule).__name__} has no re-ID evaluation set (eval_dataset)")
        data = _DataModuleSet(dataset)
        if args.query_indices:
            bad = [i for i in args.query_indices if not 0 <= i < data.num_query]
            if bad:
                raise ExplainError(f"--query_indices {bad} are not query indices (0..{data.num_query - 1})")
            queries = list(args.query_indices)
        else:
            queries = choose_probes(data.references.probe_candidates(), args.num_queries, args.seed)

    gallery_indices = list(range(data.num_query, len(data.pids)))
    if not gallery_indices:
        raise ExplainError("the evaluation set has no gallery image to rank the queries against")
    embeddings = _embed(explainer, data, gallery_indices, args.batch_size, device, progress)
    gallery_pids = data.pids[gallery_indices].to(device)
    gallery_camids = data.camids[gallery_indices].to(device)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rankings: dict[str, Any] = {}
    for index in tqdm(queries, desc="queries", disable=not progress, unit="query"):
        batch = data.load([index], device)
        query = explainer.features(batch["image"])
        if data.known:  # the Market-1501 protocol
            pid, camid = batch["pid"], batch["camid"]
            exclude = reid_excluded(pid, camid, gallery_pids, gallery_camids)
        else:  # unknown identities: rank everything (no protocol), frames left out
            pid = torch.full((1,), -4, device=device)
            exclude = (gallery_pids == -1)[None].clone()  # junk files still never ranked
        if isinstance(data, _FileSet):  # the query file itself is never its own match
            exclude |= torch.tensor([[data.files[index] == data.files[g] for g in gallery_indices]], device=device)
        rows = top_k(query.embedding, embeddings, args.top_k, exclude=exclude)
        matches = (rows >= 0) & (gallery_pids[rows.clamp_min(0)] == pid[:, None])
        valid = rows[0] >= 0
        listed_rows = rows[0][valid]
        if listed_rows.numel() == 0:
            tqdm.write(f"query {data.name(index)}: no rankable gallery image, skipped")
            continue
        listed_indices = [gallery_indices[r] for r in listed_rows.tolist()]
        listed = explainer.features(data.load(listed_indices, device)["image"])
        reference = listed.embedding[:1]
        shows = datamodule if datamodule is not None else data  # files: ImageNet statistics
        query_picture = to_uint8(query.images, shows)[0]
        listed_pictures = to_uint8(listed.images, shows)
        flags = matches[0][valid] if data.known else None
        name = data.name(index)
        rankings[name] = [
            {"gallery": data.name(g), "match": bool(flags[j]) if flags is not None else None}
            for j, g in enumerate(listed_indices)
        ]
        for method in methods:
            target = query.embedding if method == "ram" else reference
            query_maps = explainer.explain(method, query, target)[0]
            listed_maps = explainer.explain(method, listed, query.embedding.expand(len(listed_indices), -1))
            picture = ranking_figure(
                query_picture, listed_pictures, flags, query_maps, listed_maps, args.alpha, args.colormap
            )
            path = output / f"{name}_{method.replace('+', 'p')}.png"
            write_png(picture.cpu(), str(path))
            written.append(path)
    with open(output / "rankings.json", "w") as f:
        json.dump(rankings, f, indent=2)
    print(f"explain.py: wrote {len(written)} PNGs to {output}")
    return written


if __name__ == "__main__":
    try:
        main()
    except ExplainError as err:
        print(err.code, file=sys.stderr)
        sys.exit(2)
