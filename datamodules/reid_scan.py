"""Reading the re-ID layouts that name pid and camera in the file name (Market-1501, DukeMTMC-reID, CUHK03-NP).

:func:`resolve_reid_root` finds the folder holding the three split folders, :func:`scan_reid_folder`
reads the pid and camera of every image from its file name; wrong roots, missing folders and
unparsable names raise :class:`DatasetLayoutError` naming the path. Both take the layout object
(:class:`~datamodules.reid_layouts.FileNameLayout`: its ``name``, ``pattern``, ``example``,
``folders``, ``hint`` and where its root may be), which :mod:`datamodules.reid_layouts` registers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DatasetLayoutError
from .images import IMAGE_EXTENSIONS

if TYPE_CHECKING:  # the layouts import this module
    from .reid_layouts import FileNameLayout

__all__ = ["ReIDRecord", "resolve_reid_root", "scan_reid_folder"]


@dataclass(frozen=True)
class ReIDRecord:
    """One image of a re-ID data set: its file, identity (0 distractor, -1 junk) and camera."""

    path: str
    pid: int
    camid: int  # 0-based


def _list_dirs(path: Path) -> list[str]:
    try:
        return sorted(p.name for p in path.iterdir() if p.is_dir())
    except OSError:
        return []


def resolve_reid_root(layout: FileNameLayout, root: str | Path | None) -> Path:
    """The folder that holds ``layout.folders`` (e.g. ``bounding_box_train/``, ``query/``,
    ``bounding_box_test/``).

    ``root`` may be that folder or its parent (e.g. the folder holding ``Market-1501-v15.09.15``);
    ``layout.direct_candidates(root)`` and ``layout.child_candidate(child)`` say where else it may be
    (for CUHK03-NP the ``cuhk03-np`` folder holding ``labeled/`` and ``detected/``, its parent, or
    the variant folder itself); ``layout.hint`` picks among several complete candidates.
    """
    dataset = layout.name
    if root is None:
        raise DatasetLayoutError(f"dataset={dataset!r} needs a root folder (root=None)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"{dataset} root {root} does not exist or is not a folder")
    expected = layout.folders

    def score(path: Path) -> int:
        return sum((path / f).is_dir() for f in expected)

    direct = layout.direct_candidates(root)
    for path in direct:
        if score(path) == len(expected):
            return path
    children = [layout.child_candidate(root / d) for d in _list_dirs(root)]
    complete = [c for c in children if score(c) == len(expected)]
    if len(complete) > 1:  # e.g. a data/ folder holding several data sets: pick by name
        named = [c for c in complete if layout.hint in str(c.relative_to(root)).lower()]
        if len(named) != 1:
            raise DatasetLayoutError(
                f"{dataset} root {root} holds several candidate folders {[str(c) for c in complete]}; "
                "pass the one to use as root"
            )
        complete = named
    if complete:
        return complete[0]
    best = max(direct + children, key=score)
    if score(best) > 0:
        missing = [str(best / f) for f in expected if not (best / f).is_dir()]
        raise DatasetLayoutError(
            f"{dataset} folder {best} is missing the sub-folder(s) {missing}; "
            f"expected {list(expected)}, found {_list_dirs(best)}"
        )
    raise DatasetLayoutError(
        f"{dataset} root {root} does not hold the expected sub-folders {layout.expected_folders()}; "
        f"found: {_list_dirs(root) or 'nothing'}"
    )


def scan_reid_folder(folder: str | Path, layout: FileNameLayout) -> list[ReIDRecord]:
    """Records of the images of one folder, sorted by file name; non-image files are skipped.
    ``layout``: its ``name``, ``pattern`` (group 1 the pid, group 2 the 1-based camera) and ``example``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetLayoutError(f"missing {layout.name} sub-folder {folder}")
    regex = re.compile(layout.pattern)
    records = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        m = regex.match(path.name)
        if m is None:
            raise DatasetLayoutError(
                f"cannot parse {layout.name} file name {path}: expected the pattern {layout.pattern!r} "
                f"(pid, camera), e.g. {layout.example}"
            )
        pid, cam = int(m.group(1)), int(m.group(2))
        if cam < 1:
            raise DatasetLayoutError(f"camera numbers start at 1 in {layout.name} file names: {path}")
        records.append(ReIDRecord(str(path), pid, cam - 1))
    return records
