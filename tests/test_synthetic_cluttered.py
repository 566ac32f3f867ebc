"""The cluttered scene of the synthetic classes: object size, arrangement classes, distractors outside the
ground truth, colours not tied to a class; the classification module's validation split."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from datamodules import ClassificationDataModule
from datamodules.synthetic import COLOURS, SyntheticClasses
from datamodules.synthetic.cluttered import RELATIONS

SIZE = 128
EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity


@pytest.fixture(scope="module")
def renders() -> list:
    gen = SyntheticClasses(seed=5, num_classes=12, images_per_class=25, height=SIZE, width=SIZE,
                           scene="cluttered")
    return gen, [gen.render(label, i) for label in range(12) for i in range(25)]


def test_object_covers_5_to_25_percent_of_the_image(renders) -> None:
    _, items = renders
    fractions = np.array([float(r.mask.float().mean()) for r in items])
    assert fractions.min() >= 0.05 and fractions.max() <= 0.25
    assert fractions.max() - fractions.min() > 0.04  # drawn, not one size


def test_box_is_the_tight_box_of_the_arrangement_only(renders) -> None:
    _, items = renders
    for r in items[:60]:
        rows = np.flatnonzero(r.mask[0].numpy().any(1))
        cols = np.flatnonzero(r.mask[0].numpy().any(0))
        assert r.box.tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def test_a_class_is_two_shapes_in_its_relative_position(renders) -> None:
    gen, items = renders
    for r in items:
        labels, count = ndimage.label(r.mask[0].numpy(), structure=EIGHT)
        sizes = np.bincount(labels.ravel())[1:]
        two = np.argsort(sizes)[::-1][:2] + 1
        # two separate parts (a crescent's tip may leave a lone pixel)
        assert count >= 2 and sizes[two - 1].sum() >= 0.99 * sizes.sum()
        ys, xs = np.nonzero(labels)
        centres = [(xs[labels[ys, xs] == k].mean(), ys[labels[ys, xs] == k].mean()) for k in two]
        dx, dy = RELATIONS[gen.classes[r.label].relation]
        # whichever part is first, the offset between the parts' centroids lies along the relation
        (x1, y1), (x2, y2) = centres
        ox, oy = x2 - x1, y2 - y1
        cosine = abs(ox * dx + oy * dy) / math.hypot(ox, oy)
        assert cosine > math.cos(math.radians(30)), (gen.classes[r.label].name, ox, oy)


def test_one_to_three_distractor_objects_never_overlap_the_object(renders) -> None:
    _, items = renders
    counts, far_others, far_object = [], [], []
    for r in items:
        assert r.distractors is not None and r.distractors.shape == r.mask.shape
        assert not bool((r.distractors & r.mask).any())
        others = r.distractors[0].numpy()
        sizes = np.bincount(ndimage.label(others, structure=EIGHT)[0].ravel())[1:]
        counts.append(int((sizes > 5).sum()))  # a crescent's tip may leave a lone pixel
        image = r.image.float()
        border = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], 1).mean(1)
        far = (image - border[:, None, None]).abs().amax(0)
        far_others.append(far[r.distractors[0]])
        far_object.append(far[r.mask[0]])
    # painted in the object's palette: as far from the border's colour as the object, over the images
    assert float(torch.cat(far_others).mean()) > 0.7 * float(torch.cat(far_object).mean())
    # 1-3 distractors, each one shape or a pair of shapes
    assert min(counts) >= 1 and max(counts) <= 6 and len(set(counts)) > 2


def palette_colours(image: torch.Tensor, mask: torch.Tensor) -> set[int]:
    """The palette colours (nearest chromaticity) that cover at least 15% of the bright object pixels."""
    pixels = image.float().reshape(3, -1)[:, mask.reshape(-1)]
    pixels = pixels[:, pixels.amax(0) > 90]
    chroma = pixels / pixels.sum(0, keepdim=True)
    palette = torch.tensor(list(COLOURS.values()))
    palette = palette / palette.sum(1, keepdim=True)
    nearest = torch.cdist(chroma.T, palette).argmin(1)
    share = torch.bincount(nearest, minlength=len(palette)).float() / max(len(nearest), 1)
    return {int(i) for i in torch.nonzero(share >= 0.15)}


def shared_colour_rates(scene: str) -> tuple[float, float]:
    """How often two images of one class share an object colour, and two images of different classes."""
    gen = SyntheticClasses(seed=2, num_classes=10, images_per_class=14, height=96, width=96, scene=scene,
                           noise_std=(0.0, 0.0), colour_jitter=0.0, object_area=(0.06, 0.1))
    colours = {(c, i): palette_colours(r.image, r.mask)
               for c in range(10) for i in range(14) for r in [gen.render(c, i)]}
    same, other = [], []
    for (a, ca), (b, cb) in itertools.combinations(colours.items(), 2):
        (same if a[0] == b[0] else other).append(bool(ca & cb))
    return float(np.mean(same)), float(np.mean(other))


def test_classes_are_not_defined_by_colour() -> None:
    # the measure sees the plain scene's class colours ...
    same, other = shared_colour_rates("plain")
    assert same > 0.9 and same - other > 0.5
    # ... and in the cluttered scene two images of one class share a colour as often as any two images
    same, other = shared_colour_rates("cluttered")
    assert abs(same - other) < 0.06 and 0.2 < other < 0.8


def test_cluttered_options_are_checked() -> None:
    with pytest.raises(ValueError, match="scene"):
        SyntheticClasses(scene="busy")
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticClasses(scene="cluttered", num_classes=46)
    with pytest.raises(ValueError, match="object_area"):
        SyntheticClasses(scene="cluttered", num_classes=10, object_area=(0.2, 0.1))
    names = [c.name for c in SyntheticClasses(scene="cluttered", num_classes=45).classes]
    assert len(set(names)) == 45


def test_classification_val_split_sits_between_train_and_test() -> None:
    dm = ClassificationDataModule(image_size=(32, 32), padding=2, m_per_class=2, batch_size=6,
                                  eval_batch_size=4,
                                  synthetic=dict(height=32, width=32, num_classes=3, images_per_class=7),
                                  train_images_per_class=3, val_images_per_class=2)
    raw = dm._raw_datasets()
    assert {p % 7 for p in raw["train"].positions} == {0, 1, 2}
    assert {p % 7 for p in raw["val"].positions} == {3, 4}
    assert {p % 7 for p in raw["test"].positions} == {5, 6}
    images = {split: {bytes(image.numpy()) for batch in dm.eval_dataloader(split) for image in batch["image"]}
              for split in ("train", "val", "test")}
    counts = {split: sum(len(b["label"]) for b in dm.eval_dataloader(split))
              for split in ("train", "val", "test")}
    assert counts == {"train": 9, "val": 6, "test": 6}
    assert len(images["val"]) == 6
    assert not images["val"] & images["test"] and not images["val"] & images["train"]
    with pytest.raises(ValueError, match="val_images_per_class"):
        ClassificationDataModule(synthetic=dict(images_per_class=7), train_images_per_class=3,
                                 val_images_per_class=4)


# -- the patchwork background (configs/classifier_cluttered.yaml's) ------------------------------------
@pytest.fixture(scope="module", params=["cells", "patchwork"])
def patchwork(request) -> list:
    gen = SyntheticClasses(seed=5, num_classes=12, images_per_class=6, height=SIZE, width=SIZE,
                           scene="cluttered", background=request.param)
    return [gen.render(label, i) for label in range(12) for i in range(6)]


def test_patchwork_background_is_not_flat_and_uses_the_palette(patchwork) -> None:
    spread, border_distance = [], []
    for r in patchwork:
        image = r.image.float() / 255
        background = ~(r.mask[0] | r.distractors[0])
        spread.append(float(image[:, background].std(dim=1).mean()))
        border = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1)
        border_distance.append(float((border - border.mean(1, keepdim=True)).norm(dim=0).mean()))
    # the gradient's two muted colours: medians about 0.06 and 0.13
    assert np.median(spread) > 0.12 and np.median(border_distance) > 0.22


def test_patchwork_keeps_the_object_size_and_masks(patchwork) -> None:
    fractions = np.array([float(r.mask.float().mean()) for r in patchwork])
    assert fractions.min() >= 0.05 and fractions.max() <= 0.25
    for r in patchwork:
        assert not bool((r.mask & r.distractors).any())  # the masks hold the arrangement only


def test_patchwork_defeats_the_colour_baseline() -> None:
    """The network-free map |pixel - border colour| (bench/claims_classifier_maps.py) segments the object
    on the gradient background and much worse on the patchwork."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from claims_classifier_maps import colour_baseline

    from datamodules.images import IMAGENET_MEAN, IMAGENET_STD

    scores = {}
    for background in ("gradient", "cells", "patchwork"):
        gen = SyntheticClasses(seed=0, num_classes=12, images_per_class=8, height=SIZE, width=SIZE,
                               scene="cluttered", background=background)
        items = [gen.render(label, i) for label in range(12) for i in range(8)]
        images = torch.stack([r.image for r in items]).float() / 255
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        images = (images - mean) / std
        masks = torch.stack([r.mask[0] for r in items])
        boxes = torch.stack([r.box for r in items]).float()
        scores[background] = colour_baseline(images, masks, boxes)["miou"]
    assert scores["gradient"] > 0.6 and scores["cells"] < 0.52 and scores["patchwork"] < 0.45, scores


def test_background_option_is_checked() -> None:
    with pytest.raises(ValueError, match="background"):
        SyntheticClasses(seed=0, num_classes=12, images_per_class=2, height=SIZE, width=SIZE,
                         scene="cluttered", background="flat")
