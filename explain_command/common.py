"""What every flow of ``explain.py`` shares: its error, image files (checked once up front),
PNG output, a JSON file rewritten as the work goes on."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.io import write_png
from tqdm import tqdm

from cama.checkpoint_files import whole_file
from cama.errors import InputError
from datamodules.errors import UnreadableImageError
from datamodules.image_check import image_file_problem
from datamodules.images import (
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize_images,
    load_image,
    resized_and_normalized,
)

__all__ = [
    "ExplainError", "MARKET_NAME", "image_files", "image_problem", "readable_images", "FileImages",
    "write_picture", "write_json",
]

MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


class ExplainError(InputError, ValueError):
    """A user error of ``explain.py``: the command prints its message and exits with status 2."""


def image_files(paths: Sequence[str], what: str) -> list[Path]:
    """The image files of ``paths`` (files, or folders read one level deep, sorted)."""
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


def image_problem(path: Path) -> str | None:
    """Why the image file ``path`` cannot be explained (one line), or ``None`` when it decodes in full
    with :func:`~datamodules.images.load_image`.

    A PNG is decoded with PIL first: torchvision 0.29 ends the whole process (a segmentation fault,
    not an exception) on PNG pixel data that libpng rejects (a flipped byte, a data stream cut short),
    where PIL raises (all but a compressed stream that is whole but holds too few rows). The reason is the cheap check's (:func:`~datamodules.image_check.image_file_problem`:
    empty, truncated, not an image) when it sees one, else the decoder's message.
    """
    try:
        with open(path, "rb") as f:
            png = f.read(8) == b"\x89PNG\r\n\x1a\n"
        if png:
            with Image.open(path) as image:
                image.load()
        load_image(str(path))
        return None
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        cause = err.__cause__ if isinstance(err, UnreadableImageError) and err.__cause__ else err
        lines = str(cause).strip().splitlines() or [type(cause).__name__]
        return image_file_problem(str(path)) or lines[-1]


def readable_images(groups: Mapping[str, Sequence[Path]], progress: bool) -> dict[str, list[Path]]:
    """The files of each group (``{"query": [...], "gallery": [...]}``) that decode, in their order.

    Every file is checked once (:func:`image_problem`, a full decode; a file in two groups once),
    under a progress bar "checking images" unless ``progress`` is false. Each unreadable one is
    reported on stderr, ``explain.py: skipped <file>: <why>``, and left out, so one bad file costs its
    own explanation only; a group left with no file is an :class:`ExplainError`.
    """
    problems: dict[Path, str | None] = {}
    unique = list(dict.fromkeys(p for files in groups.values() for p in files))
    for path in tqdm(unique, desc="checking images", disable=not progress, unit="file"):
        problems[path] = image_problem(path)
        if problems[path] is not None:
            tqdm.write(f"explain.py: skipped {path}: {problems[path]}", file=sys.stderr)
    readable = {what: [p for p in files if problems[p] is None] for what, files in groups.items()}
    for what, files in readable.items():
        if not files:
            raise ExplainError(f"no readable {what} image ({len(groups[what])} given, each skipped above)")
    return readable


class FileImages:
    """Image files as network inputs: resized to ``image_size``, normalised with the ImageNet
    statistics every data module of the project uses; ``denormalize`` shows them again
    (:class:`cama.protocols.ShowsImages`)."""

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(self, files: Sequence[Path], image_size: Sequence[int]) -> None:
        self.files = list(files)
        self.transform = resized_and_normalized(image_size)

    def images(self, indices: Sequence[int], device: torch.device) -> Tensor:
        return torch.stack([self.transform(load_image(str(self.files[i]))) for i in indices]).to(device)

    def denormalize(self, images: Tensor, as_uint8: bool = False) -> Tensor:
        return denormalize_images(images, IMAGENET_MEAN, IMAGENET_STD, as_uint8)


def write_picture(picture: Tensor, output: Path, name: str, method: str) -> Path:
    """Write ``picture`` as ``<output>/<name>_<method>.png`` (``+`` spelled ``p``)."""
    path = output / f"{name}_{method.replace('+', 'p')}.png"
    write_png(picture.cpu(), str(path))
    return path


def write_json(data: Any, path: Path) -> None:
    """Write ``data`` as JSON to ``path`` atomically: into a temporary file of the same folder, then
    ``os.replace``d, so the file is always whole (the last version) even if the command dies."""
    with whole_file(path, "w") as f:
        json.dump(data, f, indent=2)
