"""Evaluation over part of the evaluation set: sanity check, ``limit_val_batches``, the loader order."""

from __future__ import annotations

import logging
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from cama.metrics import evaluate_rank
from cama.metrics.reid import pairwise_distance
from cama.models import CAMA
from datamodules import ReIDDataModule
from datamodules.eval_order import SpreadSampler, spread_order


@pytest.mark.parametrize("sizes", [(3, 9), (40, 151), (1, 1, 5, 17), (7,)])
def test_every_prefix_holds_each_group_in_proportion(sizes):
    groups = torch.cat([torch.full((n,), g) for g, n in enumerate(sizes)])
    groups = groups[torch.randperm(groups.numel(), generator=torch.Generator().manual_seed(0))]
    order = spread_order(groups)
    total = groups.numel()
    assert sorted(order.tolist()) == list(range(total))  # a permutation
    for m in range(1, total + 1):
        seen = groups[order[:m]]
        for g, n in enumerate(sizes):
            assert abs(int((seen == g).sum()) - n * m / total) <= 1, (m, g)
    # inside a group the dataset order is kept
    for g in range(len(sizes)):
        members = order[groups[order] == g]
        assert torch.equal(members, torch.sort(members).values)
    assert list(SpreadSampler(groups)) == order.tolist()


def tiny_data(**overrides) -> ReIDDataModule:
    kwargs = dict(dataset="synthetic", validate_on_test=True, image_size=(64, 32), p=4, k=2, eval_batch_size=16, num_workers=0,
                  synthetic=dict(num_train_ids=10, num_test_ids=20, num_distractors=6, num_junk=4))
    return ReIDDataModule(**{**kwargs, **overrides})


class SeenIndices(Callback):
    """Records the dataset indices of the validation batches (outside the sanity check)."""

    def __init__(self) -> None:
        self.indices: list[int] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.indices += batch["index"].tolist()


def fit_tiny(tmp_path, data: ReIDDataModule, limit_val_batches, seen: SeenIndices) -> tuple[pl.Trainer, CAMA]:
    pl.seed_everything(0)
    data.setup("fit")
    model = CAMA(num_classes=data.num_classes, backbone="resnet10", num_branches=2, warmup_epochs=0)
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=limit_val_batches, num_sanity_val_steps=2,
        logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
        callbacks=[seen, ModelCheckpoint(dirpath=tmp_path, monitor="Val/mAP", mode="max")],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    return trainer, model


def test_more_queries_than_the_sanity_check_sees_and_a_limited_epoch_ranks_what_it_saw(tmp_path, caplog):
    data = tiny_data()
    seen = SeenIndices()
    with caplog.at_level(logging.INFO):
        trainer, model = fit_tiny(tmp_path, data, 3, seen)
    assert data.eval_dataset.num_query > 2 * data.eval_batch_size  # the sanity check sees a part
    text = caplog.text
    assert "sanity check: ReIDRankMetric skipped" in text
    assert "3 of" in text and "left out" in text

    # the logged numbers are those of the seen queries ranked against the seen gallery
    idx = torch.tensor(seen.indices)
    assert idx.numel() == 3 * data.eval_batch_size
    items = [data.eval_dataset[i] for i in idx.tolist()]
    images = torch.stack([it["image"] for it in items])
    model.eval()
    with torch.no_grad():
        emb = model(images)
    pids = torch.tensor([int(it["pid"]) for it in items])
    cams = torch.tensor([int(it["camid"]) for it in items])
    isq = torch.tensor([bool(it["is_query"]) for it in items])
    assert isq.any() and (~isq).any()  # the spread order gives the part both queries and gallery
    keep = ~isq & (pids != -1)
    dist = pairwise_distance(emb[isq], emb[keep])
    cmc, m_ap, _ = evaluate_rank(dist, pids[isq], pids[keep], cams[isq], cams[keep], max_rank=50,
                                 return_minp=True)
    assert float(trainer.callback_metrics["Val/mAP"]) == pytest.approx(m_ap, abs=1e-6)
    assert float(trainer.callback_metrics["Val/rank1"]) == pytest.approx(float(cmc[0]), abs=1e-6)


def test_a_part_with_nothing_to_rank_logs_nan_and_the_run_goes_on(tmp_path):
    data = tiny_data(eval_batch_size=1)  # the first batch of the spread order: one gallery image
    seen = SeenIndices()
    with pytest.warns(UserWarning, match="logged as NaN"):
        trainer, _ = fit_tiny(tmp_path, data, 1, seen)
    assert all(i >= data.eval_dataset.num_query for i in seen.indices)
    assert math.isnan(float(trainer.callback_metrics["Val/mAP"]))
    assert trainer.state.finished and list(tmp_path.glob("*.ckpt"))  # ModelCheckpoint saved anyway


def test_a_real_layout_prefix_holds_gallery_identities_not_only_junk_and_distractors(tmp_path):
    from datamodules import SyntheticReID, write_reid_layout

    gen = SyntheticReID(seed=3, num_train_ids=4, num_test_ids=6, num_distractors=12, num_junk=12)
    root = write_reid_layout(tmp_path / "Market-1501-v15.09.15", "market1501", gen, progress=False)
    data = ReIDDataModule(dataset="market1501", validate_on_test=True, root=str(root), image_size=(32, 16), eval_batch_size=8,
                          num_workers=0)
    data.setup("validate")
    pids = data.eval_dataset.pids
    num_query = data.eval_dataset.num_query
    gallery = pids[num_query:]
    assert gallery[: 24] == sorted(gallery[: 24]) and max(gallery[: 24]) <= 0  # on disk: junk, distractors first
    order = list(data.val_dataloader().sampler)
    for size in (8, 16, 32):  # each prefix: queries, and gallery images of identities, distractors and junk
        prefix = [pids[i] for i in order[:size] if i >= num_query]
        assert any(i < num_query for i in order[:size]) and any(p > 0 for p in prefix), size
    first = [pids[i] for i in order[:40] if i >= num_query]
    assert {-1, 0} <= set(first) and sum(p > 0 for p in first) > sum(p <= 0 for p in first)
