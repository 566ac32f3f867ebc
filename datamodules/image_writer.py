"""Render, encode and write many synthetic images, in a fixed order, on one or several processes.

The layout writers (:func:`~datamodules.synthetic.write_reid_layout`,
:func:`~datamodules.synthetic.write_cub_layout`, ...) first list what they write, one
:class:`ImageJob` per file (its path under the root and the arguments of the generator's ``render``
after the generator itself), then hand the list to :func:`write_images`. Every image is a function of
the generator and the job alone, so the files are the same whatever the number of processes; the
boxes come back in job order. With ``workers > 1`` the jobs go to a process pool in chunks, each
chunk carrying a pickled copy of the generator (a few MB at most for the real-size sets, against
seconds of drawing per chunk). The pool forks where the platform can (a spawned process would spend
several seconds importing torch and the package again), else it spawns.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from .seeding import single_thread

__all__ = ["ImageJob", "encode_image", "write_images"]


@dataclass(frozen=True)
class ImageJob:
    """One file: ``path`` relative to the root, ``args`` of ``render(generator, *args)``, its format."""

    path: str
    args: tuple
    fmt: Literal["jpeg", "png"] = "jpeg"


def encode_image(image: Any, fmt: str, jpeg_quality: int = 92) -> bytes:
    """A uint8 ``[3, H, W]`` tensor as JPEG (``jpeg_quality``) or PNG file bytes."""
    from torchvision.io import encode_jpeg, encode_png

    if fmt == "jpeg":
        data = encode_jpeg(image, quality=jpeg_quality)
    elif fmt == "png":
        data = encode_png(image)
    else:
        raise ValueError(f"unknown image format {fmt!r}, expected 'jpeg' or 'png'")
    return bytes(data.numpy().tobytes())


def _write_chunk(render: Callable, generator: Any, root: str, jobs: Sequence[ImageJob],
                 jpeg_quality: int) -> list[list[float]]:
    """Draw, encode and write ``jobs``; the box (``x1, y1, x2, y2``) of each, in order."""
    base = Path(root)
    boxes = []
    with single_thread():
        for job in jobs:
            sample = render(generator, *job.args)
            (base / job.path).write_bytes(encode_image(sample.image, job.fmt, jpeg_quality))
            boxes.append(sample.box.tolist())
    return boxes


def write_images(
    root: str | Path,
    render: Callable,
    generator: Any,
    jobs: Sequence[ImageJob],
    *,
    jpeg_quality: int = 92,
    workers: int = 1,
    progress: bool = True,
    desc: str = "writing images",
    chunk_size: int = 512,
) -> list[list[float]]:
    """Write every job's image under ``root`` (folders must exist); returns the boxes in job order.

    ``render`` is a picklable function ``render(generator, *job.args)`` returning an object with a
    uint8 ``image`` and a ``box`` tensor (e.g. ``SyntheticReID.render``); ``workers`` > 1 spreads the
    chunks of ``chunk_size`` jobs over that many processes.
    """
    from tqdm.auto import tqdm

    if workers < 1 or chunk_size < 1:
        raise ValueError(f"workers and chunk_size must be >= 1, got {workers} and {chunk_size}")
    chunks = [list(jobs[i:i + chunk_size]) for i in range(0, len(jobs), chunk_size)]
    boxes: list[list[float]] = []
    with tqdm(total=len(jobs), desc=desc, disable=not progress, unit="img") as bar:
        if workers == 1 or len(chunks) <= 1:
            for chunk in chunks:
                boxes.extend(_write_chunk(render, generator, str(root), chunk, jpeg_quality))
                bar.update(len(chunk))
            return boxes
        method = "fork" if "fork" in get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context(method)) as pool:
            futures = [pool.submit(_write_chunk, render, generator, str(root), chunk, jpeg_quality)
                       for chunk in chunks]
            for chunk, future in zip(chunks, futures):
                boxes.extend(future.result())
                bar.update(len(chunk))
    return boxes
