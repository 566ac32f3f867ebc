"""ReIDDataModule on the real layouts (written by the generator), PKSampler, seeded augmentation."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from datamodules import PKSampler, ReIDDataModule, SyntheticReID, write_reid_layout
from datamodules.reid import DatasetLayoutError, UnreadableImageError
from datamodules.synthetic import PART_NAMES

SMALL = dict(num_train_ids=8, num_test_ids=5, num_cameras=6, cameras_per_id=(2, 3), images_per_camera=(1, 2),
             query_cameras=2, num_distractors=3, num_junk=2)
SYNTH_DM = dict(synthetic=dict(num_train_ids=8, num_test_ids=5, cameras_per_id=(2, 3), images_per_camera=(1, 2),
                               num_distractors=3, num_junk=2, seed=4))
FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def gen() -> SyntheticReID:
    return SyntheticReID(seed=3, **SMALL)


@pytest.fixture(scope="module")
def trees(tmp_path_factory, gen) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("reid")
    out = {
        "market1501": write_reid_layout(base / "Market-1501-v15.09.15", "market1501", gen, progress=False),
        "dukemtmc": write_reid_layout(base / "DukeMTMC-reID", "dukemtmc", gen, progress=False),
        "cuhk03": write_reid_layout(base / "cuhk" / "cuhk03-np", "cuhk03", seed=2, progress=False,
                                    num_train_ids=5, num_test_ids=3, images_per_camera=(1, 2)),
    }
    return out


def _multiset(ds) -> Counter:
    return Counter(zip(ds.pids, ds.camids))


def _expected(g: SyntheticReID, split: str) -> Counter:
    return Counter((s.pid, s.camid) for s in g.samples(split))


# -- real layouts -------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["market1501", "dukemtmc"])
def test_real_layout_parses_back_to_the_generator(trees, gen, layout):
    dm = ReIDDataModule(validate_on_test=True, dataset=layout, root=str(trees[layout]), num_workers=0)
    assert dm.num_classes == gen.config.num_train_ids  # before setup
    raw = dm._raw_datasets()
    for split in ("train", "query", "gallery"):
        assert len(raw[split]) == len(gen.samples(split))
        assert _multiset(raw[split]) == _expected(gen, split)
    assert dm.num_query == len(gen.samples("query"))
    assert dm.part_names == ()


def test_root_may_be_the_parent_folder(trees, gen):
    parent = trees["market1501"].parent
    dm = ReIDDataModule(validate_on_test=True, dataset="market1501", root=str(parent / ".." / parent.name), num_workers=0)
    assert dm.data_root.name == "Market-1501-v15.09.15"
    assert dm.num_classes == gen.config.num_train_ids


@pytest.mark.parametrize("variant", ["labeled", "detected"])
@pytest.mark.parametrize("level", ["cuhk03-np", "parent"])
def test_cuhk03_variants_and_roots(trees, variant, level):
    g = SyntheticReID(seed=2, num_train_ids=5, num_test_ids=3, num_cameras=2, cameras_per_id=(2, 2),
                      images_per_camera=(1, 2), query_cameras=2, num_distractors=0, num_junk=0)
    root = trees["cuhk03"] if level == "cuhk03-np" else trees["cuhk03"].parent
    dm = ReIDDataModule(validate_on_test=True, dataset="cuhk03", root=str(root), cuhk03_variant=variant, num_workers=0)
    assert dm.data_root == trees["cuhk03"] / variant
    raw = dm._raw_datasets()
    for split in ("train", "query", "gallery"):
        assert _multiset(raw[split]) == _expected(g, split)
        assert all(Path(r.path).suffix == ".png" for r in raw[split].records)
    assert dm.num_classes == 5


def test_real_loaders_batches(trees, gen):
    dm = ReIDDataModule(validate_on_test=True, dataset="market1501", root=str(trees["market1501"]), num_workers=0,
                        image_size=(64, 32), p=3, k=2, eval_batch_size=7, padding=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (6, 3, 64, 32) and batch["image"].dtype == torch.float32
    assert batch["pid"].dtype == torch.long and batch["camid"].dtype == torch.long
    # relabelled pids map back to the original pid of each index through the sorted training pids
    train_pids = sorted({s.pid for s in gen.samples("train")})
    recs = dm.train_dataset.base.records
    for pid, idx, cam in zip(batch["pid"].tolist(), batch["index"].tolist(), batch["camid"].tolist()):
        assert train_pids[pid] == recs[idx].pid and recs[idx].camid == cam
    # the relabelling is the rank of the pid among the generator's training identities
    assert dm.pid_map == {p: i for i, p in enumerate(gen.train_pids)} and dm.num_classes == len(gen.train_pids)
    batches = list(dm.val_dataloader())
    assert batches[0]["image"].shape[1:] == (3, 64, 32)
    is_query = torch.cat([b["is_query"] for b in batches])
    index = torch.cat([b["index"] for b in batches])
    pid = torch.cat([b["pid"] for b in batches])
    nq = len(gen.samples("query"))
    # every sample once (queries and gallery interleaved, see datamodules.eval_order)
    order = torch.argsort(index)
    index, is_query = index[order], is_query[order]
    assert torch.equal(index, torch.arange(nq + len(gen.samples("gallery"))))
    assert is_query[:nq].all() and not is_query[nq:].any() and dm.num_query == nq
    assert (pid == -1).sum() == gen.config.num_junk and (pid == 0).sum() == gen.config.num_distractors
    assert "box" not in batches[0] and "mask" not in batches[0]


def test_train_set_drops_junk_and_distractors(trees, tmp_path):
    root = tmp_path / "market"
    shutil.copytree(trees["market1501"], root)
    src = next((root / "bounding_box_train").iterdir())
    shutil.copy(src, root / "bounding_box_train" / "0000_c1s1_000001_01.jpg")
    shutil.copy(src, root / "bounding_box_train" / "-1_c2s1_000002_01.jpg")
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"\0")
    (root / "query" / "readme.txt").write_text("not an image")
    dm = ReIDDataModule(validate_on_test=True, dataset="market1501", root=str(root), num_workers=0)
    raw = dm._raw_datasets()
    # exactly the generator's training images: the added pid 0 / -1 files and the non-images are dropped
    written = json.loads((trees["market1501"] / "synthetic_annotations.json").read_text())["images"]
    assert raw["train"].pids == [a["pid"] for path, a in sorted(written.items()) if path.startswith("bounding_box_train/")]
    assert len(raw["train"]) == len(list((trees["market1501"] / "bounding_box_train").iterdir()))
    assert len(raw["query"]) == len(list((trees["market1501"] / "query").iterdir()))


# -- clear errors -------------------------------------------------------------------------------


def test_error_wrong_root(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    dm = ReIDDataModule(dataset="market1501", root=str(tmp_path))
    with pytest.raises(DatasetLayoutError) as err:
        dm.num_classes
    msg = str(err.value)
    assert str(tmp_path) in msg and "bounding_box_train" in msg and "images" in msg and "labels" in msg
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        ReIDDataModule(dataset="dukemtmc", root=str(tmp_path / "nope")).setup()
    with pytest.raises(DatasetLayoutError, match="needs a root"):
        ReIDDataModule(dataset="cuhk03").setup()


def test_error_missing_subfolder(trees, tmp_path):
    root = tmp_path / "market"
    shutil.copytree(trees["market1501"], root)
    shutil.rmtree(root / "query")
    with pytest.raises(DatasetLayoutError) as err:
        ReIDDataModule(dataset="market1501", root=str(root)).setup()
    assert str(root / "query") in str(err.value)


def test_error_unparsable_name(trees, tmp_path):
    root = tmp_path / "duke"
    shutil.copytree(trees["dukemtmc"], root)
    bad = root / "bounding_box_test" / "person_cam1.jpg"
    shutil.copy(next((root / "query").iterdir()), bad)
    with pytest.raises(DatasetLayoutError) as err:
        ReIDDataModule(dataset="dukemtmc", root=str(root)).setup()
    assert str(bad) in str(err.value) and "_c(" in str(err.value)


def test_error_unreadable_image(trees, tmp_path):
    root = tmp_path / "market"
    shutil.copytree(trees["market1501"], root)
    bad = root / "query" / "0001_c1s1_000001_01.jpg"
    bad.write_bytes(b"this is not a jpeg")
    # without the check at setup (tests/test_bad_input.py), the loader names the file
    dm = ReIDDataModule(validate_on_test=True, dataset="market1501", root=str(root), num_workers=0, check_images=False)
    dm.setup("test")
    i = [r.path for r in dm.query_dataset.base.records].index(str(bad))
    with pytest.raises(UnreadableImageError) as err:
        dm.eval_dataset[i]
    assert str(bad) in str(err.value)


# -- synthetic data module ----------------------------------------------------------------------


def test_synthetic_eval_batch_has_transformed_ground_truth():
    dm = ReIDDataModule(validate_on_test=True, dataset="synthetic", image_size=(256, 128), eval_batch_size=6, num_workers=0,
                        **SYNTH_DM)
    g = SyntheticReID(seed=4, **SMALL)
    assert dm.part_names == PART_NAMES
    assert dm.num_classes == 8 and dm.num_query == len(g.samples("query"))
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    B = 6
    assert batch["image"].shape == (B, 3, 256, 128)
    assert batch["box"].shape == (B, 4) and batch["box"].dtype == torch.float32
    assert batch["mask"].shape == (B, len(PART_NAMES), 256, 128) and batch["mask"].dtype == torch.bool
    nq = dm.num_query
    for j, index in enumerate(batch["index"].tolist()):
        s = g.render("query", index) if index < nq else g.render("gallery", index - nq)
        # native 128x64 -> 256x128: boxes scale by 2, masks are nearest-upsampled
        assert torch.allclose(batch["box"][j], s.box * 2)
        up = F.interpolate(s.masks[None].float(), scale_factor=2, mode="nearest")[0].bool()
        assert torch.equal(batch["mask"][j], up)
        assert batch["pid"][j] == s.pid and batch["camid"][j] == s.camid
    # denormalize inverts the normalisation of an eval image
    dm_native = ReIDDataModule(validate_on_test=True, dataset="synthetic", image_size=(128, 64), num_workers=0, **SYNTH_DM)
    dm_native.setup()
    item = dm_native.query_dataset[0]
    back = dm_native.denormalize(item["image"], as_uint8=True)
    assert (back.int() - g.render("query", 0).image.int()).abs().max() <= 1
    # the input is (x / 255 - mean) / std of the rendered image, on every read (the second one from the cache)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (dm_native.mean, dm_native.std))
    expected = (g.render("query", 0).image.float() / 255 - mean) / std
    again = dm_native.query_dataset[0]
    for read in (item, again):
        assert torch.allclose(read["image"], expected, atol=1e-6) and torch.equal(read["mask"], again["mask"])


def test_synthetic_relabel_and_sampler_batches():
    dm = ReIDDataModule(validate_on_test=True, dataset="synthetic", image_size=(32, 16), p=4, k=3, num_workers=0, padding=2,
                        **SYNTH_DM)
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, PKSampler)
    assert len(loader) == len(dm.train_dataset) // 12
    for batch in loader:
        pids = batch["pid"].view(4, 3)
        assert (pids == pids[:, :1]).all() and len(set(pids[:, 0].tolist())) == 4
        # each label is the rank of the item's pid among the generator's training pids
        infos = dm.generator.samples("train")
        assert batch["pid"].tolist() == [dm.generator.train_pids.index(infos[i].pid) for i in batch["index"].tolist()]


def test_seeded_item_gives_identical_augmentation():
    dm = ReIDDataModule(validate_on_test=True, dataset="synthetic", image_size=(64, 32), padding=8, random_erasing=0.5,
                        num_workers=0, **SYNTH_DM)
    dm.setup("fit")
    ds = dm.train_dataset
    torch.manual_seed(0)
    a = ds[(3, 12345)]
    torch.manual_seed(99)
    torch.rand(7)
    b = ds[(3, 12345)]
    assert torch.equal(a["image"], b["image"]) and a["pid"] == b["pid"] and a["index"] == b["index"] == 3
    # the global RNG is left as it was
    state = torch.get_rng_state()
    ds[(3, 1)]
    assert torch.equal(state, torch.get_rng_state())
    # other seeds give other augmentations (crop offsets, flips, erasing)
    outs = {ds[(3, s)]["image"].sum().item() for s in range(8)}
    assert len(outs) > 1


def _epoch_images(dm, epoch, num_workers):
    dm.num_workers = num_workers
    loader = dm.train_dataloader()
    loader.batch_sampler.sampler.set_epoch(epoch)  # what Lightning calls
    return [(b["index"].clone(), b["image"].clone()) for b in loader]


def test_epoch_is_identical_whatever_the_workers_and_history():
    dm = ReIDDataModule(validate_on_test=True, dataset="synthetic", image_size=(32, 16), p=2, k=2, padding=4, num_workers=0,
                        **SYNTH_DM)
    ref = _epoch_images(dm, 1, 0)
    _epoch_images(dm, 0, 0)  # history does not matter
    torch.manual_seed(7)
    again = _epoch_images(dm, 1, 2)
    assert len(ref) == len(again) > 1
    for (ia, xa), (ib, xb) in zip(ref, again):
        assert torch.equal(ia, ib) and torch.equal(xa, xb)
    other = _epoch_images(dm, 2, 0)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(ref, other))



# -- Lightning integration: set_epoch is called and resuming replays the same data ---------------


@pytest.mark.filterwarnings("ignore:.*validation_step.*", "ignore:.*exists and is not empty.*", "ignore:.*treespec.*")
def test_lightning_fit_and_resume_see_the_same_batches(tmp_path):
    import lightning.pytorch as pl

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)
            self.seen: list[tuple[int, list[int], float]] = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, batch["index"].tolist(), float(batch["image"].sum())))
            return self.layer(batch["image"].mean((2, 3))).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def trainer(max_epochs, run):
        return pl.Trainer(max_epochs=max_epochs, limit_train_batches=3, limit_val_batches=0, logger=False,
                          enable_progress_bar=False, enable_model_summary=False,
                          default_root_dir=tmp_path / run,
                          accelerator="cpu", devices=1,
                          callbacks=[pl.callbacks.ModelCheckpoint(dirpath=tmp_path / run, save_last=True)])

    def dm():
        return ReIDDataModule(validate_on_test=True, dataset="synthetic", image_size=(32, 16), p=2, k=2, padding=4, num_workers=0,
                              seed=11, **SYNTH_DM)

    full = Recorder()
    trainer(3, "full").fit(full, datamodule=dm())
    epochs = [e for e, _, _ in full.seen]
    assert epochs == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [x[1] for x in full.seen[:3]] != [x[1] for x in full.seen[3:6]]

    first = Recorder()
    trainer(2, "run").fit(first, datamodule=dm())
    resumed = Recorder()
    torch.manual_seed(1234)  # a different global RNG state at resume time
    trainer(3, "run").fit(resumed, datamodule=dm(), ckpt_path=str(tmp_path / "run" / "last.ckpt"))
    assert resumed.seen == full.seen[6:]


def test_lightning_can_inject_a_distributed_sampler():
    """Under DDP Lightning re-creates the batch sampler around a DistributedSampler (simulated here)."""
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader
    from torch.utils.data.distributed import DistributedSampler

    dm = ReIDDataModule(validate_on_test=True, dataset="synthetic", image_size=(32, 16), p=2, k=2, num_workers=0, **SYNTH_DM)
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()
    single = loader.batch_sampler
    new = _update_dataloader(loader, DistributedSampler(loader.dataset, num_replicas=2, rank=1, shuffle=True))
    sampler = new.batch_sampler
    assert isinstance(sampler, PKSampler)
    assert (sampler.num_replicas, sampler.rank) == (2, 1)
    assert len(sampler) == len(single) // 2
    sampler.sampler.set_epoch(3)
    single.set_epoch(3)
    assert list(sampler) == list(single)[1::2][: len(sampler)]
