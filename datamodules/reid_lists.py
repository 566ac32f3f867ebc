"""Reading MSMT17 as released (Wei et al., "Person Transfer GAN to Bridge Domain Gap for Person
Re-Identification", CVPR 2018): images listed in text files rather than named by split folder.

``MSMT17_V1/`` holds ``train/`` and ``test/`` (``MSMT17_V2/``: ``mask_train_v2/`` and ``mask_test_v2/``,
the faces blurred) with one folder per identity, and ``list_train.txt``, ``list_val.txt``,
``list_query.txt``, ``list_gallery.txt``: one line per image, ``<path relative to the image folder>
<0-based pid>``. The camera is the third ``_`` field of the file name
(:func:`~datamodules.split_rules.msmt17_camera`). :func:`resolve_msmt17_root` finds the version
folder (``root`` itself, ``root/MSMT17_<v>`` or torchreid's ``root/msmt17/MSMT17_<v>``), and
:func:`scan_msmt17` reads the lists into records: the training set is list_train + list_val
(32,621 images of 1,041 identities), or list_train alone (30,248: torchreid's and fast-reid's default,
``val_in_train=False``). Every pid is the list's plus 1, since pid 0 means a distractor here.

A missing folder or list file, a malformed line and a line naming a missing image raise
:class:`~datamodules.errors.DatasetLayoutError` naming the file (and line) and the expected layout.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DatasetLayoutError
from .reid_scan import ReIDRecord
from .split_rules import MSMT17_FOLDERS, MSMT17_LISTS, msmt17_camera

__all__ = ["MSMT17_VERSIONS", "read_msmt17_list", "resolve_msmt17_root", "scan_msmt17"]

MSMT17_VERSIONS = tuple(MSMT17_FOLDERS)
_EXAMPLE_NAME = "0000_000_01_0303morning_0015_0.jpg"
_EXAMPLE = f"0000/{_EXAMPLE_NAME} 0"


def expected_layout(version: str | None = None) -> str:
    """The expected tree of ``version`` (both when ``None``), for messages."""
    versions = (version,) if version else MSMT17_VERSIONS
    lists = [name for name, _ in MSMT17_LISTS]
    return " or ".join(f"MSMT17_{v}/{{{', '.join([f'{f}/' for f in MSMT17_FOLDERS[v]] + lists)}}}"
                       for v in versions)


def _candidates(root: Path, versions: tuple[str, ...]) -> list[tuple[Path, str]]:
    """Where a version folder may be: ``root`` itself, ``root/MSMT17_<v>``, ``root/msmt17/MSMT17_<v>``."""
    out = []
    for v in versions:
        for base in (root, root / f"MSMT17_{v}", root / "msmt17" / f"MSMT17_{v}"):
            out.append((base, v))
    return out


def _score(base: Path, version: str) -> int:
    folders = sum((base / f).is_dir() for f in MSMT17_FOLDERS[version])
    return 2 * folders + sum((base / name).is_file() for name, _ in MSMT17_LISTS)


def resolve_msmt17_root(root: str | Path | None, version: str | None = None) -> tuple[Path, str]:
    """``(folder, version)``: the ``MSMT17_<version>`` folder that holds both image folders.

    ``version`` (``"V1"``, ``"V2"``) picks a release; ``None`` takes the one found, and a root that
    holds both is an error asking for ``msmt17_version``."""
    if version is not None and version not in MSMT17_VERSIONS:
        raise ValueError(f"msmt17_version must be one of {MSMT17_VERSIONS} or None, got {version!r}")
    if root is None:
        raise DatasetLayoutError("dataset='msmt17' needs a root folder (root=None)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"msmt17 root {root} does not exist or is not a folder")
    candidates = _candidates(root, (version,) if version else MSMT17_VERSIONS)
    found = [(base, v) for base, v in candidates if all((base / f).is_dir() for f in MSMT17_FOLDERS[v])]
    if len({v for _, v in found}) > 1:
        raise DatasetLayoutError(
            f"msmt17 root {root} holds both releases ({', '.join(str(b) for b, _ in found)}); "
            "choose one with msmt17_version: V1 or V2")
    if found:
        return found[0]
    best, v = max(candidates, key=lambda c: _score(*c))
    if _score(best, v) > 0:
        missing = [str(best / f) for f in MSMT17_FOLDERS[v] if not (best / f).is_dir()]
        raise DatasetLayoutError(f"msmt17 folder {best} is missing the image folder(s) {missing}; "
                                 f"expected {expected_layout(v)}")
    present = sorted(p.name for p in root.iterdir())
    raise DatasetLayoutError(f"msmt17 root {root} does not hold {expected_layout(version)} (or that tree "
                             f"under root/MSMT17_<version>/); found: {present or 'nothing'}")


def read_msmt17_list(list_path: Path, image_folder: Path, version: str = "V1") -> list[ReIDRecord]:
    """The records of one list file, in its order: path under ``image_folder``, pid + 1, camera - 1.

    A missing list, a line that is not ``<relative path> <pid>`` (pid a number >= 0), a file name
    without its camera and a line naming a missing image raise, naming the list and line."""
    if not list_path.is_file():
        raise DatasetLayoutError(f"missing msmt17 list file {list_path}; expected {expected_layout(version)}")
    listed: dict[Path, set[str]] = {}  # folder -> its file names, listed once per folder
    records = []
    for number, line in enumerate(list_path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"line {number} of {list_path}"
        if len(fields) != 2 or not fields[1].isdigit():
            raise DatasetLayoutError(f"malformed {where}: {line.strip()!r}; expected '<path relative to "
                                     f"{image_folder.name}/> <pid>', e.g. {_EXAMPLE!r}")
        path, pid = fields[0], int(fields[1])
        camera = msmt17_camera(path)
        if camera is None or camera < 1:
            raise DatasetLayoutError(f"cannot read the camera of {path!r} ({where}): expected a file name "
                                     f"<pid>_<index>_<camera from 1>_..., e.g. {_EXAMPLE_NAME}")
        full = image_folder / path
        folder = full.parent
        if folder not in listed:
            try:
                listed[folder] = set(os.listdir(folder))
            except OSError:
                listed[folder] = set()
        if full.name not in listed[folder]:
            raise DatasetLayoutError(f"{where} names {path}, but {full} does not exist")
        records.append(ReIDRecord(str(full), pid + 1, camera - 1))
    return records


def scan_msmt17(root: str | Path | None, version: str | None = None,
                val_in_train: bool = True) -> dict[str, list[ReIDRecord]]:
    """``{"train", "query", "gallery"}`` -> records of MSMT17 under ``root`` (see the module)."""
    base, version = resolve_msmt17_root(root, version)
    folders = [base / f for f in MSMT17_FOLDERS[version]]
    lists = {name: read_msmt17_list(base / name, folders[which], version) for name, which in MSMT17_LISTS}
    train = lists["list_train.txt"] + (lists["list_val.txt"] if val_in_train else [])
    return {"train": train, "query": lists["list_query.txt"], "gallery": lists["list_gallery.txt"]}
