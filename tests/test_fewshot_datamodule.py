"""FewShotDataModule on the layouts the generator writes (miniImageNet CSV, CUB-200-2011, class folders),
the synthetic set, seeded augmentation, fixed evaluation episodes and the clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from datamodules import FewShotDataModule, SyntheticClasses, write_classes_layout
from datamodules.class_scan import scan_cub
from datamodules.reid import DatasetLayoutError, UnreadableImageError

SIZE = 32
GEN = dict(num_classes=15, images_per_class=8, height=SIZE, width=SIZE, few_shot_splits=(5, 5, 5))
TINY = dict(image_size=(SIZE, SIZE), train_way=3, train_shot=1, train_query=2, eval_way=3, eval_shot=2, eval_query=3,
            train_episodes=2, val_episodes=3, test_episodes=4, num_workers=0, padding=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def gen() -> SyntheticClasses:
    return SyntheticClasses(seed=2, **GEN)


@pytest.fixture(scope="module")
def trees(tmp_path_factory, gen) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fewshot")
    return {
        "miniimagenet": write_classes_layout(base / "mini", "miniimagenet", gen, progress=False),
        "mini_variant": write_classes_layout(base / "mini2", "miniimagenet", gen, progress=False,
                                             columns="class_name,image_name"),
        "cub": write_classes_layout(base / "CUB" / "CUB_200_2011", "cub", gen, progress=False),
        "folders": write_classes_layout(base / "folders", "folders", gen, progress=False),
    }


def _copy(tree: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tree, tmp_path / tree.name))


def _check_episode(batch: dict, way: int, shot: int, query: int) -> None:
    n = way * (shot + query)
    assert batch["image"].shape == (n, 3, SIZE, SIZE) and batch["image"].dtype == torch.float32
    assert batch["episode_labels"].tolist() == [c for c in range(way) for _ in range(shot)] + \
        [c for c in range(way) for _ in range(query)]
    assert int(batch["is_query"].sum()) == way * query
    classes = batch["label"][: way * shot : shot]
    assert len(set(classes.tolist())) == way
    assert torch.equal(classes[batch["episode_labels"]], batch["label"])
    assert len(set(batch["index"].tolist())) == n


def _expected_image(gen: SyntheticClasses, label: int, index: int, dm: FewShotDataModule) -> torch.Tensor:
    image = gen.render(label, index).image.float() / 255
    mean, std = torch.tensor(dm.mean).view(3, 1, 1), torch.tensor(dm.std).view(3, 1, 1)
    return (image - mean) / std


@pytest.mark.parametrize("layout", ["miniimagenet", "mini_variant"])
def test_miniimagenet_layout(trees, gen, layout):
    dm = FewShotDataModule(dataset="miniimagenet", root=str(trees[layout]), **TINY)
    assert dm.num_classes == 5  # before setup
    dm.setup("fit")
    for split in ("train", "val", "test"):
        names = dm.class_names(split)
        assert sorted(names.values()) == sorted(f"n9{c:07d}" for c in gen.split_classes(split))
        assert len(dm.datasets[split]) == 5 * 8
    batch = next(iter(dm.val_dataloader()))
    _check_episode(batch, 3, 2, 3)
    assert "box" not in batch and "mask" not in batch
    # the pixels are the generator's (up to JPEG)
    index = int(batch["index"][0])
    name = dm.datasets["val"].base.records[index].class_name
    label = int(name[2:])
    image_index = int(Path(dm.datasets["val"].base.records[index].path).stem[-8:]) - 1
    expected = _expected_image(gen, label, image_index, dm)
    assert (batch["image"][0] - expected).abs().mean() < 0.15


def test_miniimagenet_images_in_class_folders(trees, tmp_path):
    root = _copy(trees["miniimagenet"], tmp_path)
    for path in list((root / "images").iterdir()):
        (root / "images" / path.name[:9]).mkdir(exist_ok=True)
        path.rename(root / "images" / path.name[:9] / path.name)
    dm = FewShotDataModule(dataset="miniimagenet", root=str(root), **TINY)
    _check_episode(next(iter(dm.test_dataloader())), 3, 2, 3)


def test_cub_layout_split_and_boxes(trees, gen):
    splits = scan_cub(trees["cub"].parent)  # the parent of CUB_200_2011 works too
    names = {s: sorted({r.class_name for r in recs}) for s, recs in splits.items()}
    # Chen et al.: class i (0-based) -> train if i % 2 == 0, val if i % 4 == 1, test if i % 4 == 3
    assert [int(n[:3]) - 1 for n in names["train"]] == list(range(0, 15, 2))
    assert [int(n[:3]) - 1 for n in names["val"]] == [1, 5, 9, 13]
    assert [int(n[:3]) - 1 for n in names["test"]] == [3, 7, 11]
    dm = FewShotDataModule(dataset="cub", root=str(trees["cub"]), **TINY)
    assert dm.num_classes == 8 and dm.has_boxes
    batch = next(iter(dm.val_dataloader()))
    _check_episode(batch, 3, 2, 3)
    assert batch["box"].shape == (15, 4) and "mask" not in batch
    for row in range(15):
        record = dm.datasets["val"].base.records[int(batch["index"][row])]
        label = int(Path(record.path).parent.name[:3]) - 1
        image_index = int(Path(record.path).stem.split("_")[-2]) - 1
        assert batch["box"][row].tolist() == pytest.approx(gen.render(label, image_index).box.tolist(), abs=0.11)


@pytest.mark.parametrize("names", [None, ("base", "val", "novel")])
def test_class_folders_layout(gen, tmp_path, names):
    root = write_classes_layout(tmp_path / "folders", "folders", gen, progress=False,
                                split_names=names or ("train", "val", "test"))
    dm = FewShotDataModule(dataset="folders", root=str(root), **TINY)
    assert dm.num_classes == 5
    _check_episode(next(iter(dm.train_dataloader())), 3, 1, 2)
    assert sorted(dm.class_names("test").values()) == sorted(gen.classes[c].name for c in gen.split_classes("test"))


def test_nested_class_folders_like_omniglot(trees, tmp_path):
    root = _copy(trees["folders"], tmp_path)
    for split in ("train", "val", "test"):
        for i, folder in enumerate(sorted((root / split).iterdir())):
            alphabet = root / split / f"alphabet{i % 2}"
            alphabet.mkdir(exist_ok=True)
            folder.rename(alphabet / folder.name)
    dm = FewShotDataModule(dataset="folders", root=str(root), **TINY)
    assert dm.num_classes == 5
    assert all(name.startswith("alphabet") and "/" in name for name in dm.class_names("val").values())


def test_synthetic_batches_have_boxes_and_masks_and_fixed_eval_episodes():
    dm = FewShotDataModule(dataset="synthetic", synthetic=dict(num_classes=15, few_shot_splits=(5, 5, 5),
                                                               images_per_class=8, height=SIZE, width=SIZE), **TINY)
    assert dm.num_classes == 5 and dm.mask_names == ("object",) and dm.has_boxes
    loader = dm.val_dataloader()
    loader.batch_sampler.set_epoch(0)
    first = list(loader)
    loader.batch_sampler.set_epoch(3)
    again = list(loader)
    assert len(first) == 3
    for a, b in zip(first, again):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["image"], b["image"])
    probe = dm.episode_batch("val", 2)  # fixed probes for callbacks: the loader's third episode
    assert all(torch.equal(probe[k], first[2][k]) for k in first[2])
    batch = first[0]
    _check_episode(batch, 3, 2, 3)
    assert batch["mask"].shape == (15, 1, SIZE, SIZE) and batch["mask"].dtype == torch.bool
    # the box is the box of the mask (no geometric transform at evaluation)
    ys, xs = torch.nonzero(batch["mask"][0, 0], as_tuple=True)
    assert batch["box"][0].tolist() == [xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0]
    test = next(iter(dm.test_dataloader()))
    # a label is the rank of the item's generator class among the test split's classes
    raw = dm.datasets["test"].base
    classes = sorted(dm.generator.split_classes("test"))
    assert test["label"].tolist() == [classes.index(raw.locate(i)[0]) for i in test["index"].tolist()]


def test_training_episodes_and_augmentation_depend_on_seed_and_epoch_only():
    def first_batch(seed: int, epoch: int) -> dict:
        dm = FewShotDataModule(dataset="synthetic", synthetic=dict(num_classes=15, few_shot_splits=(5, 5, 5),
                                                                   images_per_class=8, height=SIZE, width=SIZE),
                               seed=seed, **TINY)
        loader = dm.train_dataloader()
        loader.batch_sampler.sampler.set_epoch(epoch)
        torch.manual_seed(epoch * 100 + 7)  # the global RNG does not matter
        return next(iter(loader))

    a, b = first_batch(0, 1), first_batch(0, 1)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["index"], b["index"])
    assert not torch.equal(a["image"], first_batch(0, 2)["image"])
    assert not torch.equal(a["index"], first_batch(1, 1)["index"])
    assert "box" not in a


def test_predict_loader_is_the_plain_test_split(trees):
    dm = FewShotDataModule(dataset="folders", root=str(trees["folders"]), eval_batch_size=16, **TINY)
    batches = list(dm.predict_dataloader())
    assert sum(len(b["index"]) for b in batches) == 40 and "episode_labels" not in batches[0]


# -- clear errors -----------------------------------------------------------------------------------


def test_class_with_fewer_than_k_plus_q_images(trees, tmp_path):
    root = _copy(trees["folders"], tmp_path)
    small = sorted((root / "val").iterdir())[1]
    for path in sorted(small.iterdir())[4:]:
        path.unlink()
    dm = FewShotDataModule(dataset="folders", root=str(root), **TINY)
    dm.train_dataloader()  # the training split is fine
    with pytest.raises(DatasetLayoutError, match=f"val split.*K\\+Q = 2\\+3 = 5.*'{small.name}' \\(4 images\\)"):
        dm.val_dataloader()


def test_too_few_classes_for_the_ways(trees):
    dm = FewShotDataModule(dataset="folders", root=str(trees["folders"]), **{**TINY, "eval_way": 6})
    with pytest.raises(DatasetLayoutError, match="6-way episodes need at least 6 classes.*val split"):
        dm.val_dataloader()


def test_missing_split_file_or_folder(trees, tmp_path):
    root = _copy(trees["miniimagenet"], tmp_path)
    (root / "val.csv").unlink()
    with pytest.raises(DatasetLayoutError, match="missing miniImageNet split file .*val.csv"):
        FewShotDataModule(dataset="miniimagenet", root=str(root), **TINY).setup("fit")
    (root / "train.csv").write_text("path,cls\na.jpg,x\n")
    with pytest.raises(DatasetLayoutError, match="header"):
        FewShotDataModule(dataset="miniimagenet", root=str(root), **TINY).num_classes
    folders = _copy(trees["folders"], tmp_path)
    shutil.rmtree(folders / "test")
    with pytest.raises(DatasetLayoutError, match="missing test split folder"):
        FewShotDataModule(dataset="folders", root=str(folders), **TINY).setup("fit")
    (trees["cub"].parent / "empty").mkdir(exist_ok=True)
    with pytest.raises(DatasetLayoutError, match="does not hold CUB-200-2011"):
        FewShotDataModule(dataset="cub", root=str(trees["cub"].parent / "empty"), **TINY).num_classes
    with pytest.raises(DatasetLayoutError, match="needs a root"):
        FewShotDataModule(dataset="miniimagenet", **TINY).num_classes
    with pytest.raises(ValueError, match="unknown dataset"):
        FewShotDataModule(dataset="imagenet")


def test_unreadable_image(trees, tmp_path):
    root = _copy(trees["folders"], tmp_path)
    bad = sorted(sorted((root / "test").iterdir())[0].iterdir())[0]
    bad.write_bytes(b"not an image")
    # without the check at setup (tests/test_bad_input.py), the loader names the file
    dm = FewShotDataModule(dataset="folders", root=str(root), **TINY, check_images=False)
    dm.setup("test")
    index = [r.path for r in dm.datasets["test"].base.records].index(str(bad))
    with pytest.raises(UnreadableImageError, match=bad.name):
        dm.datasets["test"][index]


def test_resized_real_images_keep_their_boxes(trees, tmp_path):
    dm = FewShotDataModule(dataset="cub", root=str(trees["cub"]), **{**TINY, "image_size": (64, 48)})
    dm.setup("fit")
    item = dm.datasets["test"][0]
    record = dm.datasets["test"].base.records[0]
    x1, y1, x2, y2 = record.box
    assert item["image"].shape == (3, 64, 48)
    assert item["box"].tolist() == pytest.approx([x1 * 48 / SIZE, y1 * 64 / SIZE, x2 * 48 / SIZE, y2 * 64 / SIZE], abs=1e-3)
    assert F.mse_loss(item["image"], dm.datasets["test"][0]["image"]) == 0  # cached and deterministic
