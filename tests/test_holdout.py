"""The re-ID validation split of its own: identities held out of training, split by the test protocol."""

from __future__ import annotations

from collections import Counter

import pytest

from datamodules import ReIDDataModule, write_reid_layout
from datamodules.holdout import hold_out_classes, hold_out_identities
from datamodules.retrieval import RetrievalDataModule

# identity 1: two images in camera 0, one in camera 1; identity 2: one image in each of two cameras;
# identity 3: two images in cameras 0 and 1; identity 4: camera 0 only (never held out)
PIDS = [1, 1, 1, 2, 2, 3, 3, 3, 3, 4]
CAMS = [0, 0, 1, 0, 1, 0, 0, 1, 1, 0]


def test_hand_worked_split():
    split = hold_out_identities(PIDS, CAMS, count=3, seed=5)
    assert split.identities == [1, 2, 3]
    assert split.train == [9]
    # one query per (identity, camera) with two or more images: (1, c0), (3, c0), (3, c1)
    assert sorted((PIDS[i], CAMS[i]) for i in split.query) == [(1, 0), (3, 0), (3, 1)]
    assert split.query[0] in (0, 1) and split.query[1] in (5, 6) and split.query[2] in (7, 8)
    assert sorted(split.query + split.gallery) == list(range(9))
    assert not split.camera_free


@pytest.mark.parametrize("seed", range(5))
def test_every_query_has_a_match_in_another_camera(seed):
    import random
    rng = random.Random(100 + seed)
    pids = [rng.randrange(1, 40) for _ in range(400)]
    cams = [rng.randrange(6) for _ in range(400)]
    split = hold_out_identities(pids, cams, count=10, seed=seed)
    held = set(split.identities)
    assert len(held) == 10 and held.isdisjoint(pids[i] for i in split.train)
    assert sorted(split.query + split.gallery) == sorted(i for i, p in enumerate(pids) if p in held)
    per_camera = Counter((pids[i], cams[i]) for i in split.query)
    images = Counter((p, c) for p, c in zip(pids, cams) if p in held)
    assert per_camera == Counter({key: 1 for key, n in images.items() if n >= 2})
    for q in split.query:
        assert any(pids[g] == pids[q] and cams[g] != cams[q] for g in split.gallery)


def test_the_draw_depends_on_the_seed_only():
    assert hold_out_identities(PIDS, CAMS, 2, seed=1) == hold_out_identities(PIDS, CAMS, 2, seed=1)
    draws = {tuple(hold_out_identities(PIDS, CAMS, 1, seed=s).identities) for s in range(20)}
    assert draws == {(1,), (2,), (3,)}  # any eligible identity, never identity 4 (one camera)


def test_too_many_identities_or_none():
    with pytest.raises(ValueError, match=r"val_ids=4: at most 3 of the 4 training identities"):
        hold_out_identities(PIDS, CAMS, 4)
    with pytest.raises(ValueError, match="whole number >= 1"):
        hold_out_identities(PIDS, CAMS, 0)


def test_one_camera_training_set_reads_queries_as_camera_0_and_gallery_as_camera_1():
    split = hold_out_identities([1, 1, 1, 2, 3, 3], [0] * 6, count=2, seed=0)
    assert split.camera_free and split.identities == [1, 3]  # identity 2 has a single image
    assert sorted(pids_of(split.query, [1, 1, 1, 2, 3, 3])) == [1, 3]


def pids_of(positions, pids):
    return [pids[i] for i in positions]


SYNTH = dict(num_workers=0, image_size=(32, 16), eval_batch_size=16,
             synthetic={"num_train_ids": 12, "num_test_ids": 5, "num_cameras": 4, "num_distractors": 2,
                        "num_junk": 1, "height": 32, "width": 16})


def test_synthetic_validation_identities_are_disjoint_from_training_and_test():
    dm = ReIDDataModule(val_ids=4, **SYNTH)
    dm.setup("fit")
    val_pids = set(dm.val_dataset.pids)
    assert val_pids == set(dm.val_identities) and len(val_pids) == 4
    assert val_pids.isdisjoint(dm.train_pids) and val_pids.isdisjoint(dm.eval_dataset.pids)
    assert dm.num_classes == 12 - 4
    batch = next(iter(dm.val_dataloader()))
    assert set(batch["pid"].tolist()) <= val_pids and "box" in batch and "mask" in batch
    assert set(next(iter(dm.test_dataloader()))["pid"].tolist()).isdisjoint(val_pids)
    assert {dm.pid_map[int(p)] for p in dm.train_dataset.base.pids} == set(range(8))


