"""MSMT17 as released (V1 and V2): the generator's trees read back against their list files, read
here on their own; the choice of release; the errors of a broken tree."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from datamodules import DatasetLayoutError, ReIDDataModule, SyntheticReID, write_reid_layout
from datamodules.synthetic.real_sizes import REID_SIZES, reid_targets

SMALL = {"num_train_ids": 5, "num_test_ids": 4, "num_cameras": 15, "cameras_per_id": (2, 3),
         "images_per_camera": (1, 3), "query_cameras": 2, "num_distractors": 0, "num_junk": 0}
LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def gen() -> SyntheticReID:
    return SyntheticReID(seed=5, **SMALL)


@pytest.fixture(scope="module")
def trees(tmp_path_factory, gen) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("msmt17")
    return {"V1": write_reid_layout(base / "v1", "msmt17", gen, progress=False),
            "V2": write_reid_layout(base / "v2", "msmt17", scale=0.002, seed=1, progress=False,
                                    msmt17_version="V2", height=64, width=32)}


def read_list(path: Path, folder: Path) -> list[tuple[str, int, int]]:
    """``(file, pid, camera)`` of every line, as MSMT17's readers take them: the pid from 1 (0 is a
    distractor in this project), the camera the third ``_`` field of the name, from 0."""
    out = []
    for line in path.read_text().splitlines():
        rel, pid = line.split(" ")
        camera = int(rel.split("/")[-1].split("_")[2])
        out.append((str(folder / rel), int(pid) + 1, camera - 1))
    return out


def listed(tree: Path, version: str) -> dict[str, list[tuple[str, int, int]]]:
    base = tree / f"MSMT17_{version}"
    train, test = (base / "train", base / "test") if version == "V1" else (base / "mask_train_v2",
                                                                           base / "mask_test_v2")
    lines = {name: read_list(base / name, train if name in LISTS[:2] else test) for name in LISTS}
    return {"train": lines["list_train.txt"] + lines["list_val.txt"], "query": lines["list_query.txt"],
            "gallery": lines["list_gallery.txt"], "list_train": lines["list_train.txt"]}


def records(dm: ReIDDataModule) -> dict[str, list[tuple[str, int, int]]]:
    raw = dm._raw_datasets()
    return {s: [(r.path, r.pid, r.camid) for r in raw[s].records] for s in ("train", "query", "gallery")}


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_scanner_reads_the_lists(trees, version):
    tree = trees[version]
    dm = ReIDDataModule("msmt17", str(tree), num_workers=0, validate_on_test=True)
    assert dm.data_root == tree / f"MSMT17_{version}"
    expected = listed(tree, version)
    got = records(dm)
    for split in ("train", "query", "gallery"):
        assert got[split] == expected[split]
        assert all(Path(path).is_file() for path, _, _ in got[split])
    assert 0 < len(expected["list_train"]) < len(expected["train"])  # list_val adds images
    assert dm.num_classes == len({pid for _, pid, _ in expected["train"]})
    only_train = ReIDDataModule("msmt17", str(tree), msmt17_val_in_train=False, num_workers=0, validate_on_test=True)
    assert records(only_train)["train"] == expected["list_train"]


def test_v1_tree_holds_the_generators_images(trees, gen):
    """The generator's identities (numbered from 0 per split in the lists) and cameras come back."""
    dm = ReIDDataModule("msmt17", str(trees["V1"]), num_workers=0, validate_on_test=True)
    got = records(dm)
    for split, pids in (("train", gen.train_pids), ("query", gen.test_pids), ("gallery", gen.test_pids)):
        rank = {p: i + 1 for i, p in enumerate(pids)}
        assert Counter((pid, cam) for _, pid, cam in got[split]) == Counter(
            (rank[s.pid], s.camid) for s in gen.samples(split))
    # every training identity keeps images in list_train.txt; list_val.txt holds some of them
    lines = listed(trees["V1"], "V1")
    assert {pid for _, pid, _ in lines["list_train"]} == {pid for _, pid, _ in lines["train"]}


def test_scaled_v2_tree_has_the_scaled_sizes(trees):
    sizes = reid_targets(REID_SIZES["msmt17"].scaled(0.002))
    lines = listed(trees["V2"], "V2")
    for split in ("train", "query", "gallery"):
        target = sizes[f"labeled/{split}"]
        assert (len(lines[split]), len({p for _, p, _ in lines[split]})) == (target["images"], target["ids"])
    val = len(lines["train"]) - len(lines["list_train"])
    assert val == round(len(lines["train"]) * 2373 / 32621)


