"""The explanation callbacks and their helpers, in process on a tiny synthetic set (CPU, seconds)."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

import callbacks.localization_metrics as localization_module
from callbacks.base import ProbeCapture, load_items
from callbacks.explanation_images import ExplanationImages
from callbacks.localization_metrics import LocalizationMetrics
from cama.explain import dist_cam, draw_boxes, postprocess, ram_per_branch
from cama.metrics import PartEvidence, ReIDRankMetric, parts_covered
from cama.metrics.ranking import EmbeddingSet
from cama.references import ReIDReferences, RetrievalReferences, choose_probes
from cama.viz import GREEN, ModelExplainer, check_methods, default_gradient_layers, frame
from cama.models import CAMA
from datamodules import ReIDDataModule

TINY_DATA = dict(
    dataset="synthetic",
    validate_on_test=True,  # the callbacks' probes are test queries the checks below re-score
    image_size=(64, 32),
    p=4,
    k=2,
    eval_batch_size=64,
    num_workers=0,
    synthetic=dict(num_train_ids=10, num_test_ids=6, num_distractors=4, num_junk=2),
)


@pytest.fixture(scope="module")
def datamodule() -> ReIDDataModule:
    dm = ReIDDataModule(**TINY_DATA)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def model(datamodule) -> CAMA:
    torch.manual_seed(0)
    return CAMA(num_classes=datamodule.num_classes, backbone="resnet10", num_branches=2).eval()


def validate(
    model: CAMA, datamodule: ReIDDataModule, callbacks: list, tmp_path: Path, logger=False
) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(model, datamodule=datamodule, verbose=False)
    return trainer


# --------------------------------------------------------------------------------------------------
# probes, ranking
# --------------------------------------------------------------------------------------------------
def test_choose_probes_is_seeded_prefix_stable_and_leaves_the_global_rng_alone():
    candidates = torch.arange(10, 40)
    state = torch.get_rng_state()
    first = choose_probes(candidates, 8, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert first == choose_probes(candidates, 8, seed=3)
    assert choose_probes(candidates, 4, seed=3) == first[:4]
    assert first != choose_probes(candidates, 8, seed=4)
    assert set(first) <= set(candidates.tolist()) and len(set(first)) == 8


def test_reid_references_find_the_queries_with_a_true_match():
    class Data:
        num_query = 3
        pids = [1, 2, 3, 1, 1, 2, -1, 3, 0]
        camids = [0, 0, 0, 0, 1, 0, 1, 0, 1]

    # query 0 (pid 1, cam 0): gallery pid 1 cam 1 -> match; query 1 (pid 2, cam 0): only cam 0 -> none;
    # query 2 (pid 3, cam 0): only cam 0 -> none
    assert ReIDReferences.from_dataset(Data()).probe_candidates().tolist() == [0]


def test_reid_references_rank_by_the_protocol():
    # dataset: item 0 is the query (pid 7, cam 0); items 10..15 the gallery
    pids = torch.full((16,), 5)
    camids = torch.full((16,), 3)
    pids[0], camids[0] = 7, 0
    pids[10:], camids[10:] = torch.tensor([7, -1, 7, 0, 9, 7]), torch.tensor([0, 1, 1, 1, 1, 2])
    references = ReIDReferences(1, pids, camids)
    gallery = EmbeddingSet(
        embeddings=torch.tensor([[0.0], [0.1], [0.2], [0.3], [0.3], [5.0]]),
        labels=pids[10:], indices=torch.arange(10, 16), cameras=camids[10:],
    )
    found, matches = references.rank(gallery, torch.tensor([[0.0]]), torch.tensor([0]), k=5)
    # 10: same pid and camera (removed); 11: junk (removed); the distractor 13 stays;
    # 13 and 14 tie: the smaller index first; fewer than 5 left: -1
    assert found.tolist() == [[12, 13, 14, 15, -1]]
    assert matches.tolist() == [[True, False, False, True, False]]


def test_retrieval_references_rank_every_other_image():
    labels = torch.tensor([0, 0, 1, 1, 2])
    references = RetrievalReferences(labels)
    assert references.probe_candidates().tolist() == [0, 1, 2, 3]  # class 2 has one image only
    gallery = EmbeddingSet(torch.tensor([[0.0], [2.0], [0.5], [3.0], [0.1]]), labels, torch.arange(5))
    found, matches = references.rank(gallery, gallery.embeddings[:2], torch.tensor([0, 1]), k=2)
    assert found.tolist() == [[4, 2], [3, 2]]  # never itself
    assert matches.tolist() == [[False, False], [False, False]]
    found, matches = references.rank(gallery, gallery.embeddings[2:3], torch.tensor([2]), k=4)
    assert found.tolist() == [[4, 0, 1, 3]] and matches.tolist() == [[False, False, False, True]]


def test_embedding_set_keeps_one_sample_per_index():
    metric = ReIDRankMetric()
    emb = torch.arange(12.0).reshape(6, 2)
    metric.update(
        emb[:4],
        torch.tensor([1, 2, 3, 4]),
        torch.tensor([0, 0, 1, 1]),
        torch.tensor([True, False, False, False]),
        torch.tensor([0, 1, 2, 3]),
    )
    metric.update(
        emb[4:],
        torch.tensor([2, 5]),
        torch.tensor([0, 1]),  # index 1 again (DDP padding)
        torch.tensor([False, False]),
        torch.tensor([1, 4]),
    )
    gallery = metric.embedding_set().gallery()
    assert gallery.indices.tolist() == [1, 2, 3, 4]
    assert gallery.labels.tolist() == [2, 3, 4, 5]
    assert torch.equal(gallery.embeddings[0], emb[1])  # the first occurrence


# --------------------------------------------------------------------------------------------------
# maps
# --------------------------------------------------------------------------------------------------
def test_method_names_are_checked():
    assert check_methods(["Dist-CAM", "ram", "ram", "gradcam++"]) == ("dist_cam", "ram", "gradcam++")
    with pytest.raises(ValueError, match="unknown explanation method"):
        check_methods(["rise"])


def test_explainer_maps_per_branch_and_summed(model, datamodule):
    images = torch.stack([datamodule.eval_dataset[i]["image"] for i in range(3)])
    explainer = ModelExplainer(model)
    features = explainer.features(images)
    assert features.num_branches == 2 and features.slices == [(0, 512), (512, 1024)]
    reference = explainer.features(
        torch.stack([datamodule.eval_dataset[i]["image"] for i in range(20, 23)])
    ).embedding
    for method in ("cam", "dist_cam", "ram", "fam"):
        maps = explainer.explain(method, features, reference)
        raw = explainer.raw_maps(method, features, reference)  # [B, 2, h, w]
        # branches: each branch's raw map post-processed; summed: the post-processed sum of the raw maps
        torch.testing.assert_close(maps[:, :2], postprocess(raw, (64, 32)))
        torch.testing.assert_close(maps[:, 2:], postprocess(raw.sum(1, keepdim=True), (64, 32)))
        torch.testing.assert_close(explainer.explain(method, features, reference, branches=False), maps[:, 2:])
    # RAM of the branches sums to the RAM of the concatenated, normalised embedding (cama-ram Sec. 3.3)
    own = explainer.raw_maps("ram", features, features.embedding)
    unit = [torch.nn.functional.normalize(m.mean((2, 3)), dim=1) for m in features.maps]
    expected = ram_per_branch(unit, features.maps)
    assert torch.allclose(own, expected, atol=1e-5)
    # Dist-CAM of branch 1: the branch maps on the embedding's scale against the reference's slice
    scaled = features.scaled_maps()[0]
    assert torch.allclose(scaled.mean((2, 3)), features.embedding[:, :512], atol=1e-5)
    direct = dist_cam(scaled, reference[:, :512])
    assert torch.allclose(explainer.raw_maps("dist_cam", features, reference)[:, 0], direct, atol=1e-6)


def test_gradient_maps_per_branch_leave_the_model_untouched(model, datamodule):
    images = torch.stack([datamodule.eval_dataset[i]["image"] for i in range(2)])
    explainer = ModelExplainer(model)
    features = explainer.features(images)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert default_gradient_layers(model) == [["backbone.branches.0"], ["backbone.branches.1"]]
    for method in ("gradcam", "layercam"):
        maps = explainer.explain(method, features, features.embedding.flip(0))
        assert maps.shape == (2, 3, 64, 32)
        # the summed map is the map of the full-embedding similarity over every branch's layer (Eq. 8)
        summed = explainer.explain(method, features, features.embedding.flip(0), branches=False)
        torch.testing.assert_close(summed[:, 0], maps[:, 2])
    truncated = ModelExplainer(model, gradient_layers=["backbone.branches.1"], truncation=20.0)
    assert truncated.explain("gradcam++", features, features.embedding.flip(0), branches=False).shape == (
        2,
        1,
        64,
        32,
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------------
def test_frames_and_boxes():  # the layout of the pictures: tests/test_pictures.py
    images = torch.zeros(2, 3, 16, 8, dtype=torch.uint8)
    framed = frame(images, [GREEN, None], width=2)
    assert framed[0, :, 0, 0].tolist() == list(GREEN) and framed[0, :, 8, 4].tolist() == [0, 0, 0]
    assert framed[1].sum() == 0
    boxed = draw_boxes(images, torch.tensor([[1.0, 2.0, 5.0, 9.0], [0.0, 0.0, 0.0, 0.0]]))
    outline = boxed[0, 0] > 0
    assert outline[2, 1:5].all() and outline[8, 1:5].all() and outline[2:9, 1].all() and outline[2:9, 4].all()
    assert outline.sum() == 2 * 4 + 2 * 5 and not outline[5, 2] and boxed[1].sum() == 0


# --------------------------------------------------------------------------------------------------
# the callbacks in a validation loop
# --------------------------------------------------------------------------------------------------
def test_localization_reuses_the_validation_features(model, datamodule, tmp_path, monkeypatch):
    loads: list[int] = []
    original = localization_module.load_items

    def counting(dataset, indices, device=None):
        loads.extend(int(i) for i in indices)
        return original(dataset, indices, device)

    monkeypatch.setattr(localization_module, "load_items", counting)
    reused = LocalizationMetrics(num_samples=10, num_faithfulness_samples=4)
    validate(model, datamodule, [reused], tmp_path)
    assert loads == [], "every sample was captured in the model's own validation step"
    recomputed = LocalizationMetrics(num_samples=10, num_faithfulness_samples=4, reuse_features=False)
    validate(model, datamodule, [recomputed], tmp_path)
    assert sorted(loads) == sorted(recomputed.probes.indices)
    assert reused.probes.indices == recomputed.probes.indices
    results = reused.last_results
    for method in ("dist_cam", "ram", "fam"):
        for name in (
            "box_iou",
            "box_acc",
            "top1_loc_err",
            "max_box_acc",
            "energy",
            "otsu_miou",
            "otsu_micro_f1",
            "center_box_acc",
            "ad",
            "ic",
        ):
            assert f"loc/{method}/{name}" in results, name
    for name in (
        "loc/center_baseline/box_acc",
        "loc/uniform_baseline/energy",
        "loc/branch_overlap_iou",
    ):
        assert name in results
    assert results.keys() == recomputed.last_results.keys()
    for key, value in results.items():  # last-bit differences of the features (1 vs 2 threads, other
        # batches) can move a pixel across Otsu's threshold: one pixel of one of 10 samples, ~1e-3
        assert recomputed.last_results[key] == pytest.approx(value, rel=1e-3, abs=2e-3 if "otsu" in key else 1e-4), key


def test_probe_capture_keeps_the_wanted_rows_of_the_step_outputs(model, datamodule):
    items = [datamodule.eval_dataset[i] for i in range(4)]
    batch = {
        k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in ("image", "pid", "camid", "is_query", "index", "box", "mask")
    }
    with torch.no_grad():
        outputs = model.validation_step(batch, 0)  # what Lightning hands on_validation_batch_end
        maps = model.feature_maps(batch["image"])
    capture = ProbeCapture([1, 3])
    capture.add(None, batch)  # a step that returns nothing: nothing kept
    assert capture.captured == {}
    capture.add(outputs, batch)
    assert sorted(capture.captured) == [1, 3]
    assert torch.equal(capture.captured[3]["maps"][1], maps[1][3])
    assert torch.equal(capture.captured[1]["box"], batch["box"][1])
    model.val_metric.reset()


def test_without_any_logger_pngs_go_to_the_root_dir(model, datamodule, tmp_path):
    images = ExplanationImages(methods=["ram"], num_probes=2, num_ranking_queries=0)
    validate(model, datamodule, [images], tmp_path, logger=False)
    assert [Path(p).relative_to(tmp_path).as_posix() for p in images.last_written] == [
        "explanations/epoch_000/ram.png"
    ]


def test_images_written_as_png_without_tensorboard_and_state_restored(model, datamodule, tmp_path):
    images = ExplanationImages(
        methods=["dist_cam", "ram", "fam", "cam", "layercam"], num_probes=3, num_ranking_queries=1, top_k=4
    )  # a gradient method inside inference mode
    logger = CSVLogger(tmp_path, name="csv")
    trainer = validate(model, datamodule, [images], tmp_path, logger=logger)
    folder = Path(trainer.log_dir) / "explanations" / "epoch_000"
    written = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    assert written == ["cam.png", "dist_cam.png", "fam.png", "layercam.png", "ram.png", "ranking/query_0.png"]
    assert sorted(images.last_written) == sorted(str(folder / name) for name in written)
    state = images.state_dict()
    assert len(state["probe_indices"]) == 3 and state["validation_epochs"] == 1
    restored = ExplanationImages(num_probes=3, seed=99)
    restored.load_state_dict(state)
    provider = ReIDReferences.from_dataset(datamodule.eval_dataset)
    assert restored.probes.choose(provider, print) == state["probe_indices"]  # the stored probes, not the seed's
    assert ExplanationImages(num_probes=3, seed=99).probes.choose(provider, print) != state["probe_indices"]


def test_every_n_epochs_skips_validation_epochs(model, datamodule, tmp_path):
    metrics = LocalizationMetrics(
        methods=["ram", "gradcam"],
        num_samples=4,
        num_faithfulness_samples=2,
        num_gradient_samples=2,
        every_n_epochs=2,
    )
    validate(model, datamodule, [metrics], tmp_path)
    assert metrics.last_results and metrics.schedule.validation_epochs == 1
    assert {"loc/gradcam/box_acc", "loc/gradcam/ad", "loc/ram/ic"} <= metrics.last_results.keys()
    metrics.last_results = {}
    validate(model, datamodule, [metrics], tmp_path)
    assert metrics.last_results == {} and metrics.schedule.validation_epochs == 2


def test_predict_file_scores_like_validate(model, datamodule, tmp_path):
    from callbacks.embedding_writer import EmbeddingWriter
    from evaluate import evaluate_file

    writer = EmbeddingWriter()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, callbacks=[writer], default_root_dir=tmp_path,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.predict(model, datamodule=datamodule, return_predictions=False)
    assert writer.last_path == tmp_path / "predictions" / "predictions.pt"
    table = torch.load(writer.last_path)
    dataset = datamodule.eval_dataset
    assert table["format"] == "cama-predictions-2" and table["task"] == "re-id"
    assert table["index"].tolist() == list(range(len(dataset)))  # one row per item, in order
    assert table["pid"].tolist() == [int(p) for p in dataset.pids]
    rows = [0, len(dataset) // 2, len(dataset) - 1]
    with torch.no_grad():  # an independent forward of three items
        expected = model(torch.stack([dataset[i]["image"] for i in rows]))
    torch.testing.assert_close(table["embedding"][rows], expected, rtol=1e-4, atol=1e-5)
    # the file, scored without the model, gives the numbers validate logs
    scored = evaluate_file(writer.last_path)
    validated = validate(model, datamodule, [], tmp_path).callback_metrics
    for name, logged in (("mAP", "Val/mAP"), ("mINP", "Val/mINP"), ("rank1", "Val/rank1"), ("rank5", "val/rank5")):
        assert scored[name] == pytest.approx(float(validated[logged]), abs=1e-6), name
    reranked = evaluate_file(writer.last_path, rerank=True)  # the plain numbers stay, *_rerank join them
    assert reranked["mAP"] == scored["mAP"] and "mAP_rerank" in reranked

def test_part_evidence_scores_the_probes_summed_ram_and_its_branches_regions(model, datamodule, tmp_path):
    """The logged part scores are those of the chosen queries' maps, recomputed here outside the
    callback: the summed RAM R_q^q for the energy shares, the union of the branches' top regions
    (k the OAP's) for the parts covered."""
    callback = LocalizationMetrics(methods=["ram"], num_samples=12, num_faithfulness_samples=0)
    validate(model, datamodule, [callback], tmp_path)
    batch = load_items(datamodule.eval_dataset, callback.probes.indices)
    explainer = ModelExplainer(model)
    with torch.no_grad():
        features = explainer.features(batch["image"])
        maps = explainer.explain("ram", features, features.embedding, branches=True)  # [B, 3, H, W]
    parts, evidence = batch["mask"].bool(), batch["evidence_required"].bool()
    expected = PartEvidence(topk=model.overlap_topk())
    expected.update(maps[:, -1], parts, evidence, branch_maps=maps[:, :-1])
    for name, value in expected.compute().items():
        assert callback.last_results[f"loc/ram/{name}"] == pytest.approx(float(value), abs=1e-5), name
    # the branches' union covers at least what the first branch alone does
    alone = parts_covered(maps[:, :1], parts, model.overlap_topk()).float().mean()
    assert callback.last_results["loc/ram/parts_covered"] >= float(alone) - 1e-6


def test_predictions_of_files_name_each_row_s_image(model, tmp_path):
    from callbacks.embedding_writer import EmbeddingWriter
    from datamodules import write_reid_layout
    from evaluate import evaluate_file

    root = write_reid_layout(tmp_path / "market", "market1501", seed=2, progress=False, num_train_ids=3,
                             num_test_ids=4, num_distractors=2, num_junk=1)
    data = ReIDDataModule(dataset="market1501", root=str(root), image_size=(64, 32), num_workers=0)
    writer = EmbeddingWriter()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[writer], default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.predict(model, datamodule=data, return_predictions=False)
    table = torch.load(writer.last_path)
    names = [Path(p).name for p in table["path"]]
    on_disk = {p.name for d in ("query", "bounding_box_test") for p in (root / d).glob("*.jpg")}
    assert len(names) == len(table["pid"]) and set(names) <= on_disk
    for name, pid, is_query in zip(names, table["pid"].tolist(), table["is_query"].tolist()):
        assert int(name.split("_")[0]) == pid  # each row carries its own file (Market names hold the pid)
        assert (root / ("query" if is_query else "bounding_box_test") / name).is_file()
    assert set(evaluate_file(writer.last_path)) >= {"mAP", "rank1"}  # the file still scores