def test_validate_on_test_validates_on_the_test_split_and_trains_on_every_identity():
    dm = ReIDDataModule(validate_on_test=True, **SYNTH)
    dm.setup("fit")
    assert dm.num_classes == 12 and dm.val_identities == []
    assert dm.val_dataloader().dataset is dm.eval_dataset


def test_default_holds_out_a_tenth():
    dm = ReIDDataModule(**{**SYNTH, "synthetic": {**SYNTH["synthetic"], "num_train_ids": 30}})
    assert dm.num_classes == 27


@pytest.mark.parametrize("args, message", [
    (dict(val_ids=3, validate_on_test=True), "set one of them"),
    (dict(val_ids=0), "leaves no validation split"),
    (dict(val_ids=-2), "whole number >= 0"),
])
def test_option_errors(args, message):
    with pytest.raises(ValueError, match=message):
        ReIDDataModule(**args, **SYNTH)


def test_real_layout_holds_out_its_records_and_checks_their_images(tmp_path):
    root = write_reid_layout(tmp_path, "market1501", seed=0, progress=False, num_train_ids=10,
                             num_test_ids=3, num_distractors=1, num_junk=1, height=32, width=16)
    dm = ReIDDataModule(dataset="market1501", root=str(root), val_ids=3, image_size=(32, 16), num_workers=0)
    dm.setup("fit")
    held = set(dm.val_identities)
    paths = dm.val_dataset.paths
    assert paths and all(int(p.rsplit("/", 1)[1].split("_")[0]) in held for p in paths)
    assert all("bounding_box_train" in p for p in paths)
    # an unreadable held-out image is found by the check before fitting starts
    broken = ReIDDataModule(dataset="market1501", root=str(root), val_ids=3, image_size=(32, 16), num_workers=0)
    with open(paths[0], "wb") as f:
        f.write(b"not an image")
    with pytest.raises(Exception, match="val_query|val_gallery"):
        broken.setup("fit")


def test_hold_out_classes_keeps_the_last_ones():
    labels = [3, 0, 1, 3, 2, 2, 0, 1]
    train, val = hold_out_classes(labels, 2)
    assert [labels[i] for i in val] == [3, 3, 2, 2] and [labels[i] for i in train] == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="between 1 and 3 of the 4 training classes"):
        hold_out_classes(labels, 4)


RETRIEVAL = dict(num_workers=0, image_size=(32, 32), batch_size=10, m_per_class=5,
                 synthetic={"num_classes": 20, "images_per_class": 6, "height": 32, "width": 32})


def test_retrieval_validates_on_held_out_training_classes():
    dm = RetrievalDataModule(val_classes=3, **RETRIEVAL)
    dm.setup("fit")
    raw = dm._raw_datasets()
    held = set(raw["val"].labels)
    assert len(held) == 3 and held.isdisjoint(raw["train"].labels)
    assert dm.num_classes == 10 - 3 and len(dm.datasets["val"]) == 3 * 6
    assert sorted(set(dm.datasets["val"].labels)) == [0, 1, 2]  # relabelled within the split
    assert dm.val_dataloader().dataset is dm.datasets["val"]
    assert dm.test_dataloader().dataset is dm.datasets["test"]


def test_retrieval_validate_on_test():
    dm = RetrievalDataModule(validate_on_test=True, **RETRIEVAL)
    assert dm.num_classes == 10
    assert dm.val_dataloader().dataset is dm.datasets["test"]
    with pytest.raises(ValueError, match="set one of them"):
        RetrievalDataModule(validate_on_test=True, val_classes=2, **RETRIEVAL)


def test_classifier_validates_on_its_val_images_when_it_has_them():
    from datamodules.classification import ClassificationDataModule

    synthetic = {"num_classes": 3, "images_per_class": 8, "height": 24, "width": 24}
    dm = ClassificationDataModule(synthetic=synthetic, train_images_per_class=4, val_images_per_class=2,
                                  image_size=(24, 24), num_workers=0)
    dm.setup("fit")
    assert len(dm.val_dataloader().dataset) == 3 * 2 and len(dm.test_dataloader().dataset) == 3 * 2
    assert dm.val_dataloader().dataset is dm.datasets["val"] and dm.test_dataloader().dataset is dm.datasets["test"]