def test_the_release_is_found_or_chosen(trees, tmp_path):
    both = tmp_path / "both"
    for version in ("V1", "V2"):
        shutil.copytree(trees[version] / f"MSMT17_{version}", both / f"MSMT17_{version}")
    with pytest.raises(DatasetLayoutError, match="holds both releases.*msmt17_version"):
        _ = ReIDDataModule("msmt17", str(both), num_workers=0).data_root
    for version in ("V1", "V2"):
        dm = ReIDDataModule("msmt17", str(both), msmt17_version=version, num_workers=0, validate_on_test=True)
        assert records(dm) == {k: v for k, v in listed(both, version).items() if k != "list_train"}
    # the release folder itself, and torchreid's <root>/msmt17/MSMT17_V1
    assert ReIDDataModule("msmt17", str(both / "MSMT17_V2"), num_workers=0).data_root == both / "MSMT17_V2"
    nested = tmp_path / "reid-data"
    shutil.copytree(trees["V1"] / "MSMT17_V1", nested / "msmt17" / "MSMT17_V1")
    assert ReIDDataModule("msmt17", str(nested), num_workers=0).data_root == nested / "msmt17" / "MSMT17_V1"
    v2_layout = r"does not hold MSMT17_V2/\{mask_train_v2/, mask_test_v2/, list_train"
    with pytest.raises(DatasetLayoutError, match=v2_layout):
        _ = ReIDDataModule("msmt17", str(nested), msmt17_version="V2", num_workers=0).data_root
    with pytest.raises(ValueError, match="msmt17_version must be 'V1', 'V2' or None, got 'v1'"):
        ReIDDataModule("msmt17", str(both), msmt17_version="v1")


@pytest.fixture
def broken(trees, tmp_path) -> Path:
    """A copy of the V1 tree to damage."""
    shutil.copytree(trees["V1"] / "MSMT17_V1", tmp_path / "MSMT17_V1")
    return tmp_path / "MSMT17_V1"


def _error(root: Path) -> str:
    with pytest.raises(DatasetLayoutError) as err:
        ReIDDataModule("msmt17", str(root), num_workers=0)._raw_datasets()
    return str(err.value)


def test_a_missing_list_file_is_named_with_the_layout(broken):
    (broken / "list_query.txt").unlink()
    message = _error(broken.parent)
    assert f"missing msmt17 list file {broken / 'list_query.txt'}" in message
    lists = "list_train.txt, list_val.txt, list_query.txt, list_gallery.txt"
    assert f"MSMT17_V1/{{train/, test/, {lists}}}" in message


def test_a_listed_image_that_is_missing_is_named_with_its_line(broken):
    lines = (broken / "list_gallery.txt").read_text().splitlines()
    rel = lines[2].split(" ")[0]
    (broken / "test" / rel).unlink()
    message = _error(broken)
    assert f"line 3 of {broken / 'list_gallery.txt'} names {rel}" in message
    assert str(broken / "test" / rel) in message


@pytest.mark.parametrize("bad, reason", [
    # no pid, a third field, a negative pid, no camera field, camera 0
    ("0001/0001_000_03_0113morning_0060_0.jpg", "malformed line 2 of {list}: '{bad}'; expected"),
    ("0001/0001_000_03_0113morning_0060_0.jpg 1 extra", "malformed line 2 of {list}"),
    ("0001/0001_000_03_0113morning_0060_0.jpg -1", "malformed line 2 of {list}"),
    ("0001/0001_c3_f0046182.jpg 1", "cannot read the camera of '0001/0001_c3_f0046182.jpg' (line 2 of {list}"),
    ("0001/0001_000_00_0113morning_0060_0.jpg 1", "cannot read the camera of .* (line 2 of {list})"),
])
def test_a_malformed_line_is_named(broken, bad, reason):
    path = broken / "list_train.txt"
    lines = path.read_text().splitlines()
    lines[1] = bad
    path.write_text("\n".join(lines) + "\n")
    message = _error(broken)
    head, _, tail = reason.format(list=path, bad=bad).partition(".*")
    assert head in message and tail in message[message.index(head) + len(head):]


def test_a_missing_image_folder_or_an_empty_root_is_named(broken, tmp_path):
    shutil.rmtree(broken / "test")
    message = _error(broken.parent)
    assert f"msmt17 folder {broken} is missing the image folder(s) ['{broken / 'test'}']" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "does not hold MSMT17_V1/" in _error(empty) and "MSMT17_V2/" in _error(empty)
