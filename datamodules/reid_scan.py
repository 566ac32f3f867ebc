"""The on-disk re-ID layouts: Market-1501, DukeMTMC-reID and CUHK03-NP folders and file names.

:func:`resolve_reid_root` finds the folder holding the three split folders, :func:`scan_reid_folder`
reads the pid and camera of every image from its file name; wrong roots, missing folders and
unparsable names raise :class:`DatasetLayoutError` naming the path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DatasetLayoutError
from .images import IMAGE_EXTENSIONS

__all__ = ["ReIDRecord", "ReIDLayout", "REID_LAYOUTS", "resolve_reid_root", "scan_reid_folder"]


@dataclass(frozen=True)
class ReIDRecord:
    path: str
    pid: int
    camid: int  # 0-based


@dataclass(frozen=True)
class ReIDLayout:
    name: str
    pattern: str  # regex on the file name: group 1 = pid, group 2 = camera (1-based)
    example: str
    train: str = "bounding_box_train"
    query: str = "query"
    gallery: str = "bounding_box_test"

    @property
    def folders(self) -> tuple[str, str, str]:
        return (self.train, self.query, self.gallery)


REID_LAYOUTS: dict[str, ReIDLayout] = {
    "market1501": ReIDLayout("market1501", r"^(-?\d+)_c(\d+)", "0002_c1s1_000451_03.jpg"),
    "dukemtmc": ReIDLayout("dukemtmc", r"^(-?\d+)_c(\d+)", "0001_c2_f0046182.jpg"),
    "cuhk03": ReIDLayout("cuhk03", r"^(\d+)_c(\d+)", "0001_c1_1.png"),
}


def _list_dirs(path: Path) -> list[str]:
    try:
        return sorted(p.name for p in path.iterdir() if p.is_dir())
    except OSError:
        return []


def resolve_reid_root(dataset: str, root: str | Path | None, cuhk03_variant: str = "labeled") -> Path:
    """The folder that holds ``bounding_box_train/``, ``query/`` and ``bounding_box_test/``.

    ``root`` may be that folder or its parent (e.g. the folder holding ``Market-1501-v15.09.15``);
    for CUHK03-NP it may be the ``cuhk03-np`` folder (holding ``labeled/`` and ``detected/``), its
    parent, or the variant folder itself.
    """
    layout = REID_LAYOUTS[dataset]
    if root is None:
        raise DatasetLayoutError(f"dataset={dataset!r} needs a root folder (root=None)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"{dataset} root {root} does not exist or is not a folder")
    expected = layout.folders

    def score(path: Path) -> int:
        return sum((path / f).is_dir() for f in expected)

    direct = [root]
    if dataset == "cuhk03":
        direct = [root / cuhk03_variant, root / "cuhk03-np" / cuhk03_variant,
                  root / "cuhk03_np" / cuhk03_variant, root]
    for path in direct:
        if score(path) == len(expected):
            return path
    children = [root / d for d in _list_dirs(root)]
    if dataset == "cuhk03":
        children = [c / cuhk03_variant for c in children]
    complete = [c for c in children if score(c) == len(expected)]
    if len(complete) > 1:  # e.g. a data/ folder holding several data sets: pick by name
        hint = {"market1501": "market", "dukemtmc": "duke", "cuhk03": "cuhk"}[dataset]
        named = [c for c in complete if hint in str(c.relative_to(root)).lower()]
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
    where = f"{list(expected)}" if dataset != "cuhk03" else (
        f"cuhk03-np/{cuhk03_variant}/{{{', '.join(expected)}}} (or {cuhk03_variant}/... under root)")
    raise DatasetLayoutError(
        f"{dataset} root {root} does not hold the expected sub-folders {where}; "
        f"found: {_list_dirs(root) or 'nothing'}"
    )


def scan_reid_folder(folder: str | Path, layout: ReIDLayout | str) -> list[ReIDRecord]:
    """Records of the images of one folder, sorted by file name; non-image files are skipped."""
    layout = REID_LAYOUTS[layout] if isinstance(layout, str) else layout
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
