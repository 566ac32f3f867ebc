"""RetrievalDataModule on the layouts the generator writes (CUB-200-2011, class folders), the synthetic
classes, the m-per-class batch sampler and the clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.class_scan import scan_class_folders
from datamodules.reid import DatasetLayoutError, UnreadableImageError
from datamodules.retrieval import MPerClassBatchSampler, RetrievalDataModule, scan_cub_retrieval
from datamodules.synthetic import SyntheticClasses, write_class_folders, write_cub_layout

H, W = 40, 48  # native size of the written images: not square, so x and y scale differently
SIZE = 32
GEN = dict(num_classes=8, images_per_class=5, height=H, width=W)
FAST = dict(validate_on_test=True, image_size=(SIZE, SIZE), m_per_class=2, batch_size=6, eval_batch_size=7, num_workers=0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def gen() -> SyntheticClasses:
    return SyntheticClasses(seed=3, **GEN)


@pytest.fixture(scope="module")
def cub(tmp_path_factory, gen) -> Path:
    return write_cub_layout(tmp_path_factory.mktemp("cub") / "CUB_200_2011", gen, progress=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, gen) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("folders"), gen, progress=False)


def _copy(tree: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tree, tmp_path / tree.name))


def _edit_row(path: Path, row: int, fields: str) -> None:
    """Replace what follows the image id on line ``row`` of an annotation file."""
    rows = path.read_text().splitlines()
    rows[row] = f"{rows[row].split()[0]} {fields}"
    path.write_text("\n".join(rows) + "\n")


def _eval_items(dm: RetrievalDataModule) -> dict[str, torch.Tensor]:
    """Every evaluation item, in dataset-index order (the loader interleaves the classes)."""
    batches = list(dm.val_dataloader())
    items = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    order = torch.argsort(items["index"])
    return {k: v[order] for k, v in items.items()}


def test_cub_split_by_class_id_and_boxes_match_the_generator(cub, gen):
    dm = RetrievalDataModule("cub200", root=str(cub.parent), **FAST)  # the parent of CUB_200_2011 works too
    assert dm.num_classes == 4 and dm.num_test_classes == 4
    records = scan_cub_retrieval(cub)
    assert {Path(r.path).parent.name[:3] for r in records["train"]} == {"001", "002", "003", "004"}
    assert {Path(r.path).parent.name[:3] for r in records["test"]} == {"005", "006", "007", "008"}
    assert len(records["test"]) == 4 * GEN["images_per_class"]

    items = _eval_items(dm)
    n = len(records["test"])
    assert items["image"].shape == (n, 3, SIZE, SIZE)
    assert torch.equal(items["index"], torch.arange(n))
    assert "mask" not in items  # CUB has boxes, no masks
    annotations = json.loads((cub / "synthetic_annotations.json").read_text())["images"]
    scale = torch.tensor([SIZE / W, SIZE / H, SIZE / W, SIZE / H])
    for i, record in enumerate(records["test"]):
        meta = annotations[str(Path(record.path).relative_to(cub))]
        expected = gen.render(meta["label"], meta["index"]).box * scale  # the generator's own box, resized
        assert torch.allclose(items["box"][i], expected, atol=0.06), (record.path, items["box"][i], expected)
        assert int(items["label"][i]) == meta["label"] - 4  # test classes 4..7 of the generator -> 0..3


def test_cub_boxes_follow_resize_and_centre_crop(cub, gen):
    dm = RetrievalDataModule("cub200", validate_on_test=True, root=str(cub), image_size=(32, 32), resize_size=34, crop_scale=(0.16, 1.0),
                             m_per_class=2, batch_size=6, num_workers=0)
    assert next(iter(dm.train_dataloader()))["image"].shape == (6, 3, 32, 32)  # random resized crops
    items = _eval_items(dm)
    records = scan_cub_retrieval(cub)
    # shorter side 40 -> 34, longer 48 -> int(34 * 48 / 40) = 40; centre crop 32x32 at (4, 1)
    sx, sy, left, top = 40 / W, 34 / H, (40 - 32) // 2, (34 - 32) // 2
    for i, record in enumerate(records["test"]):
        x1, y1, x2, y2 = record.box
        expected = torch.tensor([x1 * sx - left, y1 * sy - top, x2 * sx - left, y2 * sy - top]).clamp(0, 32)
        assert torch.allclose(items["box"][i], expected, atol=0.06), (items["box"][i], expected)


def test_cub_training_batches_are_m_per_class(cub):
    dm = RetrievalDataModule("cub200", root=str(cub), **FAST)
    batches = list(dm.train_dataloader())
    assert len(batches) == (4 * GEN["images_per_class"]) // 6
    for b in batches:
        assert b["image"].shape == (6, 3, SIZE, SIZE)
        counts = torch.bincount(b["label"], minlength=4)
        assert sorted(counts[counts > 0].tolist()) == [2, 2, 2]
        assert set(b) == {"image", "label", "index"}


def test_cub_errors(cub, tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not hold CUB-200-2011"):
        RetrievalDataModule("cub200", root=str(tmp_path), **FAST).num_classes
    with pytest.raises(DatasetLayoutError, match="needs a root"):
        RetrievalDataModule("cub200", root=None, **FAST).num_classes

    broken = _copy(cub, tmp_path / "a")
    (broken / "image_class_labels.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"missing CUB-200-2011 file .*image_class_labels.txt"):
        RetrievalDataModule("cub200", root=str(broken), **FAST).num_classes

    out_of_range = _copy(cub, tmp_path / "b")
    _edit_row(out_of_range / "image_class_labels.txt", 2, "999")
    with pytest.raises(DatasetLayoutError, match=r"class id 999 .*out of range.*classes.txt.*1\.\.8"):
        RetrievalDataModule("cub200", root=str(out_of_range), **FAST).num_classes

    bad_box = _copy(cub, tmp_path / "c")
    _edit_row(bad_box / "bounding_boxes.txt", 0, "1 2 three 4")
    with pytest.raises(DatasetLayoutError, match=r"bounding_boxes.txt.*x.*y.*width.*height"):
        RetrievalDataModule("cub200", root=str(bad_box), **FAST).num_classes

    with pytest.raises(DatasetLayoutError, match="cub_train_classes"):
        RetrievalDataModule("cub200", root=str(cub), cub_train_classes=8, **FAST).num_classes

    unreadable = _copy(cub, tmp_path / "d")
    victim = unreadable / "images" / scan_cub_retrieval(unreadable)["test"][3].path.split("/images/")[1]
    victim.write_bytes(b"not a jpeg")
    dm = RetrievalDataModule("cub200", root=str(unreadable), **FAST)
    with pytest.raises(UnreadableImageError, match=str(victim)):
        _eval_items(dm)


def test_folders_with_split_folders(folders):
    dm = RetrievalDataModule("folders", root=str(folders), **FAST)
    train = scan_class_folders(folders, "train")
    test = scan_class_folders(folders, "test")
    assert dm.num_classes == len({r.class_name for r in train})
    assert dm.num_test_classes == len({r.class_name for r in test})
    items = _eval_items(dm)
    assert items["image"].shape[0] == len(test) and "box" not in items
    names = dm.class_names("test")
    assert [names[int(label)] for label in items["label"]] == [r.class_name for r in test]


def test_folders_flat_root_is_halved_by_class_name(folders):
    root = folders / "train"  # a flat root/<class>/<image> tree
    records = scan_class_folders(folders, "train")
    names = sorted({r.class_name for r in records})
    dm = RetrievalDataModule("folders", root=str(root), **FAST)
    assert sorted(dm.class_names("train").values()) == names[: len(names) // 2]
    assert sorted(dm.class_names("test").values()) == names[len(names) // 2:]


def test_folder_errors(folders, tmp_path):
    only_train = tmp_path / "only_train"
    shutil.copytree(folders / "train", only_train / "train")
    with pytest.raises(DatasetLayoutError, match=r"no test/ \(or novel/\)"):
        RetrievalDataModule("folders", root=str(only_train), **FAST).num_classes
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        RetrievalDataModule("folders", root=str(tmp_path / "nowhere"), **FAST).num_classes
    one_class = tmp_path / "one" / "root"
    shutil.copytree(next(p for p in (folders / "train").iterdir() if p.is_dir()), one_class / "a")
    with pytest.raises(DatasetLayoutError, match="at least 2"):
        RetrievalDataModule("folders", root=str(one_class), **FAST).num_classes


def test_synthetic_halves_and_targets():
    dm = RetrievalDataModule("synthetic", synthetic=dict(num_classes=6, images_per_class=4, height=SIZE, width=SIZE),
                             **FAST)
    gen = dm.generator
    assert dm.num_classes == 3 and dm.num_test_classes == 3
    assert set(dm.class_names("train").values()) == {gen.classes[c].name for c in range(3)}
    assert set(dm.class_names("test").values()) == {gen.classes[c].name for c in range(3, 6)}
    items = _eval_items(dm)
    assert items["image"].shape == (12, 3, SIZE, SIZE)
    assert items["mask"].shape == (12, 1, SIZE, SIZE) and items["mask"].dtype == torch.bool
    for i in range(12):
        rendered = gen.render(3 + i // 4, i % 4)
        assert torch.equal(items["box"][i], rendered.box)
        assert torch.equal(items["mask"][i], rendered.mask)
    image = dm.denormalize(items["image"][:1], as_uint8=True)[0]
    assert (image.int() - gen.render(3, 0).image.int()).abs().max() <= 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of m_per_class"):
        RetrievalDataModule("synthetic", m_per_class=4, batch_size=10)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*'cub200'"):
        RetrievalDataModule("imagenet")
    with pytest.raises(ValueError, match="'miniimagenet' .* has no train / test split"):
        RetrievalDataModule("miniimagenet")
    with pytest.raises(ValueError, match="crop_scale"):
        RetrievalDataModule("synthetic", crop_scale=(0.5, 0.2))
    dm = RetrievalDataModule("synthetic", validate_on_test=True, synthetic=dict(num_classes=6, images_per_class=4, height=SIZE, width=SIZE),
                             image_size=(SIZE, SIZE), m_per_class=2, batch_size=8, num_workers=0)
    with pytest.raises(DatasetLayoutError, match="needs 4 classes, the training split has 3"):
        dm.train_dataloader()


def test_m_per_class_batch_sampler():
    labels = [c for c in range(7) for _ in range(5)] + [7, 7]  # class 7 has fewer than m images
    state = np.random.get_state()
    s = MPerClassBatchSampler(labels, m=3, batch_size=12, seed=5)
    assert len(s) == len(labels) // 12
    s.set_epoch(2)
    first = list(s)
    s.set_epoch(2)
    assert list(s) == first  # a function of (seed, epoch)
    s.set_epoch(3)
    assert list(s) != first
    assert np.array_equal(np.random.get_state()[1], state[1])  # NumPy's global generator is left alone
    for batch in first:
        idx = [i for i, _ in batch]
        counts = np.bincount([labels[i] for i in idx], minlength=8)
        assert sorted(counts[counts > 0].tolist()) == [3, 3, 3, 3]
    # DDP: each rank gets whole batches of the same global list
    ranks = [MPerClassBatchSampler(labels, 3, 12, seed=5, num_replicas=2, rank=r, batches_per_epoch=6) for r in (0, 1)]
    single = MPerClassBatchSampler(labels, 3, 12, seed=5, batches_per_epoch=6)
    for r in ranks:
        r.set_epoch(1)
    single.set_epoch(1)
    merged = [b for pair in zip(*(list(r) for r in ranks)) for b in pair]
    assert [[i for i, _ in b] for b in merged] == [[i for i, _ in b] for b in single]
    with pytest.raises(ValueError, match="multiple"):
        MPerClassBatchSampler(labels, 3, 10)


@pytest.mark.parametrize("seed", [0, 5, 123])
def test_m_per_class_order_is_that_of_pml_on_the_same_generator(seed, monkeypatch):
    """The batches are pytorch-metric-learning's MPerClassSampler order with its generator seeded by
    (seed, epoch), and pml's global generator is neither read nor replaced."""
    from pytorch_metric_learning.samplers import MPerClassSampler
    from pytorch_metric_learning.utils import common_functions as pml_common

    from datamodules.seeding import mix_seed

    labels = [(3 * i) % 8 for i in range(45)] + [9, 9]  # classes out of order, class 9 has fewer than m images
    global_rng = pml_common.NUMPY_RANDOM
    for m, batch_size, batches in ((3, 12, None), (2, 4, 1), (5, 15, 6)):
        ours = MPerClassBatchSampler(labels, m, batch_size, seed=seed, batches_per_epoch=batches)
        total = len(ours)
        for epoch in (0, 1, 4):
            got = ours.epoch_batches(epoch)
            assert pml_common.NUMPY_RANDOM is global_rng
            monkeypatch.setattr(pml_common, "NUMPY_RANDOM", np.random.RandomState(mix_seed(seed, epoch) % 2**32))
            pml = [int(i) for i in MPerClassSampler(labels, m, batch_size, length_before_new_iter=total * batch_size)]
            monkeypatch.setattr(pml_common, "NUMPY_RANDOM", global_rng)
            assert got == [pml[b * batch_size : (b + 1) * batch_size] for b in range(total)]
