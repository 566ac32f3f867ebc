"""What every flow of ``explain.py`` shares: its error, image files, PNG output."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torchvision.io import write_png

from datamodules.images import (
    IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, denormalize_images, load_image, resized_and_normalized,
)

__all__ = ["ExplainError", "MARKET_NAME", "image_files", "FileImages", "write_picture"]

MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


class ExplainError(SystemExit):
    """A user error: the message is printed and the command exits with status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(f"explain.py: error: {message}")


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
