"""The embedded synthetic classes: determinism, class table, splits, ground truth, written layouts."""

from __future__ import annotations

import csv
import itertools
import json
from collections import Counter

import pytest
import torch

from datamodules.synthetic import (
    COLOURS,
    SHAPES,
    TEXTURES,
    SyntheticClasses,
    SyntheticClassesConfig,
    write_classes_layout,
)

SMALL = dict(num_classes=12, images_per_class=4, height=48, width=48, few_shot_splits=(6, 3, 3))


@pytest.fixture(scope="module")
def gen() -> SyntheticClasses:
    return SyntheticClasses(seed=3, **SMALL)


@pytest.fixture(scope="module")
def default_gen() -> SyntheticClasses:
    return SyntheticClasses(seed=0)


# -- determinism ----------------------------------------------------------------------------------


def test_same_seed_class_index_gives_identical_image(gen):
    other = SyntheticClasses(seed=3, **SMALL)
    for label, i in ((0, 0), (5, 3), (11, 2)):
        a, b = gen.render(label, i), other.render(label, i)
        assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask) and torch.equal(a.box, b.box)
        assert a.label == b.label == label


def test_rendering_does_not_depend_on_order_or_global_rng(gen):
    ref = gen.render(4, 1).image
    torch.manual_seed(7)
    for label in (3, 0, 9):
        gen.render(label, 0)
    assert torch.equal(gen.render(4, 1).image, ref)


def test_seeds_and_indices_give_different_images(gen):
    assert not torch.equal(gen.render(0, 0).image, SyntheticClasses(seed=4, **SMALL).render(0, 0).image)
    assert not torch.equal(gen.render(0, 0).image, gen.render(0, 1).image)


def test_image_format_and_range_checks(gen):
    s = gen.render(2, 0)
    assert s.image.dtype == torch.uint8 and s.image.shape == (3, 48, 48)
    assert s.mask.dtype == torch.bool and s.mask.shape == (1, 48, 48)
    assert s.box.shape == (4,) and s.image.float().std() > 10
    with pytest.raises(IndexError):
        gen.render(12, 0)
    with pytest.raises(IndexError):
        gen.render(0, 4)


# -- classes and splits ---------------------------------------------------------------------------


def test_classes_are_distinct_attribute_combinations(default_gen):
    g = default_gen
    combos = [c.attributes() for c in g.classes]
    assert len(g.classes) == g.num_classes == 100 and len(set(combos)) == 100
    assert len(set(g.class_names)) == 100
    # many classes have a twin that differs in a single attribute: one cue is not enough
    one_off = sum(any(sum(x != y for x, y in zip(a, b)) == 1 for b in combos if b is not a) for a in combos)
    assert one_off >= 80
    # the base classes cover every attribute value, so unseen classes are new combinations of known values
    train = [g.classes[c] for c in g.split_classes("train")]
    assert {c.shape for c in train} == set(SHAPES)
    assert {c.texture for c in train} == set(TEXTURES)
    assert {c.colour for c in train} == set(COLOURS)


def test_few_shot_and_retrieval_splits(default_gen):
    g = default_gen
    splits = {s: g.split_classes(s) for s in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [64, 16, 20]
    assert sorted(itertools.chain(*splits.values())) == list(range(100))
    assert g.retrieval_classes("train") == list(range(50)) and g.retrieval_classes("test") == list(range(50, 100))
    with pytest.raises(ValueError):
        g.split_classes("novel")
    ds = g.dataset("val")
    assert len(ds) == 16 * 60 and Counter(ds.labels) == {c: 60 for c in splits["val"]}
    assert ds.locate(61) == (splits["val"][1], 1)


def test_config_checks():
    assert SyntheticClassesConfig(num_classes=50).split_sizes() == (32, 8, 10)
    with pytest.raises(ValueError, match="add up"):
        SyntheticClassesConfig(num_classes=10, few_shot_splits=(5, 3, 3))
    with pytest.raises(ValueError):
        SyntheticClassesConfig(num_classes=1000)
    with pytest.raises(TypeError):
        SyntheticClasses(seed=0, colour_count=3)


def test_dataset_items(gen):
    ds = gen.dataset([1, 7], cache=True)
    item = ds[(5, 123)]
    assert item["label"] == 7 and item["image"].shape == (3, 48, 48)
    assert item["box"].shape == (1, 4) and item["mask"].shape == (1, 48, 48)
    assert torch.equal(ds[5]["image"], item["image"])


# -- ground truth ---------------------------------------------------------------------------------


def test_box_is_the_tight_box_of_the_mask(gen):
    for label in range(gen.num_classes):
        for i in range(gen.images_per_class):
            s = gen.render(label, i)
            ys, xs = torch.nonzero(s.mask[0], as_tuple=True)
            assert len(ys) > 48, (label, i)  # the object is not tiny
            assert s.box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1.0, ys.max().item() + 1.0]


