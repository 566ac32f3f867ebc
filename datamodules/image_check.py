"""A fast check, at a data module's ``setup``, that every image file of a real data set can be read.

An unreadable image (zero bytes, a truncated copy, an HTML error page saved as ``.jpg``) would
otherwise stop a run when a loader first reaches it, possibly epochs later at the first
validation. :func:`find_unreadable_images` reads only the first and the last bytes of each file
(in parallel threads: the work is file-system latency, not CPU) and checks

* the size (> 0);
* the signature of a JPEG, PNG, BMP, GIF or WebP file;
* that the file ends where its format ends: a JPEG with its end-of-image marker ``FF D9``
  (trailing zero bytes allowed), a PNG with its ``IEND`` chunk, a GIF with its trailer ``;``, a
  BMP / WebP at least as long as its header says.

A file that fails this cheap test is decoded in full with PIL before it is reported, so an unusual
but valid file (data after a JPEG's end marker, another format behind an image extension) passes.
The data modules call :func:`check_split_images`; their option ``check_images: false`` skips it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from .errors import UnreadableImageError

__all__ = ["image_file_problem", "find_unreadable_images", "check_split_images"]

_TAIL_BYTES = 64
_SHOWN = 10  # bad files listed in the error
_PROGRESS_FROM = 5000  # files; fewer are checked without a progress bar
_CHUNK = 256  # files per thread task: one task per file costs more than the check of a cached file


def _format_problem(head: bytes, tail: bytes, size: int) -> str | None:
    """Why the head / tail bytes do not look like a complete image file, or ``None``."""
    if head.startswith(b"\xff\xd8\xff"):
        complete = tail.rstrip(b"\x00").endswith(b"\xff\xd9")
        return None if complete else "truncated JPEG (no end-of-image marker)"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None if b"IEND" in tail else "truncated PNG (no IEND chunk at the end)"
    if head.startswith(b"BM") and len(head) >= 14:
        declared = int.from_bytes(head[2:6], "little")
        offset = int.from_bytes(head[10:14], "little")
        if offset >= size or declared > size:
            return f"truncated BMP (its header says {max(declared, offset)} bytes, the file has {size})"
        return None
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return None if tail.rstrip(b"\x00").endswith(b";") else "truncated GIF (no trailer)"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        declared = int.from_bytes(head[4:8], "little") + 8
        return None if declared <= size else f"truncated WebP (header: {declared} bytes, file: {size})"
    return f"not a JPEG, PNG, BMP, GIF or WebP file (it starts with {head[:8]!r})"


def _decodes(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        return False


def image_file_problem(path: str) -> str | None:
    """Why the image file at ``path`` cannot be read (``"empty file (0 bytes)"``, ...), or ``None``."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(32)
            f.seek(max(0, size - _TAIL_BYTES))
            tail = f.read()
    except OSError as e:
        return f"cannot be opened ({e.strerror or e})"
    problem = _format_problem(head, tail, size)
    if problem is None or _decodes(path):
        return None
    return problem


def _default_workers() -> int:
    return min(32, 4 * (os.cpu_count() or 1))


def _chunk_problems(paths: Sequence[str]) -> list[str | None]:
    return [image_file_problem(path) for path in paths]


def find_unreadable_images(
    paths: Sequence[str], workers: int | None = None, progress: bool | None = None
) -> list[tuple[str, str]]:
    """``(path, reason)`` of every file of ``paths`` that is not a readable image, in the order given.

    ``workers`` threads check chunks of files (default ``min(32, 4 x CPUs)``; threads, as the time
    goes to file-system latency); ``progress`` shows a tqdm bar (default: for 5,000 files or more,
    on rank zero, on a terminal).
    """
    paths = list(paths)
    workers = max(1, int(workers or _default_workers()))
    if progress is None:
        progress = len(paths) >= _PROGRESS_FROM and rank_zero_only.rank == 0
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    problems: list[str | None] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), desc="checking images", unit="file", disable=None)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for chunk_problems in pool.map(_chunk_problems, chunks):
            problems += chunk_problems
            if bar is not None:
                bar.update(len(chunk_problems))
    if bar is not None:
        bar.close()
    return [(path, problem) for path, problem in zip(paths, problems) if problem is not None]


def check_split_images(
    raw: Mapping[str, Any], splits: Iterable[str], checked: set[str], source: str
) -> None:
    """Check the image files of the ``splits`` of ``raw`` (split -> dataset with ``records`` having a
    ``path``) not yet in ``checked``; raise :class:`UnreadableImageError` listing the bad files.

    ``source`` names the data set in the message (e.g. ``"market1501 at /data/Market-1501"``).
    """
    todo = [s for s in splits if s not in checked]
    paths = [r.path for s in todo for r in raw[s].records]
    if not paths:
        checked.update(todo)
        return
    start = time.perf_counter()
    bad = find_unreadable_images(paths)
    if bad:
        shown = "\n".join(f"  {path}: {reason}" for path, reason in bad[:_SHOWN])
        more = f"\n  ... and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        raise UnreadableImageError(
            f"{len(bad)} of the {len(paths)} images of the {'/'.join(todo)} split(s) of {source} cannot "
            f"be read:\n{shown}{more}\nReplace or remove these files (and any list that names them), or "
            "skip this check with check_images: false (--data.init_args.check_images false); an "
            "unreadable image then stops the run when a data loader reaches it."
        )
    checked.update(todo)
    rank_zero_info(f"checked the {len(paths)} images of the {'/'.join(todo)} split(s) of {source} "
                   f"in {time.perf_counter() - start:.1f} s")
