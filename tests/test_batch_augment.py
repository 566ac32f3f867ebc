"""The batched training augmentation gives the per-image torchvision v2 steps' images bit for bit."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from datamodules import ClassificationDataModule, FewShotDataModule, ReIDDataModule
from datamodules.batch_augment import BatchPadCropFlip
from datamodules.images import IMAGENET_MEAN, IMAGENET_STD, NormalizeImage, flip, normalized, resize_pad_crop
from datamodules.retrieval import RetrievalDataModule
from datamodules.samplers import run_seeded

NORMALIZE = v2.Compose(normalized(IMAGENET_MEAN, IMAGENET_STD))  # re-ID's last steps


def _per_image(images: torch.Tensor, seeds: list[int], padding: int, flip_prob: float) -> torch.Tensor:
    """The per-image pipeline the data modules used before: v2 steps under each image's seed."""
    size = tuple(images.shape[-2:])
    steps = v2.Compose(resize_pad_crop(size, padding) + flip(flip_prob) + normalized(IMAGENET_MEAN, IMAGENET_STD))
    return torch.stack([run_seeded(steps, v2.functional.to_image(im), seed=s if s >= 0 else None).as_subclass(torch.Tensor)
                        for im, s in zip(images, seeds)])


@pytest.mark.parametrize("padding, flip_prob", [(6, 0.5), (10, 0.5), (0, 0.5), (3, 0.0), (0, 0.0), (2, 1.0)])
def test_batch_equals_the_per_image_steps(padding, flip_prob):
    gen = torch.Generator().manual_seed(padding)
    images = torch.randint(0, 256, (24, 3, 20, 12), dtype=torch.uint8, generator=gen)
    seeds = torch.randint(0, 2**62, (24,), generator=gen).tolist()
    augment = BatchPadCropFlip(padding, flip_prob, NORMALIZE)
    batched = augment(images, seeds)
    assert batched.dtype == torch.float32 and torch.equal(batched, _per_image(images, seeds, padding, flip_prob))
    if padding and flip_prob == 0.5:  # the draws differ between images: crops and flips both occur
        params = augment.draw(seeds)
        assert len(set(params[:, 0].tolist())) > 1 and 0 < params[:, 2].sum() < len(seeds)


def test_without_seeds_the_draws_come_from_the_global_generator_in_image_order():
    images = torch.randint(0, 256, (8, 3, 16, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    batched = BatchPadCropFlip(4, 0.5, NORMALIZE)(images, [-1] * 8)
    torch.manual_seed(5)
    assert torch.equal(batched, _per_image(images, [-1] * 8, 4, 0.5))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="flip_prob"):
        BatchPadCropFlip(2, 1.5, NORMALIZE)
    with pytest.raises(ValueError, match="uint8"):
        BatchPadCropFlip(2, 0.5, NORMALIZE)(torch.zeros(2, 3, 8, 4), [0, 1])


def test_reid_training_batches_are_the_per_image_pipelines_and_erasing_stays_per_image():
    options = dict(dataset="synthetic", image_size=(64, 32), p=3, k=2, num_workers=0, padding=4, seed=3,
                   synthetic=dict(num_train_ids=6, num_test_ids=3, num_distractors=2, num_junk=1))
    dm = ReIDDataModule(**options)
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    pairs = next(iter(loader.batch_sampler))  # (index, seed) of the same first batch
    raw = dm.train_dataset.base
    steps = dm.train_transform()  # the per-image pipeline of the same module
    expected = torch.stack([run_seeded(steps, raw[i]["image"], seed=s).as_subclass(torch.Tensor) for i, s in pairs])
    assert batch["index"].tolist() == [i for i, _ in pairs] and "seed" not in batch
    assert torch.equal(batch["image"], expected)
    erasing = ReIDDataModule(**options, random_erasing=0.5)
    assert erasing.batch_augmentation() is None
    assert next(iter(erasing.train_dataloader()))["image"].dtype == torch.float32


CLASS_MODULES = {
    "fewshot": lambda **o: FewShotDataModule(
        dataset="synthetic", synthetic=dict(num_classes=15, few_shot_splits=(5, 5, 5), images_per_class=8, height=32,
                                            width=32),
        image_size=(24, 24), train_way=3, train_shot=1, train_query=2, train_episodes=2,
        num_workers=0, padding=3, **o),
    "retrieval": lambda **o: RetrievalDataModule(
        "synthetic", synthetic=dict(num_classes=8, images_per_class=5), image_size=(32, 32), m_per_class=2,
        batch_size=6, num_workers=0, padding=3, **o),
    "classification": lambda **o: ClassificationDataModule(
        image_size=(32, 32), synthetic=dict(height=32, width=32, num_classes=4, images_per_class=5),
        train_images_per_class=3, m_per_class=2, batch_size=8, padding=3, **o),
}


@pytest.mark.parametrize("name", CLASS_MODULES)
def test_class_image_training_batches_are_the_per_image_pipelines(name):
    dm = CLASS_MODULES[name]()
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    pairs = next(iter(loader.batch_sampler))
    raw, steps, normalize = dm.datasets["train"].base, dm.train_transform(), dm.normalize()
    expected = torch.stack([normalize(run_seeded(steps, raw[i]["image"], seed=s)) for i, s in pairs])
    assert batch["index"].tolist() == [i for i, _ in pairs] and "seed" not in batch
    assert isinstance(normalize, NormalizeImage) and torch.equal(batch["image"], expected)
    assert CLASS_MODULES[name](color_jitter=0.2).batch_augmentation() is None  # jitter stays per image
    if name == "retrieval":  # so do random resized crops
        assert CLASS_MODULES[name](crop_scale=(0.5, 1.0)).batch_augmentation() is None