def test_object_colour_shows_inside_the_mask(default_gen):
    g = default_gen
    for label in range(0, 100, 7):
        spec = g.classes[label]
        if spec.texture != "solid":
            continue
        s = g.render(label, 0)
        inside = s.image.float()[:, s.mask[0]].median(dim=1).values / 255
        ref = torch.tensor(COLOURS[spec.colour])
        # colour up to gain, cast and jitter: the channel ordering of the class colour is kept
        assert torch.corrcoef(torch.stack([inside, ref]))[0, 1] > 0.6, spec

def test_cub_layout(tmp_path, gen):
    root = write_classes_layout(tmp_path / "CUB_200_2011", "cub", gen, progress=False)
    n = gen.num_classes * gen.images_per_class
    images = [line.split() for line in (root / "images.txt").read_text().splitlines()]
    labels = dict(line.split() for line in (root / "image_class_labels.txt").read_text().splitlines())
    classes = [line.split() for line in (root / "classes.txt").read_text().splitlines()]
    boxes = [line.split() for line in (root / "bounding_boxes.txt").read_text().splitlines()]
    split = [line.split() for line in (root / "train_test_split.txt").read_text().splitlines()]
    assert len(images) == len(labels) == len(boxes) == len(split) == n
    assert [int(c[0]) for c in classes] == list(range(1, gen.num_classes + 1))
    assert all((root / "images" / path).is_file() for _, path in images)
    assert sorted(Counter(labels.values()).values()) == [gen.images_per_class] * gen.num_classes
    first = gen.render(0, 0).box.tolist()
    x, y, w, h = (float(v) for v in boxes[0][1:])
    assert [x, y, x + w, y + h] == pytest.approx(first, abs=0.06)
    assert images[0][1].startswith(classes[0][1] + "/")
    meta = json.loads((root / "synthetic_annotations.json").read_text())
    assert meta["layout"] == "cub" and len(meta["images"]) == n


@pytest.mark.parametrize("columns", ["filename,label", "class_name,image_name"])
def test_miniimagenet_layout(tmp_path, gen, columns):
    root = write_classes_layout(tmp_path, "miniimagenet", gen, progress=False, columns=columns)
    for split, count in zip(("train", "val", "test"), (6, 3, 3)):
        with open(root / f"{split}.csv") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == columns.split(",")
        file_key, class_key = ("filename", "label") if columns == "filename,label" else ("image_name", "class_name")
        assert len({r[class_key] for r in rows}) == count and len(rows) == count * gen.images_per_class
        assert all((root / "images" / r[file_key]).is_file() for r in rows)
        assert all(r[file_key].startswith(r[class_key]) for r in rows)


def test_class_folders_layout(tmp_path, gen):
    root = write_classes_layout(tmp_path, "folders", gen, progress=False, split_names=("base", "val", "novel"))
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["base", "novel", "val"]
    assert len(list((root / "base").iterdir())) == 6
    assert all(len(list(d.iterdir())) == gen.images_per_class for d in (root / "novel").iterdir())
    with pytest.raises(ValueError):
        write_classes_layout(tmp_path / "x", "imagenet", gen)
