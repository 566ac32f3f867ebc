"""ReIDDataModule on your own data (``dataset="folders"``) and across domains (``test_dataset``)."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from datamodules import ReIDDataModule, SyntheticReID, write_reid_folders, write_reid_layout
from datamodules.reid import DatasetLayoutError, UnreadableImageError
from datamodules.synthetic.reid_writers import folder_name

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(num_train_ids=6, num_test_ids=4, num_cameras=4, cameras_per_id=(2, 3), images_per_camera=(1, 2),
             query_cameras=2, num_distractors=3, num_junk=2, height=32, width=16)
PATTERN = r"_c(\d+)"


@pytest.fixture(scope="module")
def trees(tmp_path_factory, gen) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("reid_folders")
    return {mode: write_reid_folders(base / mode, gen, cameras=mode, progress=False)
            for mode in ("csv", "pattern", "none")}


def _module(root: Path, **kwargs) -> ReIDDataModule:
    return ReIDDataModule(validate_on_test=True, dataset="folders", root=str(root), num_workers=0, eval_batch_size=8, p=4, k=2,
                          image_size=(32, 16), **kwargs)


@pytest.fixture(scope="module")
def gen() -> SyntheticReID:
    return SyntheticReID(seed=5, **SMALL)


def _copy(trees, mode: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trees[mode], tmp_path / mode))


def _named(dm: ReIDDataModule, ds) -> Counter:
    return Counter((dm.identity_names[pid], cam) for pid, cam in zip(ds.pids, ds.camids))


@pytest.mark.parametrize("mode", ["csv", "pattern", "none"])
def test_folders_read_back_what_the_writer_wrote(trees, gen, mode):
    dm = _module(trees[mode], camera_pattern=PATTERN if mode == "pattern" else None)
    assert dm.num_classes == gen.config.num_train_ids  # before setup
    raw = dm._raw_datasets()
    for split in ("train", "query", "gallery"):
        if mode == "none":
            camera = {"train": 0, "query": 0, "gallery": 1}[split]
            expected = Counter((folder_name(s.pid), camera) for s in gen.samples(split))
        else:
            expected = Counter((folder_name(s.pid), s.camid) for s in gen.samples(split))
        assert _named(dm, raw[split]) == expected
    train_names = sorted(dm.identity_names[p] for p in dm.train_pids)
    assert train_names == sorted(folder_name(p) for p in gen.train_pids)
    assert dm.identity_names[0] == "_distractors" and dm.identity_names[-1] == "_junk"
    names = [n for p, n in sorted(dm.identity_names.items()) if p > 0]
    assert names == sorted(names)  # the stable mapping: sorted folder names numbered 1, 2, ...
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["pid"].tolist()) <= set(range(dm.num_classes))
    pids = torch.cat([b["pid"] for b in dm.val_dataloader()])
    assert (pids == 0).sum() == gen.config.num_distractors and (pids == -1).sum() == gen.config.num_junk


def test_no_cameras_puts_every_query_and_gallery_image_in_different_cameras(trees):
    dm = _module(trees["none"])
    raw = dm._raw_datasets()
    assert set(raw["query"].camids) == {0} and set(raw["gallery"].camids) == {1}


# -- clear errors -------------------------------------------------------------------------------


def test_error_query_identity_without_gallery(trees, tmp_path):
    root = _copy(trees, "none", tmp_path)
    gone = sorted(p.name for p in (root / "query").iterdir())[:2]
    for name in gone:
        shutil.rmtree(root / "gallery" / name)
    with pytest.raises(DatasetLayoutError) as err:
        _module(root).setup()
    assert "2 query identities" in str(err.value) and all(name in str(err.value) for name in gone)


def test_error_single_image_identity_or_dropped_with_min_train_images(trees, tmp_path, gen):
    root = _copy(trees, "none", tmp_path)
    person = sorted((root / "train").iterdir())[0]
    for extra in sorted(person.iterdir())[1:]:
        extra.unlink()
    with pytest.raises(DatasetLayoutError, match=f"single image: {person.name}.*min_train_images: 2"):
        _module(root).setup()
    dm = _module(root, min_train_images=2)
    assert dm.num_classes == gen.config.num_train_ids - 1
    assert person.name not in {dm.identity_names[p] for p in dm.train_pids}
    assert _module(root, min_train_images=1).num_classes == gen.config.num_train_ids
    with pytest.raises(DatasetLayoutError, match="min_train_images"):
        _module(root, min_train_images=99).setup()


@pytest.mark.parametrize("split", ["train", "query", "gallery"])
def test_error_empty_or_missing_split(trees, tmp_path, split):
    root = _copy(trees, "none", tmp_path)
    shutil.rmtree(root / split)
    with pytest.raises(DatasetLayoutError, match=f"no {split}/ folder.*expected <root>/train/<identity>"):
        _module(root).setup()
    (root / split / "someone").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match=f"{split} split .* holds no identity folder"):
        _module(root).setup()


def test_error_images_outside_identity_folders_and_bad_roots(trees, tmp_path):
    root = _copy(trees, "none", tmp_path)
    shutil.copy(next((root / "query").rglob("*.jpg")), root / "query" / "loose.jpg")
    with pytest.raises(DatasetLayoutError, match="outside identity folders .*loose.jpg"):
        _module(root).setup()
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        _module(tmp_path / "nope").setup()
    with pytest.raises(DatasetLayoutError, match="needs a root"):
        ReIDDataModule(dataset="folders").setup()


def test_error_cameras_csv_rows_and_images_must_match(trees, tmp_path):
    root = _copy(trees, "csv", tmp_path)
    lines = (root / "cameras.csv").read_text().splitlines()
    (root / "cameras.csv").write_text("\n".join(lines + ["gallery/nobody/1.jpg,3"]) + "\n")
    with pytest.raises(DatasetLayoutError, match="1 row.* name no image file.*gallery/nobody/1.jpg"):
        _module(root).setup()
    (root / "cameras.csv").write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    first = lines[1].split(",")[0]
    with pytest.raises(DatasetLayoutError, match=f"1 image.* no row in .*cameras.csv: {first}"):
        _module(root).setup()
    (root / "cameras.csv").write_text("\n".join(lines[:2] + ["train/x.jpg,left"]) + "\n")
    with pytest.raises(DatasetLayoutError, match="line 3: expected '<path>,<integer camid>'"):
        _module(root).setup()
    (root / "cameras.csv").write_text("file,camera\n")
    with pytest.raises(DatasetLayoutError, match="header 'path,camid'"):
        _module(root).setup()
    with pytest.raises(DatasetLayoutError, match="both camera_pattern"):
        _module(root, camera_pattern=PATTERN).setup()


def test_error_camera_pattern_that_does_not_match(trees):
    message = re.escape("camera_pattern 'cam(\\d+)' finds no camera number")
    with pytest.raises(DatasetLayoutError, match=message):
        _module(trees["pattern"], camera_pattern=r"cam(\d+)").setup()
    with pytest.raises(DatasetLayoutError, match="not a regular expression"):
        _module(trees["pattern"], camera_pattern="c(").setup()


def test_error_unreadable_image_is_found_at_setup(trees, tmp_path):
    root = _copy(trees, "pattern", tmp_path)
    bad = next((root / "gallery" / "_junk").iterdir())
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(UnreadableImageError) as err:
        _module(root, camera_pattern=PATTERN).setup("test")
    assert str(bad) in str(err.value)


# -- cross-domain -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> dict[str, tuple[Path, SyntheticReID]]:
    base = tmp_path_factory.mktemp("cross_domain")
    source = SyntheticReID(seed=1, **{**SMALL, "num_train_ids": 5})
    target = SyntheticReID(seed=2, **{**SMALL, "num_train_ids": 7, "num_test_ids": 3})
    return {"market1501": (write_reid_layout(base / "market", "market1501", source, progress=False), source),
            "dukemtmc": (write_reid_layout(base / "duke", "dukemtmc", target, progress=False), target)}


def test_cross_domain_trains_on_the_source_and_evaluates_on_the_target(domains):
    (market, source), (duke, target) = domains["market1501"], domains["dukemtmc"]
    dm = ReIDDataModule(validate_on_test=True, dataset="market1501", root=str(market), test_dataset="dukemtmc", test_root=str(duke),
                        num_workers=0, eval_batch_size=8)
    assert dm.num_classes == source.config.num_train_ids == len(dm.train_pids)
    assert dm.num_query == len(target.samples("query"))
    dm.setup("fit")
    assert sorted(set(dm.train_dataset.base.pids)) == source.train_pids
    batches = list(dm.val_dataloader())
    pids = torch.cat([b["pid"] for b in batches])
    camids = torch.cat([b["camid"] for b in batches])
    is_query = torch.cat([b["is_query"] for b in batches])
    for split, mask in (("query", is_query), ("gallery", ~is_query)):
        expected = Counter((s.pid, s.camid) for s in target.samples(split))
        assert Counter(zip(pids[mask].tolist(), camids[mask].tolist())) == expected
    assert all(r.path.startswith(str(duke)) for r in dm.eval_dataset.gallery.base.records)


def test_cross_domain_options(domains, trees, gen):
    market = domains["market1501"][0]
    dm = ReIDDataModule(validate_on_test=True, dataset="market1501", root=str(market), test_dataset="folders",
                        test_root=str(trees["csv"]), num_workers=0)
    expected = Counter((folder_name(s.pid), s.camid) for s in gen.samples("query"))
    assert _named(dm, dm._raw_datasets()["query"]) == expected
    reverse = ReIDDataModule(validate_on_test=True, dataset="folders", root=str(trees["csv"]), test_dataset="market1501",
                             test_root=str(market))
    assert reverse.num_classes == gen.config.num_train_ids
    assert reverse.num_query == len(domains["market1501"][1].samples("query"))
    assert reverse.identity_names is None  # the names are the training folders', not the market pids'
    with pytest.raises(ValueError, match="two data sets on disk"):
        ReIDDataModule(dataset="synthetic", test_dataset="market1501", test_root=str(market))
    with pytest.raises(ValueError, match="unknown dataset 'viper'"):
        ReIDDataModule(dataset="market1501", root=str(market), test_dataset="viper")


def test_cross_domain_config_builds_the_data_module(domains):
    config = yaml.safe_load((REPO / "configs" / "cama_market1501_to_dukemtmc.yaml").read_text())
    args = config["data"]["init_args"]
    assert config["data"]["class_path"] == "datamodules.ReIDDataModule"
    assert (args["dataset"], args["test_dataset"]) == ("market1501", "dukemtmc")
    roots = {"root": str(domains["market1501"][0]), "test_root": str(domains["dukemtmc"][0])}
    # the tiny trees have too few identities for the config's validation split: validate on the test one
    args = {**args, **roots, "num_workers": 0, "val_ids": None, "validate_on_test": True}
    dm = ReIDDataModule(**args)
    assert dm.num_classes == domains["market1501"][1].config.num_train_ids
    assert dm.num_query == len(domains["dukemtmc"][1].samples("query"))
