"""The real-size generators (exact counts from metadata) and bench/real_scale.py's path on a small tree."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from datamodules.synthetic.real_sizes import (
    CLASS_SIZES,
    REID_SIZES,
    class_counts,
    real_size_classes,
    real_size_reid,
    reid_counts,
    reid_targets,
)

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from real_scale import callback_share, parse_args, run_config  # noqa: E402
from real_scale_trees import ensure_tree  # noqa: E402

# the published sizes, written out again so that a slip in the tables shows
REAL_REID = {
    "market1501": {"labeled/train": (12936, 751, 0, 0), "labeled/query": (3368, 750, 0, 0),
                   "labeled/gallery": (19732, 750, 2793, 3819)},
    "dukemtmc": {"labeled/train": (16522, 702, 0, 0), "labeled/query": (2228, 702, 0, 0),
                 "labeled/gallery": (17661, 1110, 0, 0)},
    "cuhk03": {"labeled/train": (7368, 767, 0, 0), "labeled/query": (1400, 700, 0, 0),
               "labeled/gallery": (5328, 700, 0, 0), "detected/train": (7365, 767, 0, 0),
               "detected/query": (1400, 700, 0, 0), "detected/gallery": (5332, 700, 0, 0)},
    "msmt17": {"labeled/train": (32621, 1041, 0, 0), "labeled/query": (11659, 3060, 0, 0),
               "labeled/gallery": (82161, 3060, 0, 0)},
}


@pytest.mark.parametrize("layout", sorted(REAL_REID))
def test_real_reid_sizes_are_exact(layout):
    gen, omit = real_size_reid(layout, "real")
    variants = tuple(REID_SIZES[layout].variant_sizes())
    counts = reid_counts(gen, omit, variants, layout)
    assert counts == reid_targets(REID_SIZES[layout])
    got = {k: (c["images"], c["ids"], c["distractors"], c["junk"]) for k, c in counts.items()}
    assert got == REAL_REID[layout]
    assert {s.camid for s in gen.samples("train")} == set(range(REID_SIZES[layout].cameras))
    # every query has a gallery image of its identity in another camera (left-out images included)
    for variant in variants:
        skip = omit.get((variant, "gallery"), frozenset())
        cams = defaultdict(set)
        for i, s in enumerate(gen.samples("gallery")):
            if i not in skip and s.pid > 0:
                cams[s.pid].add(s.camid)
        assert all(cams[q.pid] - {q.camid} for q in gen.samples("query"))


def test_real_msmt17_lists_from_the_metadata():
    """MSMT17's four lists at real size (no image drawn): list_train 30,248 + list_val 2,373 images of
    the 1,041 training identities, 11,659 queries and 82,161 gallery images of 3,060 identities."""
    from datamodules.synthetic.msmt17_writer import msmt17_plan

    gen, _ = real_size_reid("msmt17", "real")
    plan = msmt17_plan(gen, "V2")
    got = {name: (len(entries), len({e.pid for e in entries})) for name, entries in plan.lists.items()}
    assert got["list_train.txt"] == (30248, 1041) and got["list_val.txt"][0] == 2373
    assert (got["list_query.txt"], got["list_gallery.txt"]) == ((11659, 3060), (82161, 3060))
    # list pids are numbered from 0 in each split; paths are unique and sit in their identity's folder
    for entries in plan.lists.values():
        assert all(e.path.startswith(f"{e.pid:04d}/{e.pid:04d}_") for e in entries)
    train = plan.lists["list_train.txt"] + plan.lists["list_val.txt"]
    assert {e.pid for e in train} == set(range(1041))
    test = plan.lists["list_query.txt"] + plan.lists["list_gallery.txt"]
    assert len({e.path for e in train}) == len(train) and len({e.path for e in test}) == len(test)
    assert {e.path.split("_")[2] for e in test} == {f"{c:02d}" for c in range(1, 16)}


def test_msmt17_tree_counts_on_disk_meet_the_targets(tmp_path):
    tree = ensure_tree(tmp_path, "msmt17", 0.002, workers=1, progress=False, size=(64, 32))
    assert tree.counts == tree.targets
    assert tree.counts["image files"] == sum(tree.counts[f"labeled/{s} images"] for s in ("train", "query",
                                                                                         "gallery"))


def test_real_class_sizes_are_exact():
    gen, counts = real_size_classes("miniimagenet", "real")
    mini = class_counts(gen, counts, "miniimagenet")
    assert (mini["images"], mini["least per class"], mini["most per class"]) == (60000, 600, 600)
    assert [mini[f"{s} classes"] for s in ("train", "val", "test")] == [64, 16, 20]
    gen, counts = real_size_classes("cub", "real")
    cub = class_counts(gen, counts, "cub")
    assert (cub["images"], cub["first half images"], cub["second half images"]) == (11788, 5864, 5924)
    assert (cub["least per class"], cub["most per class"]) == (41, 60)
    assert [cub[f"{s} classes"] for s in ("train", "val", "test")] == [100, 50, 50]
    assert gen.num_classes == CLASS_SIZES["cub"].classes == len(counts)


def test_scale_fraction_and_errors():
    gen, _ = real_size_reid("market1501", 0.02)
    assert len(gen.samples("query")) == round(3368 * 0.02)
    with pytest.raises(ValueError, match="fraction"):
        real_size_reid("market1501", 1.5)
    with pytest.raises(TypeError, match="accepts only"):
        real_size_reid("market1501", "real", num_train_ids=3)


def _embeddings(model, loader):
    feats, pids, cams, isq = [], [], [], []
    with torch.no_grad():
        for batch in loader:
            feats.append(model(batch["image"]))
            pids.append(batch["pid"])
            cams.append(batch["camid"])
            isq.append(batch["is_query"])
    return torch.cat(feats), torch.cat(pids), torch.cat(cams), torch.cat(isq)


def test_rehearsal_with_sanity_check_on_more_queries_than_it_sees(tmp_path):
    """cama_market1501 on a 2% Market tree: 67 queries > num_sanity_val_steps (2) x eval batch (16)."""
    from cama.metrics import evaluate_rank
    from cama.models import CAMA
    from datamodules import ReIDDataModule

    tree = ensure_tree(tmp_path / "data", "market1501", 0.02, workers=1, progress=False, size=(64, 32))
    assert tree.counts == tree.targets and tree.counts["labeled/query images"] > 2 * 16
    opts = parse_args(["--data-root", str(tmp_path / "data"), "--scale", "0.02", "--eval-batch-size", "16",
                       "--workers", "1", "--train-steps", "2", "--timeout", "300",
                       "--extra", "--model.init_args.backbone", "resnet10"])
    assert opts.sanity_steps is None  # Lightning's default sanity check (2 batches) stays on
    run = run_config("cama_market1501", tree, tmp_path / "out", opts)
    assert run.returncode == 0, f"{run.error}\n{run.log.read_text()[-3000:]}"
    # the real config asks for float16 autocast (GPUs); on this CPU the run says it uses float32
    assert "precision 16-mixed needs a GPU; this run uses 32-true on the CPU" in run.log.read_text()
    assert {"Val/mAP", "Val/rank1", "Val/mINP"} <= set(run.fit_metrics)
    assert {"test/mAP", "test/rank1"} <= set(run.test_metrics)
    calls, _ = run.profile["[LightningModule]CAMA.on_validation_epoch_end"]
    assert calls == 2  # the sanity check's and the full validation's
    # test/mAP again from the best checkpoint's embeddings, ranked by evaluate_rank
    ckpt = next((tmp_path / "out" / "cama_market1501").glob("runs/**/best-*.ckpt"))
    model = CAMA.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = ReIDDataModule("market1501", str(tree.path), image_size=(64, 32), eval_batch_size=16, num_workers=0)
    feats, pids, cams, isq = _embeddings(model, dm.test_dataloader())
    assert int(isq.sum()) == 67
    dist = torch.cdist(feats[isq], feats[~isq]).square()
    _, m_ap = evaluate_rank(dist, pids[isq], pids[~isq], cams[isq], cams[~isq])
    assert m_ap == pytest.approx(run.test_metrics["test/mAP"], abs=1e-4)


def test_callback_share_is_the_explanation_hooks_over_the_validation_steps_and_rank_evaluations():
    profile = {  # action -> (calls, total seconds), as parse_profiles reads the SimpleProfiler
        "[Strategy]SingleDeviceStrategy.validation_step": (8, 30.0),
        "[LightningModule]CAMA.on_validation_epoch_end": (2, 10.0),
        "[Strategy]SingleDeviceStrategy.test_step": (9, 99.0),  # not the validation
        "[Callback]LocalizationMetrics{'prefix': 'loc'}.on_validation_epoch_end": (2, 3.0),
        "[Callback]ExplanationImages{'tag_prefix': 'explanations'}.on_validation_batch_end": (8, 1.0),
        "[Callback]ModelCheckpoint{'monitor': None}.on_validation_end": (2, 50.0),  # not explaining
    }
    assert callback_share(profile) == "10.0%"  # (3 + 1) / (30 + 10)
    assert callback_share({}) == "-"


@pytest.mark.parametrize("bad", [["--train-steps", "1"], ["--validations", "0"]])
def test_bad_rehearsal_arguments_are_refused(bad, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--data-root", "/nonexistent", *bad])
    assert bad[0] in capsys.readouterr().err
