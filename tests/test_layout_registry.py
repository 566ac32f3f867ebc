"""The data set registry and the nested synthetic options: a layout of one's own, registered from a test
or named by its class path in a config, reaches the data module untouched; the YAML's ``synthetic``
mapping reaches the generator; old checkpoints' flat ``synthetic_*`` hyper-parameters still load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cama.loading import datamodule_hparams, instantiate_data
from datamodules import (
    FewShotDataModule, ReIDDataModule, RetrievalDataModule, class_layout_names, register_class_layout,
    register_reid_layout, reid_layout_names,
)
from datamodules.class_layouts import ClassLayout, SyntheticClassesOptions
from datamodules.class_scan import ClassRecord
from datamodules.errors import DatasetLayoutError
from datamodules.reid_layouts import ReIDLayout, SyntheticReIDOptions
from datamodules.reid_scan import ReIDRecord

REPO = Path(__file__).resolve().parents[1]
# the tree of the tests' own layout: identities, (camera, images) per split
TRAIN_IDS, QUERY_IDS = (3, 5, 8, 13), (21, 34, 55)


class PersonFolders(ReIDLayout):
    """A layout no data module knows: ``root/<split>/person<pid>/cam<camera>-<n>.png`` (camera 1-based)."""

    name = "person_folders"

    def records(self) -> dict[str, list[ReIDRecord]]:
        out = {}
        for split in ("train", "query", "gallery"):
            out[split] = [
                ReIDRecord(str(f), int(person.name.removeprefix("person")), int(f.name[3]) - 1)
                for person in sorted((Path(self.root) / split).iterdir())
                for f in sorted(person.glob("cam*.png"))
            ]
        return out


class FlatClassFiles(ClassLayout):
    """Class images named ``<class>__<n>.png`` in one folder; even class numbers train, odd ones test."""

    name = "flat_class_files"
    split_sets = (("train", "test"),)

    def records(self, splits) -> dict[str, list[ClassRecord]]:
        files = sorted(Path(self.root).glob("*.png"))
        cls = {f: f.name.split("__")[0] for f in files}
        return {s: [ClassRecord(str(f), c) for f, c in cls.items() if (int(c[1:]) % 2 == 1) == (s == "test")]
                for s in splits}


def _image(path: Path, seed: int, size=(64, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def person_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("person_folders")
    n = 0
    for pid in TRAIN_IDS:
        for cam in (1, 2):
            for i in range(2):
                _image(root / "train" / f"person{pid}" / f"cam{cam}-{i}.png", n := n + 1)
    for pid in QUERY_IDS:
        _image(root / "query" / f"person{pid}" / "cam1-0.png", n := n + 1)
        for i in range(2):
            _image(root / "gallery" / f"person{pid}" / f"cam2-{i}.png", n := n + 1)
    return root


def test_a_layout_registered_from_a_test_trains_through_the_reid_data_module(person_tree):
    register_reid_layout("person_folders_test", PersonFolders)
    assert "person_folders_test" in reid_layout_names()
    dm = ReIDDataModule(validate_on_test=True, dataset="person_folders_test", root=str(person_tree), image_size=(64, 32), p=2, k=2,
                        eval_batch_size=8, num_workers=0)
    assert dm.num_classes == len(TRAIN_IDS) and dm.num_query == len(QUERY_IDS)
    assert dm.train_pids == sorted(TRAIN_IDS)
    batch = next(iter(dm.train_dataloader()))  # the images are read and checked (check_images) at setup
    assert batch["image"].shape == (4, 3, 64, 32)
    assert set(batch["pid"].tolist()) <= set(range(len(TRAIN_IDS))) and len(set(batch["pid"].tolist())) == 2
    evaluation = next(iter(dm.test_dataloader()))
    assert sorted(set(evaluation["pid"].tolist())) == sorted(QUERY_IDS)
    assert set(dm.eval_dataset.camids) == {0, 1} and dm.part_names == ()
    # the options of the generated set do not apply: they are not logged
    assert "synthetic" not in dm.hparams and "cuhk03_variant" not in dm.hparams


def test_a_class_layout_registered_from_a_test_feeds_retrieval(tmp_path):
    for c in range(6):
        for i in range(3):
            _image(tmp_path / f"c{c}__{i}.png", 10 * c + i, size=(24, 24))
    register_class_layout("flat_class_files_test", FlatClassFiles)
    dm = RetrievalDataModule("flat_class_files_test", validate_on_test=True, root=str(tmp_path), image_size=(24, 24), m_per_class=3,
                             batch_size=6, num_workers=0)
    assert dm.num_classes == 3 and dm.num_test_classes == 3
    assert next(iter(dm.train_dataloader()))["image"].shape == (6, 3, 24, 24)
    with pytest.raises(ValueError, match=r"has no train / val / test split .*FewShotDataModule"):
        FewShotDataModule("flat_class_files_test", root=str(tmp_path))


def test_unknown_names_list_the_registered_layouts():
    with pytest.raises(ValueError, match="unknown dataset 'viper'") as err:
        ReIDDataModule(dataset="viper")
    assert all(repr(name) in str(err.value) for name in reid_layout_names())
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'") as err:
        FewShotDataModule(dataset="imagenet")
    assert all(repr(name) in str(err.value) for name in class_layout_names())
    with pytest.raises(ValueError, match="unknown dataset 'viper'"):
        ReIDDataModule(dataset="market1501", root="/nowhere", test_dataset="viper")
    with pytest.raises(ValueError, match="cannot import the layout class 'mypkg.layouts.Mine'"):
        ReIDDataModule(dataset="mypkg.layouts.Mine")
    with pytest.raises(ValueError, match="is not a datamodules.reid_layouts.ReIDLayout"):
        ReIDDataModule(dataset="collections.OrderedDict")
    with pytest.raises(ValueError, match="name 'market1501' is taken"):
        register_reid_layout("market1501", PersonFolders)


def test_a_config_names_its_layout_by_class_path(person_tree, tmp_path):
    """``dataset: tests.test_layout_registry.PersonFolders`` through ``train.py`` (LightningCLI), no registration."""
    layout = "tests.test_layout_registry.PersonFolders"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    args = [
        sys.executable, str(REPO / "train.py"), "fit", "--config", str(REPO / "configs" / "cama_synthetic.yaml"),
        "--data.init_args.dataset", layout, "--data.init_args.val_ids", "null", "--data.init_args.validate_on_test", "true", "--data.init_args.root", str(person_tree),
        "--data.init_args.image_size", "[64, 32]", "--data.init_args.p", "2", "--data.init_args.k", "2",
        "--data.init_args.eval_batch_size", "16", "--model.init_args.width", "8",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.callbacks", "[]", "--test_after_fit", "false",
    ]
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    hparams = yaml.unsafe_load(next((tmp_path / "runs").rglob("hparams.yaml")).read_text())
    assert hparams["dataset"] == layout and hparams["num_classes"] == len(TRAIN_IDS)
    assert "synthetic" not in hparams


def test_the_nested_synthetic_options_of_a_yaml_reach_the_generator(tmp_path):
    config = yaml.safe_load((REPO / "configs" / "cama_synthetic.yaml").read_text())
    config["data"]["init_args"]["synthetic"] = {"num_train_ids": 7, "num_test_ids": 4, "num_distractors": 3,
                                                "num_junk": 2, "height": 64, "width": 32, "seed": 5}
    config["data"]["init_args"]["val_ids"] = 2
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    dm = instantiate_data(path)
    raw = dm._raw_datasets()
    assert len(set(raw["train"].pids)) == 5 == dm.num_classes and len(set(raw["val_query"].pids)) == 2
    gallery = raw["gallery"].pids
    assert sum(p == 0 for p in gallery) == 3 and sum(p == -1 for p in gallery) == 2
    assert len({p for p in gallery if p > 0}) == 4
    assert tuple(raw["query"][0]["image"].shape[-2:]) == (64, 32) and dm.generator.seed == 5
    # the class images: 8 classes (halved into train / test) of 5 images, 32x32
    config = yaml.safe_load((REPO / "configs" / "retrieval_synthetic.yaml").read_text())
    config["data"]["init_args"]["synthetic"] = {"num_classes": 8, "images_per_class": 5, "height": 32, "width": 32}
    config["data"]["init_args"].update(val_classes=None, validate_on_test=True)  # the layout's two halves as they are
    path.write_text(yaml.safe_dump(config))
    raw = instantiate_data(path)._raw_datasets()
    assert [len(set(raw[s].labels)) for s in ("train", "test")] == [4, 4]
    assert [len(raw[s]) for s in ("train", "test")] == [20, 20]
    assert tuple(raw["test"][0]["image"].shape) == (3, 32, 32)


def test_saved_synthetic_options_are_plain_and_rebuild_the_data_module(tmp_path):
    dm = ReIDDataModule(synthetic=SyntheticReIDOptions(num_train_ids=5, cameras_per_id=(2, 3), seed=3))
    saved = dict(dm.hparams)
    assert isinstance(saved["synthetic"], dict) and saved["synthetic"]["num_train_ids"] == 5
    torch.save({"datamodule_hyper_parameters": saved}, tmp_path / "x.ckpt")
    loaded = torch.load(tmp_path / "x.ckpt", weights_only=True)["datamodule_hyper_parameters"]
    again = ReIDDataModule(**loaded)
    assert again.synthetic == dm.synthetic and again.synthetic.cameras_per_id == (2, 3)


def test_old_flat_synthetic_hyper_parameters_map_to_the_nested_options():
    old = {"dataset": "synthetic", "image_size": (32, 32), "synthetic_size": 32, "synthetic_num_classes": 15,
           "synthetic_splits": (5, 5, 5), "synthetic_images_per_class": 6, "synthetic_seed": 2, "train_way": 3}
    mapped = datamodule_hparams({"datamodule_hyper_parameters": old})
    assert not any(k.startswith("synthetic_") for k in mapped)
    dm = FewShotDataModule(**mapped)
    o = dm.synthetic
    assert (o.height, o.width, o.num_classes, o.few_shot_splits, o.images_per_class, o.seed) == (
        32, 32, 15, (5, 5, 5), 6, 2)
    reid = datamodule_hparams({"datamodule_hyper_parameters": {
        "synthetic_train_ids": 4, "synthetic_cameras_per_id": [2, 2], "synthetic_placement": "loose"}})
    assert ReIDDataModule(**reid).synthetic.config() == SyntheticReIDOptions(
        num_train_ids=4, cameras_per_id=(2, 2), placement="loose").config()


class NoGallery(PersonFolders):
    """A user's layout that forgets the gallery."""

    def records(self) -> dict[str, list[ReIDRecord]]:
        out = super().records()
        del out["gallery"]
        return out


def test_a_layout_without_a_split_is_named_with_its_root(person_tree):
    register_reid_layout("no_gallery_test", NoGallery)
    dm = ReIDDataModule(dataset="no_gallery_test", root=str(person_tree), image_size=(64, 32), num_workers=0)
    with pytest.raises(DatasetLayoutError, match=rf"NoGallery layout gave no gallery images for {person_tree}"):
        dm.setup("fit")


@pytest.mark.parametrize("module", [ReIDDataModule, RetrievalDataModule])
def test_an_unknown_synthetic_option_is_named_with_the_known_ones(module):
    with pytest.raises(ValueError, match=r"synthetic: unknown option\(s\) \['num_ids'\] of .*its options are \[.*'seed'"):
        module(dataset="synthetic", synthetic={"num_ids": 3, "seed": 1})


def test_options_of_another_generator_are_refused():
    with pytest.raises(TypeError, match="synthetic must be a SyntheticReIDOptions"):
        ReIDDataModule(dataset="synthetic", synthetic=SyntheticClassesOptions())
